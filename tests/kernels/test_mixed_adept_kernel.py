"""Triton kernels of the mixed-adapter ADePT embedding against ``reference.mixed_adept_embed``: outputs and every
gradient, under the interpreter's bounds checker.

Banks are ragged (every adapter has its own prompt length ``m_a`` and FFN rank ``r_a``, zero-padded to ``r_max``),
batches mix adapters with base-model rows (``-1``) and left-padded rows, in both layouts of a row's masked slots.
"""

import pytest
import torch

from prompt_ops.kernels import adept_embed as adept_kernels
from prompt_ops.kernels import mixed_adept as kernels
from tests.helpers import (
    ADEPT_BANK_NAMES,
    MixedAdeptCase,
    assert_close,
    assert_grads_close,
    make_mixed_adept_case,
    tolerances,
)

# name -> adapters as (m_a, r_a). The rank 17 crosses a 16-wide rank block; rank 1 pads almost all of it.
BANKS = {"one": [(3, 5)], "ragged": [(2, 3), (5, 17), (1, 1)]}
# batch size -> adapter index per row (indices taken modulo N, -1 kept)
ROWS = {1: [0], 5: [2, -1, 0, 2, 1]}
SEQ_LEN, HIDDEN, VOCAB = 7, 37, 50
LAYOUTS = ("front", "after_prompt")


def make_case(bank: str, batch: int, dtype=torch.float32, slots="front", seq_len=SEQ_LEN, hidden=HIDDEN, rows=None):
    """A bank of :data:`BANKS` and a batch over it; row ``i >= 1`` is left-padded by ``i + 1`` tokens."""
    sizes = BANKS[bank] if isinstance(bank, str) else bank
    index = [a if a < 0 else a % len(sizes) for a in (rows or ROWS[batch])]
    mask = torch.ones(batch, seq_len, dtype=torch.int64)
    for row in range(1, batch):
        mask[row, : row + 1] = 0
    return make_mixed_adept_case(
        sizes, index, seq_len, hidden=hidden, vocab=VOCAB, mask=mask, dtype=dtype, slots=slots
    )  # fmt: skip


def run_kernels(case: MixedAdeptCase, grad, dropout=None, seed=0, config=None):
    params = [p.detach() for p in case.params]
    out, mask = kernels.mixed_adept_fwd_triton(
        *case.args(params), case.attention_mask, dropout, seed, case.slots, config
    )  # fmt: skip
    grads = kernels.mixed_adept_bwd_triton(
        grad, case.input_ids, case.weight, case.prompt_lengths, *params[1:4], case.adapter_index, dropout, seed,
        case.prompts.shape[1], case.slots, config,
    )  # fmt: skip
    return out, mask, grads


def kernel_multipliers(case: MixedAdeptCase, dropout: torch.Tensor, seed: int) -> torch.Tensor:
    """The kernels' ``(B, L, r_max)`` multipliers as documented: philox keyed by ``seed`` and the element
    ``(b * L + t) * r_max + k``, each row against its adapter's probability."""
    batch, seq_len = case.input_ids.shape
    rank = case.w_down.shape[2]
    rows = []
    for b, adapter in enumerate(case.adapter_index.tolist()):
        every = adept_kernels.dropout_multipliers(batch * seq_len, rank, float(dropout[max(adapter, 0)]), seed, "cpu")
        rows.append(every.view(batch, seq_len, rank)[b])
    return torch.stack(rows)


def check(case: MixedAdeptCase, dtype, dropout=None, seed=0, config=None):
    scale = kernel_multipliers(case, dropout, seed) if dropout is not None else None
    ref_out, ref_mask, ref_params = case.reference(scale)
    grad = torch.randn(ref_out.shape).to(dtype)
    out, mask, grads = run_kernels(case, grad, dropout, seed, config)
    assert out.dtype == case.weight.dtype and out.shape == ref_out.shape
    assert_close(out, ref_out, dtype, dot=True)
    assert torch.equal(mask, ref_mask) and mask.dtype == ref_mask.dtype
    assert all(g.dtype == torch.float32 for g in grads)
    ref_grads = torch.autograd.grad(ref_out, ref_params, grad.float())
    assert_grads_close(grads, ref_grads, ADEPT_BANK_NAMES, **tolerances(dtype, dot=True))
    for name, got, pad in zip(ADEPT_BANK_NAMES, grads, case.padding(), strict=True):
        assert not got[pad].any(), f"the padding of {name} got a gradient"


