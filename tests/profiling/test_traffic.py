"""Launch and byte budgets of the fused kernels vs the naive eager path, and the counters themselves."""

import pytest
import torch

import prompt_ops
from prompt_ops.kernels import dept_embed as kernels
from prompt_ops.ops import reference
from prompt_ops.profiling import H100, EagerTraffic, kernel_traffic, project_h100
from prompt_ops.profiling.ideal import dept_embed_forward_bytes
from prompt_ops.profiling.kernel import OutOfBoundsError
from tests.conftest import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="byte counting hooks the Triton interpreter")


def _distinct_ids(batch: int, seq_len: int, vocab: int) -> torch.Tensor:
    """Ids without repeats, so that unique bytes of the gather equal the ideal exactly."""
    return torch.randperm(vocab)[: batch * seq_len].view(batch, seq_len)


@pytest.mark.parametrize("rank", [0, 30], ids=["prompt", "dept"])
def test_fused_forward_is_one_launch_within_ideal_bytes(rank):
    batch, seq_len, num_prompt, hidden = 4, 128, 60, 768
    ids = _distinct_ids(batch, seq_len, 4096)
    weight = torch.randn(4096, hidden)
    prompt = torch.randn(num_prompt, hidden)
    lora_a, lora_b = (torch.randn(256, rank), torch.randn(rank, hidden)) if rank else (None, None)
    mask = torch.ones(batch, seq_len, dtype=torch.int64)
    with kernel_traffic() as fused:
        kernels.dept_embed_fwd(ids, weight, prompt, lora_a, lora_b, mask, 1.5)
    ideal = dept_embed_forward_bytes(batch, seq_len, num_prompt, hidden, rank)
    assert fused.launches == 1
    assert 0.95 * ideal <= fused.unique_bytes <= 1.1 * ideal, (fused.unique_bytes, ideal)


@pytest.mark.parametrize("rank", [0, 30], ids=["prompt", "dept"])
def test_naive_eager_path_takes_at_least_three_launches(rank):
    ids = torch.randint(0, 1000, (4, 128))
    weight, prompt = torch.randn(1000, 768), torch.randn(60, 768)
    lora_a, lora_b = (torch.randn(256, rank), torch.randn(rank, 768)) if rank else (None, None)
    with EagerTraffic() as naive:
        reference.dept_embed(ids, weight, prompt, lora_a, lora_b, 1.5)
    assert naive.launches >= 3
    ideal = dept_embed_forward_bytes(4, 128, 60, 768, rank, mask_dtype=None)
    assert naive.bytes > ideal  # the official path moves more than the floor


def test_eager_counter_counts_known_ops():
    a, b = torch.randn(1000), torch.randn(1000)
    with EagerTraffic() as traffic:
        torch.add(a, b)
    assert traffic.launches == 1
    assert (traffic.read_bytes, traffic.write_bytes) == (8000, 4000)
    table, ids = torch.randn(500, 16), torch.tensor([3, 7, 7])
    with EagerTraffic() as traffic:
        torch.nn.functional.embedding(ids, table)
    assert traffic.launches == 1
    assert traffic.read_bytes == 3 * 16 * 4 + 3 * 8  # gathered rows and the indices, not the table
    assert traffic.write_bytes == 3 * 16 * 4
    row = torch.randn(1, 64).expand(10, 64)  # a broadcast input is read once
    with EagerTraffic() as traffic:
        row.sum(0)
    assert traffic.read_bytes == 64 * 4


def test_eager_counter_opens_torch_backend_ops_and_refuses_triton_ones():
    """A custom op run with the torch backend is counted op by op (the same aten ops as calling its body); on the
    Triton backend its kernels are invisible to the mode, so it refuses."""
    import prompt_ops
    from prompt_ops.ops.common import EAGER_BODIES

    ids, weight, prompt = torch.tensor([[1, 2]]), torch.randn(3, 4), torch.randn(1, 4)
    with EagerTraffic() as opened:
        prompt_ops.prompt_embed(ids, weight, prompt, backend="torch")
    body = EAGER_BODIES["prompt_ops::dept_embed_fwd"]
    with EagerTraffic() as direct:
        body(ids, weight, prompt, None, None, None, 0.0, True, "torch")
    assert opened.launches == direct.launches > 0 and opened.bytes == direct.bytes
    with pytest.raises(RuntimeError, match="count its launcher"), EagerTraffic():
        prompt_ops.prompt_embed(ids, weight, prompt, backend="triton")


