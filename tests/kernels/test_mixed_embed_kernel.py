"""Triton kernels of the mixed-adapter embedding against ``reference.mixed_dept_embed``: outputs and every gradient.

Banks are ragged (every adapter has its own prompt length ``m_a``, rank ``r_a`` and ``A`` rows ``L_a``), batches mix
adapters with base-model rows (``-1``), and rows start at 0, before 0 (leading pads) or after it. Both layouts of a
row's masked slots: in front of its prompt (``"front"``) and between its prompt and its input (``"after_prompt"``).
"""

import dataclasses

import pytest
import torch

from prompt_ops.kernels import mixed_embed as kernels
from prompt_ops.ops import reference
from tests.helpers import MixedBankCase, assert_close, assert_grads_close, random_bank, tolerances

# name -> adapters as (m_a, r_a, L_a); r_a = 0: a prompt-tuning adapter (zero A/B rows, scale 0).
# The rank 17 crosses one 16-wide rank chunk; an L_a below L leaves tokens past the adapter's rows.
BANKS = {
    "one": [(3, 5, 9)],
    "ragged": [(2, 3, 6), (5, 17, 11), (1, 1, 4)],
    "with-prompt-tuning": [(4, 0, 0), (1, 6, 9), (3, 2, 5)],
}
# batch size -> adapter index per row (bank of N adapters: indices taken modulo N, -1 kept)
ROWS = {1: [0], 5: [2, -1, 0, 2, 1]}
SEQ_LEN, HIDDEN, VOCAB = 7, 37, 50
LAYOUTS = ("front", "after_prompt")


@dataclasses.dataclass
class MixedCase(MixedBankCase):
    """Inputs of one mixed call: the zero-padded bank and the batch."""

    max_lengths: torch.Tensor
    ranks: list[int]
    slots: str = "front"

    def padding(self) -> list[torch.Tensor]:
        """Boolean masks of the bank's padding, one per parameter."""
        lengths = self.prompt_lengths.tolist()
        masks = [torch.arange(self.prompts.shape[1])[None, :, None] >= torch.tensor(lengths)[:, None, None]]
        if self.lora_a is not None:
            rows = torch.arange(self.lora_a.shape[1])[None, :, None] >= self.max_lengths[:, None, None]
            ranks = torch.tensor(self.ranks)
            masks.append(rows | (torch.arange(self.lora_a.shape[2])[None, None, :] >= ranks[:, None, None]))
            masks.append(torch.arange(self.lora_b.shape[1])[None, :, None] >= ranks[:, None, None])
        return [mask.expand_as(p) for mask, p in zip(masks, self.params, strict=True)]

    def reference(self, starts: torch.Tensor | None):
        """Reference ``(out, mask, params)`` on fresh fp32 leaf copies (a bf16 table upcast to fp32)."""
        return self.reference_at("absolute" if starts is None else starts, self.slots)

    def expected_grads(self, ref_out, ref_params, grad):
        """The reference's gradients with the padding zeroed: the reference runs each adapter on its padded
        ``(L_max, r_max)`` pair, so tokens past ``L_a`` give its zero rows a gradient the bank must not apply."""
        grads = torch.autograd.grad(ref_out, ref_params, grad.float())
        return [g.masked_fill(pad, 0.0) for g, pad in zip(grads, self.padding(), strict=True)]


def make_mixed_case(
    bank: str | list[tuple[int, int, int]],
    batch: int,
    dtype=torch.float32,
    mask: str | None = "int64",
    rows: list[int] | None = None,
    seq_len: int = SEQ_LEN,
    hidden: int = HIDDEN,
    slots: str = "front",
) -> MixedCase:
    """A bank (a name of :data:`BANKS` or its adapters) and a batch of ``batch`` rows using ``rows`` (default
    :data:`ROWS`, indices taken modulo N, -1 kept); the mask left-pads row ``i >= 1`` by ``i + 1`` tokens."""
    adapters = BANKS[bank] if isinstance(bank, str) else bank
    sizes = [(m, length, rank) for m, rank, length in adapters]
    prompts, lora_a, lora_b, scales = random_bank(sizes, hidden, lambda _, rank: 1.7 / rank**0.5)
    with_offset = lora_a.shape[2] > 0
    ids = torch.randint(0, VOCAB, (batch, seq_len))
    index = torch.tensor([a if a < 0 else a % len(adapters) for a in (rows or ROWS[batch])])
    attention_mask = None
    if mask is not None:
        attention_mask = torch.ones(batch, seq_len, dtype=getattr(torch, mask))
        for row in range(1, batch):
            attention_mask[row, : row + 1] = 0
    return MixedCase(
        input_ids=ids, weight=torch.randn(VOCAB, hidden).to(dtype), prompts=prompts.requires_grad_(True),
        prompt_lengths=torch.tensor([m for m, _, _ in adapters]),
        lora_a=lora_a.requires_grad_(True) if with_offset else None,
        lora_b=lora_b.requires_grad_(True) if with_offset else None, scales=scales, adapter_index=index,
        attention_mask=attention_mask, max_lengths=torch.tensor([length for _, _, length in adapters]),
        ranks=[r for _, r, _ in adapters], slots=slots,
    )  # fmt: skip