@pytest.mark.parametrize("slots", LAYOUTS)
@pytest.mark.parametrize("bank", sorted(BANKS))
@pytest.mark.parametrize(
    ("batch", "dtype"),
    [(1, torch.float32), (5, torch.float32), (5, torch.bfloat16)],
    ids=["B1-fp32", "B5-fp32", "B5-bf16"],
)
def test_launchers_match_reference(bank, batch, dtype, slots):
    check(make_case(bank, batch, dtype, slots), dtype)


def test_realistic_shape():
    """B=4, L=128, d=768 over two adapters (m 60 and 20, r 19 (the paper's) and 8) with the interpreter's big tiles;
    left padding and a base-model row."""
    case = make_case([(60, 19), (20, 8)], 4, seq_len=128, hidden=768, rows=[1, 0, -1, 1])
    check(case, torch.float32)


def test_gpu_tiles():
    """The shipped GPU tiles: several column tiles per row (one straddling the slots and the tokens) and d-chunks."""
    case = make_case("ragged", 5, slots="after_prompt", seq_len=20, hidden=70)
    check(case, torch.float32, config=adept_kernels.GPU_CONFIG)


def test_dropout_matches_reference_with_the_documented_multipliers():
    """Each row drops with its adapter's probability (adapter 1: p = 0, unaffected), keyed by the seed."""
    case = make_case("ragged", 5)
    check(case, torch.float32, dropout=torch.tensor([0.4, 0.0, 0.25]), seed=123)


def test_unchecked_out_of_range_indices_read_nothing():
    """With the host check off an adapter index outside ``[-1, N)`` reads nothing: a base-model row."""
    case = make_case("ragged", 5)
    grad = torch.zeros(5, 5 + SEQ_LEN, HIDDEN)
    case.adapter_index[3] = 7
    out, mask, grads = run_kernels(case, grad)
    case.adapter_index[3] = -1
    ref_out, ref_mask, _ = case.reference()
    assert_close(out, ref_out, torch.float32, dot=True)
    assert torch.equal(mask, ref_mask)


def test_deterministic():
    case = make_case("ragged", 5)
    grad = torch.randn(5, 5 + SEQ_LEN, HIDDEN)
    dropout = torch.tensor([0.1, 0.3, 0.2])
    first, second = run_kernels(case, grad, dropout, 5), run_kernels(case, grad, dropout, 5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    for got, again in zip(first[2], second[2], strict=True):
        assert torch.equal(got, again)


def test_empty_batch():
    case = make_case("ragged", 5)
    case.input_ids, case.adapter_index, case.attention_mask = case.input_ids[:0], case.adapter_index[:0], None
    out, mask, grads = run_kernels(case, torch.zeros(0, 5 + SEQ_LEN, HIDDEN))
    assert out.shape == (0, 5 + SEQ_LEN, HIDDEN) and mask.shape == (0, 5 + SEQ_LEN)
    for got, param in zip(grads, case.params, strict=True):
        assert torch.equal(got, torch.zeros_like(param))


def test_launch_counts(bounds_checked):
    """The whole mixed batch is one forward launch, with dropout; the backward is three launches (the prompt
    gradient, the hidden recompute, the per-adapter weight gradients)."""
    if bounds_checked is None:
        pytest.skip("launches are counted by the interpreter")
    slots = "front"
    case = make_case("ragged", 5, slots=slots)
    params = [p.detach() for p in case.params]
    dropout = torch.tensor([0.1, 0.3, 0.2])
    launches = bounds_checked.launches
    kernels.mixed_adept_fwd_triton(*case.args(params), case.attention_mask, dropout, 3, slots)
    assert bounds_checked.launches - launches == 1
    launches = bounds_checked.launches
    kernels.mixed_adept_bwd_triton(
        torch.randn(5, 5 + SEQ_LEN, HIDDEN), case.input_ids, case.weight, case.prompt_lengths, *params[1:4],
        case.adapter_index, dropout, 3, 5, slots,
    )  # fmt: skip
    assert bounds_checked.launches - launches == 3


def test_kernels_are_shipped_for_sm90():
    """The three kernels are among the configs the sm_90 compile test builds (and checks for spills)."""
    from prompt_ops.kernels.compile_check import shipped_specs

    labels = {spec.label for spec in shipped_specs()}
    for kernel in ("mixed_adept_fwd", "mixed_adept_bwd_hidden", "mixed_adept_bwd_weights"):
        for variant in ("fp32,R32", "fp16,R32", "bf16,R32", "bf16,R64"):
            assert f"{kernel}[{variant}]" in labels