def test_bounds_checker_catches_an_unmasked_overread():
    import triton
    import triton.language as tl

    @triton.jit
    def overread(src_ptr, dst_ptr, BLOCK: tl.constexpr):
        offsets = tl.arange(0, BLOCK)
        tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets))  # no mask: reads past a 10-element source

    src, dst = torch.randn(10), torch.empty(16)
    with pytest.raises(Exception, match="out-of-bounds load"), kernel_traffic():
        overread[(1,)](src, dst, BLOCK=16)
    with kernel_traffic() as traffic:
        overread[(1,)](torch.randn(16), dst, BLOCK=16)
    assert traffic.launches == 1 and traffic.unique_bytes == 2 * 16 * 4
    assert issubclass(OutOfBoundsError, AssertionError)


def test_interpreter_internals_we_hook_still_exist():
    """The counter patches private names of the pinned triton release; fail loudly if they move."""
    import triton.runtime.interpreter as interpreter

    for name in ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas"):
        assert callable(getattr(interpreter.interpreter_builder, name))
    assert callable(interpreter.GridExecutor._init_args_hst)
    assert callable(interpreter.GridExecutor._restore_args_dev)


def test_projection_formula():
    assert project_h100(3.35e9, 0, 0) == pytest.approx(1e-3)  # 3.35 GB at 3.35 TB/s
    assert project_h100(0, 0, 10) == pytest.approx(40e-6)  # ten launches at 4 us
    assert project_h100(1, 67e12, 0) == pytest.approx(1.0)  # compute-bound: one second of fp32 FMA
    assert H100.hbm_bytes_per_s == 3.35e12


@pytest.mark.parametrize("rank", [0, 30], ids=["prompt", "dept"])
def test_fused_backward_launches(rank):
    """One kernel for prompt tuning; the main kernel plus the partial-sum kernel for DePT; no eager op."""
    grad = torch.randn(3, 60 + 40, 96)
    lora_a, lora_b = (torch.randn(64, rank), torch.randn(rank, 96)) if rank else (None, None)
    with kernel_traffic() as fused, EagerTraffic() as around:
        kernels.dept_embed_bwd(grad, lora_a, lora_b, 60, 1.5, kernels.GPU_BWD_CONFIG)
    assert fused.launches == (2 if rank else 1)
    assert around.launches == 0


def test_adept_fused_forward_is_one_launch_within_ideal_bytes():
    from prompt_ops.kernels import adept_embed as adept_kernels
    from prompt_ops.profiling.ideal import adept_embed_forward_bytes

    batch, seq_len, num_prompt, hidden, rank = 4, 128, 60, 768, 19
    ids = _distinct_ids(batch, seq_len, 4096)
    weight, prompt = torch.randn(4096, hidden), torch.randn(num_prompt, hidden)
    ffn = (torch.randn(hidden, rank), torch.randn(rank), torch.randn(rank, hidden), torch.randn(hidden))
    mask = torch.ones(batch, seq_len, dtype=torch.int64)
    with kernel_traffic() as fused:
        adept_kernels.adept_embed_fwd(ids, weight, prompt, *ffn, mask, 0.1, 3)
    ideal = adept_embed_forward_bytes(batch, seq_len, num_prompt, hidden, rank)
    assert fused.launches == 1
    assert 0.95 * ideal <= fused.unique_bytes <= 1.1 * ideal, (fused.unique_bytes, ideal)


def test_adept_naive_eager_path_takes_at_least_three_launches():
    ids = torch.randint(0, 1000, (4, 128))
    weight, prompt = torch.randn(1000, 768), torch.randn(60, 768)
    ffn = (torch.randn(768, 19), torch.randn(19), torch.randn(19, 768), torch.randn(768))
    with EagerTraffic() as naive:
        reference.adept_embed(ids, weight, prompt, *ffn)
    assert naive.launches >= 3