def make_starts(kind: str, case: MixedCase) -> torch.Tensor | None:
    """``None`` (every row at 0), the ``"tokens"`` starts of the left-padded mask (zero or negative), or explicit
    starts, positive ones included (a row that starts past some adapter's ``L_a``)."""
    if kind == "none":
        return None
    if kind == "tokens":
        return reference.row_starts(case.attention_mask, "tokens")
    return torch.tensor([3, -2, 0, 5, 1][: case.input_ids.shape[0]])


def run_kernels(case: MixedCase, starts, grad, forward_config=None, backward_config=None, max_lengths=True):
    params = [p.detach() for p in case.params]
    pair = (params[1], params[2]) if case.lora_a is not None else (None, None)
    lengths = case.max_lengths if max_lengths else None
    out, mask = kernels.mixed_embed_fwd_triton(
        case.input_ids, case.weight, params[0], case.prompt_lengths, *pair, case.scales, case.adapter_index,
        case.attention_mask, starts, lengths, forward_config, slots=case.slots,
    )  # fmt: skip
    grads = kernels.mixed_embed_bwd_triton(
        grad, case.prompt_lengths, *pair, case.scales, case.adapter_index, starts, case.prompts.shape[1], lengths,
        backward_config, slots=case.slots,
    )  # fmt: skip
    return out, mask, grads


def check(case: MixedCase, starts, dtype, **kwargs):
    ref_out, ref_mask, ref_params = case.reference(starts)
    grad = torch.randn(ref_out.shape).to(dtype)
    out, mask, grads = run_kernels(case, starts, grad, **kwargs)
    assert out.dtype == case.weight.dtype and out.shape == ref_out.shape
    assert_close(out, ref_out, dtype, dot=case.lora_a is not None)
    assert torch.equal(mask, ref_mask) and mask.dtype == ref_mask.dtype
    assert (grads[1] is None) == (grads[2] is None) == (case.lora_a is None)
    grads = [g for g in grads if g is not None]
    assert all(g.dtype == torch.float32 for g in grads)
    expected = case.expected_grads(ref_out, ref_params, grad)
    assert_grads_close(grads, expected, ("prompts", "lora_a", "lora_b")[: len(grads)], **tolerances(dtype, dot=True))
    for got, pad in zip(grads, case.padding(), strict=True):
        assert torch.equal(got[pad], torch.zeros_like(got[pad])), "the bank's padding got a gradient"


@pytest.mark.parametrize("slots", LAYOUTS)
@pytest.mark.parametrize("bank", sorted(BANKS))
@pytest.mark.parametrize("starts", ["none", "tokens", "explicit"])
@pytest.mark.parametrize(
    ("batch", "dtype"),
    [(1, torch.float32), (5, torch.float32), (5, torch.bfloat16)],  # bf16 on the mixed batch only: the time limit
    ids=["B1-fp32", "B5-fp32", "B5-bf16"],
)
def test_launchers_match_reference(bank, starts, batch, dtype, slots):
    case = make_mixed_case(bank, batch, dtype, slots=slots)
    check(case, make_starts(starts, case), dtype)


def test_realistic_shape():
    """B=4, L=128, d=768 over two DePT adapters (m 60 and 20, r 30 and 8, L_a 256 and 100) with the interpreter's
    big tiles; left padding, positions counted from each row's first token."""
    case = make_mixed_case([(60, 30, 256), (20, 8, 100)], 4, rows=[1, 0, -1, 1], seq_len=128, hidden=768)
    check(case, make_starts("tokens", case), torch.float32)


@pytest.mark.parametrize("slots", LAYOUTS)
@pytest.mark.parametrize("starts", ["none", "explicit"])
def test_prompt_tuning_bank(starts, slots):
    """A bank without offsets (``lora_a``/``lora_b`` None): prompts only, no offset gradients."""
    case = make_mixed_case("ragged", 5, slots=slots)
    case.lora_a = case.lora_b = None
    check(case, make_starts(starts, case), torch.float32)


@pytest.mark.parametrize("mask", [None, "bool"])
def test_mask_dtypes(mask):
    case = make_mixed_case("ragged", 5, mask=mask)
    check(case, None, torch.float32)