def test_lamp_fused_forward_is_one_launch_within_ideal_bytes():
    from prompt_ops.kernels.dept_embed import PromptFactors
    from prompt_ops.profiling.ideal import lamp_embed_forward_bytes

    batch, seq_len, rows, pool, hidden, rank = 4, 128, 100, 2, 768, 8
    ids = _distinct_ids(batch, seq_len, 4096)
    weight = torch.randn(4096, hidden)
    factors = PromptFactors(torch.randn(rows, rank), torch.randn(rank), torch.randn(rank, hidden), pool)
    mask = torch.ones(batch, seq_len, dtype=torch.int64)
    with kernel_traffic() as fused:
        kernels.dept_embed_fwd(ids, weight, factors, None, None, mask, 0.0)
    ideal = lamp_embed_forward_bytes(batch, seq_len, rows, pool, hidden, rank)
    assert fused.launches == 1
    assert 0.95 * ideal <= fused.unique_bytes <= 1.1 * ideal, (fused.unique_bytes, ideal)


def test_lamp_naive_eager_path_takes_at_least_three_launches():
    ids, weight = torch.randint(0, 1000, (4, 128)), torch.randn(1000, 768)
    with EagerTraffic() as naive:
        reference.lamp_embed(ids, weight, torch.randn(100, 8), torch.randn(8), torch.randn(8, 768), 2)
    assert naive.launches >= 3


def test_ept_forward_is_four_launches_and_no_eager_op():
    """EPT's forward on the Triton path: three prompt-builder launches and DePT's per-token launch, nothing else."""
    from prompt_ops.kernels import ept as ept_kernels
    from tests.helpers import make_ept_case

    case = make_ept_case(4, 64, 60, 768, 30, 4, 8, max_length=256, vocab=1000)
    params = [p.detach() for p in case.params]
    with kernel_traffic() as fused, EagerTraffic() as around:
        prompt, _, _, _ = ept_kernels.ept_prompt_fwd(*params, case.scale)
        kernels.dept_embed_fwd(case.input_ids, case.weight, prompt, *params[1:3], case.attention_mask, case.scale)
    assert fused.launches == 4
    assert around.launches == 0


@pytest.mark.parametrize("mode", ["naive", "pool", "max"])
def test_lpt_insert_is_three_launches_within_ideal_bytes(mode):
    """LPT's insertion on the Triton path: the generator's two launches write the prompt rows of the buffer, one
    more copies the hidden states and writes the mask; no eager op, no out-of-bounds access, and the unique bytes
    stay within 1.1x of the floor (the naive path generates, then ``torch.cat``s)."""
    from prompt_ops.kernels import lpt as lpt_kernels
    from prompt_ops.ops.lpt import slot_windows
    from prompt_ops.profiling.ideal import lpt_insert_forward_bytes

    batch, seq_len, hidden, gen_rank, num_tokens = 4, 128, 768, 128, 5
    width = num_tokens * hidden if mode == "naive" else hidden
    states = torch.randn(batch, seq_len, hidden)
    mask = torch.ones(batch, seq_len, dtype=torch.int64)
    params = [torch.randn(hidden, gen_rank), torch.randn(gen_rank), torch.randn(gen_rank, width), torch.randn(width)]
    starts, ends = slot_windows(batch, seq_len, num_tokens, mode, None, mask)
    out = torch.empty(batch, num_tokens + seq_len, hidden)
    mask_out = torch.empty(batch, num_tokens + seq_len, dtype=torch.int64)
    arg_rows = torch.empty(batch * num_tokens, gen_rank, dtype=torch.int64) if mode == "max" else None
    with kernel_traffic() as fused, EagerTraffic() as around:
        pre = lpt_kernels.lpt_insert_fwd(states, mask, starts, ends, *params, 0.0, 0, out, mask_out, arg_rows)
    assert fused.launches == 3 and around.launches == 0
    ideal = lpt_insert_forward_bytes(batch, seq_len, num_tokens, hidden, gen_rank, mode)
    assert fused.unique_bytes <= 1.1 * ideal, (fused.unique_bytes, ideal)
    with kernel_traffic() as backward:
        lpt_kernels.lpt_generate_bwd(torch.randn_like(out)[:, :num_tokens], states, starts, ends, pre, params[2],
                                     0.0, 0, arg_rows)  # fmt: skip
    assert backward.launches == 3
    with EagerTraffic() as naive:
        prompt = reference.lpt_prompt(states, *params, num_tokens, None, mask, mode)
        reference.lpt_insert(prompt, states, mask)
    assert naive.launches >= 3


@pytest.mark.parametrize("mode", ["naive", "pool", "max"])
def test_mixed_lpt_forward_is_two_launches_within_ideal_bytes(mode):
    """A bank of three LPT generators of 5, 3 and 4 prompt rows (NPG widths 5d, 3d and 4d, zero-padded to 5d) and
    one rank, every adapter used: the generator's two launches for the whole batch, within 1.1x of the hidden rows
    read, each adapter's generator once and the prompt out. (Ragged ranks are read padded: the zeros past each
    adapter's rank count as bytes.)"""
    from prompt_ops.profiling.ideal import mixed_lpt_prompt_forward_bytes

    batch, seq_len, hidden, rank, tokens = 4, 128, 768, 128, [5, 3, 4]
    widths = [n * hidden if mode == "naive" else hidden for n in tokens]
    w_up, b_up = torch.zeros(3, rank, max(widths)), torch.zeros(3, max(widths))
    for a, width in enumerate(widths):
        w_up[a, :, :width], b_up[a, :width] = torch.randn(rank, width), torch.randn(width)
    states, index = torch.randn(batch, seq_len, hidden), torch.tensor([0, 1, 2, 0])
    generator = (torch.randn(3, hidden, rank), torch.randn(3, rank), w_up, b_up)
    with torch.no_grad(), kernel_traffic() as fused:
        prompt_ops.mixed_lpt_prompt(states, *generator, index, tokens, mode=mode, backend="triton")
    rows_read = batch if mode == "naive" else batch * seq_len
    ideal = mixed_lpt_prompt_forward_bytes(batch, rows_read, hidden, max(tokens), [(rank, w) for w in widths])
    assert fused.launches == 2
    assert 0.95 * ideal <= fused.unique_bytes <= 1.1 * ideal, (fused.unique_bytes, ideal)


def test_mixed_adept_fused_forward_is_one_launch_within_ideal_bytes():
    """A bank of three ADePT adapters with prompts of 60, 20 and 40 rows and ranks 19, 8 and 16 (zero-padded to
    60 and 19), every adapter used: one launch for the whole batch, within 1.1x of what the batch's adapters need
    unpadded (the padded prompt rows and ranks are never read as data, only masked)."""
    from prompt_ops.kernels import mixed_adept as mixed_kernels
    from prompt_ops.profiling.ideal import mixed_adept_embed_forward_bytes

    batch, seq_len, hidden = 4, 128, 768
    lengths, ranks = [60, 20, 40], [19, 8, 16]
    slots, rank = max(lengths), max(ranks)
    ids = _distinct_ids(batch, seq_len, 4096)
    weight = torch.randn(4096, hidden)
    prompts = torch.zeros(3, slots, hidden)
    w_down, b_down = torch.zeros(3, hidden, rank), torch.zeros(3, rank)
    w_up, b_up = torch.zeros(3, rank, hidden), torch.randn(3, hidden)
    for a, (m, r) in enumerate(zip(lengths, ranks, strict=True)):
        prompts[a, :m] = torch.randn(m, hidden)
        w_down[a, :, :r], b_down[a, :r], w_up[a, :r] = torch.randn(hidden, r), torch.randn(r), torch.randn(r, hidden)
    index = torch.tensor([0, 1, 2, 0])
    mask = torch.ones(batch, seq_len, dtype=torch.int64)
    with kernel_traffic() as fused:
        mixed_kernels.mixed_adept_fwd_triton(
            ids, weight, prompts, torch.tensor(lengths), w_down, b_down, w_up, b_up, index, mask, None, 0
        )
    ideal = mixed_adept_embed_forward_bytes(batch, seq_len, slots, hidden, lengths, ranks)
    assert fused.launches == 1
    assert 0.95 * ideal <= fused.unique_bytes <= 1.1 * ideal, (fused.unique_bytes, ideal)