@pytest.mark.parametrize("slots", LAYOUTS)
def test_gpu_tiles_group_rows(slots):
    """The shipped GPU tiles with several rows per program: the prompt tile and the offset slice are kept across
    rows of a repeated adapter and start, and recomputed when either changes; every mask edge is crossed."""
    case = make_mixed_case("ragged", 5, slots=slots)
    case.adapter_index = torch.tensor([1, 1, 1, -1, 0])
    starts = torch.tensor([0, 0, 2, 2, 2])
    forward = dataclasses.replace(kernels.GPU_FWD_CONFIG, batches_per_program=3)
    check(case, starts, torch.float32, forward_config=forward, backward_config=kernels.GPU_BWD_CONFIG)


def test_without_max_lengths_every_row_is_trained():
    """Without ``max_lengths`` the kernels treat every adapter as ``L_max`` rows long: the forward is unchanged (the
    padded rows are zero) and ``d_lora_a`` is the reference's own, padded rows included."""
    case = make_mixed_case("ragged", 5)
    starts = make_starts("explicit", case)
    ref_out, _, ref_params = case.reference(starts)
    grad = torch.randn(ref_out.shape)
    out, _, grads = run_kernels(case, starts, grad, max_lengths=False)
    assert_close(out, ref_out, torch.float32, dot=True)
    ref_grads = torch.autograd.grad(ref_out, ref_params, grad)
    assert_grads_close(grads, ref_grads, ("prompts", "lora_a", "lora_b"))
    assert ref_grads[1][2, 4:].abs().sum() > 0  # the case does reach adapter 2's padded rows


def test_unchecked_out_of_range_indices_read_nothing():
    """With the host check off an adapter index outside ``[-1, N)`` reads nothing: a base-model row."""
    case = make_mixed_case("ragged", 5)
    base = case.adapter_index.clone()
    base[1] = base[3] = -1
    case.adapter_index[1], case.adapter_index[3] = -1, 7
    grad = torch.zeros(5, 5 + SEQ_LEN, HIDDEN)
    out, mask, _ = run_kernels(case, None, grad)
    case.adapter_index = base
    ref_out, ref_mask, _ = case.reference(None)
    assert_close(out, ref_out, torch.float32, dot=True)
    assert torch.equal(mask, ref_mask)


def test_deterministic():
    case = make_mixed_case("ragged", 5)
    starts = make_starts("tokens", case)
    grad = torch.randn(5, 5 + SEQ_LEN, HIDDEN)
    first, second = run_kernels(case, starts, grad), run_kernels(case, starts, grad)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    for got, again in zip(first[2], second[2], strict=True):
        assert torch.equal(got, again)


def test_empty_batch():
    case = make_mixed_case("ragged", 5)
    case.input_ids, case.adapter_index, case.attention_mask = case.input_ids[:0], case.adapter_index[:0], None
    out, mask, grads = run_kernels(case, None, torch.zeros(0, 5 + SEQ_LEN, HIDDEN))
    assert out.shape == (0, 5 + SEQ_LEN, HIDDEN) and mask.shape == (0, 5 + SEQ_LEN)
    for got, param in zip(grads, case.params, strict=True):
        assert torch.equal(got, torch.zeros_like(param))


@pytest.mark.parametrize("slots", LAYOUTS)
def test_launch_counts(bounds_checked, slots):
    """The whole mixed batch is one forward launch, in either layout; the backward is one launch plus two ``bmm``."""
    if bounds_checked is None:
        pytest.skip("launches are counted by the interpreter")
    case = make_mixed_case("ragged", 5, slots=slots)
    starts = make_starts("tokens", case)
    launches = bounds_checked.launches
    grad = torch.randn(5, 5 + SEQ_LEN, HIDDEN)
    params = [p.detach() for p in case.params]
    kernels.mixed_embed_fwd_triton(
        case.input_ids, case.weight, *params[:1], case.prompt_lengths, *params[1:], case.scales, case.adapter_index,
        case.attention_mask, starts, case.max_lengths, slots=slots,
    )  # fmt: skip
    assert bounds_checked.launches - launches == 1
    launches = bounds_checked.launches
    kernels.mixed_embed_bwd_triton(
        grad,
        case.prompt_lengths,
        *params[1:],
        case.scales,
        case.adapter_index,
        starts,
        5,
        case.max_lengths,
        slots=slots,
    )
    assert bounds_checked.launches - launches == 1


def test_kernels_are_shipped_for_sm90():
    """Both kernels are among the configs the sm_90 compile test builds (and checks for spills)."""
    from prompt_ops.kernels.compile_check import shipped_specs

    labels = {spec.label for spec in shipped_specs()}
    for dtype in ("fp32", "fp16", "bf16"):
        assert {f"mixed_embed_fwd[dept,{dtype}]", f"mixed_embed_fwd[prompt,{dtype}]"} <= labels
        assert f"mixed_embed_bwd[{dtype}]" in labels
