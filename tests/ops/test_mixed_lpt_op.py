"""mixed_lpt_prompt: a stacked bank of LPT generators, one adapter per row, against the independent row-by-row
reference (outputs and every gradient) on both backends and all three generators; the padding's exact zero gradient,
dropout, the Triton launch count, determinism, gradcheck, opcheck, torch.compile and bad input."""

from __future__ import annotations

import pytest
import torch

import prompt_ops
from prompt_ops.ops import mixed_lpt as ops
from prompt_ops.ops import reference
from prompt_ops.ops.lpt import MODES
from tests.conftest import INTERPRET
from tests.helpers import assert_close, assert_grads_close, padded_mask, tolerances
from tests.ops.test_mixed_embed_op import _set, _with

BACKENDS = ["torch", "triton"]
NAMES = ("w_down", "b_down", "w_up", "b_up")
HIDDEN, SEQ_LEN = 5, 7
TOKENS, RANKS = [2, 4, 1], [3, 6, 2]
"""``(n_a, h_a)`` per adapter: prompt lengths and ranks all different (``h_max = 6``, ``n_max = 4``)."""


def width(mode: str, num_tokens: int) -> int:
    return num_tokens * HIDDEN if mode == "naive" else HIDDEN


def make_bank(mode, tokens=TOKENS, ranks=RANKS, extra_width=0, dtype=torch.float32, device=None):
    """Zero-padded stacked generators (leaf tensors) of the adapters ``(tokens[a], ranks[a])``; ``W_max`` the
    widest adapter's plus ``extra_width`` padding columns."""
    num, h_max = len(tokens), max(ranks)
    w_max = max(width(mode, n) for n in tokens) + extra_width
    bank = [torch.zeros(shape, dtype=dtype, device=device) for shape in
            ((num, HIDDEN, h_max), (num, h_max), (num, h_max, w_max), (num, w_max))]  # fmt: skip
    for a, (count, rank) in enumerate(zip(tokens, ranks, strict=True)):
        cols = width(mode, count)
        bank[0][a, :, :rank] = torch.randn(HIDDEN, rank)
        bank[1][a, :rank] = torch.randn(rank)
        bank[2][a, :rank, :cols] = torch.randn(rank, cols)
        bank[3][a, :cols] = torch.randn(cols)
    return [t.requires_grad_() for t in bank]


def padding_of(mode, bank, tokens=TOKENS, ranks=RANKS) -> list[torch.Tensor]:
    """Boolean masks of the padding of each stacked tensor."""
    pads = [torch.ones_like(t, dtype=torch.bool) for t in bank]
    for a, (count, rank) in enumerate(zip(tokens, ranks, strict=True)):
        cols = width(mode, count)
        pads[0][a, :, :rank] = False
        pads[1][a, :rank] = False
        pads[2][a, :rank, :cols] = False
        pads[3][a, :cols] = False
    return pads


def run(hidden, bank, adapter_index, mode, backend, tokens=TOKENS, **kwargs):
    return ops.mixed_lpt_prompt(hidden, *bank, adapter_index, tokens, mode=mode, backend=backend, **kwargs)


def ref_grads(hidden, bank, adapter_index, mode, grad, tokens=TOKENS, ranks=RANKS, **kwargs):
    """The reference's output and gradients, on fresh leaf copies of the bank."""
    leaves = [t.detach().clone().requires_grad_() for t in bank]
    out = reference.mixed_lpt_prompt(hidden.float(), *leaves, adapter_index, tokens, ranks, mode, **kwargs)
    return out, torch.autograd.grad(out, leaves, grad)


def check(hidden, bank, adapter_index, mode, backend, dropout_scale=None, **kwargs):
    """Outputs and the four gradients against the reference; returns the gradients."""
    out = run(hidden, bank, adapter_index, mode, backend, **kwargs)
    grad = torch.randn(out.shape)
    ref_kwargs = {k: v for k, v in kwargs.items() if k in ("index", "attention_mask", "source_lengths")}
    expected, expected_grads = ref_grads(hidden, bank, adapter_index, mode, grad, dropout_scale=dropout_scale,
                                         **ref_kwargs)  # fmt: skip
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert_close(out, expected, torch.float32, dot=True)
    grads = torch.autograd.grad(out, bank, grad)
    assert_grads_close(grads, expected_grads, NAMES, **tolerances(torch.float32, dot=True))
    return grads


CASES = {  # adapter per row, mask side (None: no mask)
    "ragged-right": ([1, -1, 0, 1, 2], "right"),
    "ragged-left": ([2, 1, 0, -1, 1], "left"),
    "one-row": ([1], None),
    "one-adapter": ([0, 0, -1], "left"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_and_padding_gets_zero_grad(backend, mode, case):
    rows, side = CASES[case]
    adapter_index = torch.tensor(rows)
    lengths = [SEQ_LEN, 3, 5, 1, 6][: len(rows)]
    mask = None if side is None else padded_mask(lengths, SEQ_LEN, side)
    hidden = torch.randn(len(rows), SEQ_LEN, HIDDEN)
    bank = make_bank(mode, extra_width=3)
    grads = check(hidden, bank, adapter_index, mode, backend, attention_mask=mask)
    for name, grad, pad in zip(NAMES, grads, padding_of(mode, bank), strict=True):
        assert not grad[pad].any(), f"the padding of {name} got a gradient"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_source_lengths_and_explicit_index(backend, mode):
    """Pooling over each row's first ``source_lengths[b]`` valid rows (left padding), NPG reading an explicit row
    inside them; the ``-1`` row's entries (a hole in its mask, a zero source length) are not read."""
    adapter_index = torch.tensor([0, 1, -1, 2])
    mask = padded_mask([6, 7, 4, 3], SEQ_LEN, "left")
    mask[2] = torch.tensor([1, 0, 1, 0, 1, 0, 1])
    source_lengths = torch.tensor([4, 7, 0, 2])
    index = torch.tensor([3, 5, 0, 5]) if mode == "naive" else None
    hidden = torch.randn(4, SEQ_LEN, HIDDEN)
    check(hidden, make_bank(mode), adapter_index, mode, backend, attention_mask=mask, source_lengths=source_lengths,
          index=index)  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_hidden(backend):
    """bf16 hidden states with fp32 generators: an fp32 prompt equal to the reference on the same values."""
    hidden = torch.randn(3, SEQ_LEN, HIDDEN).bfloat16()
    check(hidden, make_bank("pool"), torch.tensor([2, 0, 1]), "pool", backend)


def strided(tensor: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous leaf: stored with its dimensions reversed (every stride differs)."""
    return tensor.detach().permute(*reversed(range(tensor.dim()))).contiguous().permute(
        *reversed(range(tensor.dim()))).requires_grad_()  # fmt: skip


@pytest.mark.parametrize("mode", ["naive", "max"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend, mode):
    """Every generator tensor and ``hidden`` non-contiguous (the biases too: the kernels must not assume their unit
    stride), against the reference, with a non-contiguous prompt gradient."""
    adapter_index = torch.tensor([2, 0, -1, 1])
    hidden = strided(torch.randn(4, SEQ_LEN, HIDDEN)).detach()
    bank = [strided(t) for t in make_bank(mode)]
    assert not any(t.is_contiguous() for t in (hidden, *bank))
    out = run(hidden, bank, adapter_index, mode, backend)
    grad = strided(torch.randn(out.shape)).detach()
    expected, expected_grads = ref_grads(hidden, bank, adapter_index, mode, grad)
    assert_close(out, expected, torch.float32, dot=True)
    assert_grads_close(torch.autograd.grad(out, bank, grad), expected_grads, NAMES)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_unread_rows_reach_nothing(backend, mode):
    """NaN in a ``-1`` row (documented as not read) and in the padding of the adapters' rows: the prompt and every
    gradient equal the reference's on the same values with those rows zero (the torch backend's products over
    whole rows once turned ``NaN * 0`` into NaN gradients, adapter 0's for a ``-1`` row)."""
    adapter_index = torch.tensor([1, -1, 2, 1])
    mask = padded_mask([5, 7, 3, 7], SEQ_LEN, "left")
    clean = torch.randn(4, SEQ_LEN, HIDDEN) * mask[:, :, None]
    clean[1] = 0.0
    dirty = clean.masked_fill((mask == 0)[:, :, None], float("nan"))
    dirty[1] = float("nan")
    bank = make_bank(mode)
    out = run(dirty, bank, adapter_index, mode, backend, attention_mask=mask)
    grad = torch.randn(out.shape)
    expected, expected_grads = ref_grads(clean, bank, adapter_index, mode, grad, attention_mask=mask)
    assert_close(out, expected, torch.float32, dot=True)
    assert_grads_close(torch.autograd.grad(out, bank, grad), expected_grads, NAMES)


def expected_multipliers(backend, mode, adapter_index, probabilities, seed):
    """``(B, n_max, d)`` dropout multipliers each backend documents: Triton's philox stream keyed by ``(seed,
    slot * row_width + column)`` at each row's adapter's probability, torch's one ``torch.rand`` draw of the output's
    shape compared with each row's probability."""
    batch, n_max = adapter_index.shape[0], max(TOKENS)
    p = torch.tensor([probabilities[a] if a >= 0 else 0.0 for a in adapter_index.tolist()])[:, None, None]
    if backend == "torch":
        generator = torch.Generator().manual_seed(seed)
        keep = torch.rand((batch, n_max, HIDDEN), generator=generator) >= p
        return keep.float() / (1.0 - p)
    from prompt_ops.kernels.lpt import dropout_multipliers

    rows, cols = (batch, n_max * HIDDEN) if mode == "naive" else (batch * n_max, HIDDEN)
    per_p = {q: dropout_multipliers(rows, cols, q, seed, "cpu").view(batch, n_max, HIDDEN) for q in set(probabilities)}
    return torch.stack([per_p[probabilities[max(a, 0)]][b] for b, a in enumerate(adapter_index.tolist())])


@pytest.mark.parametrize("mode", ["naive", "max"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_per_adapter(backend, mode):
    """Each row at its adapter's probability, from ``seed``: the reference with the documented multipliers, the
    same seed gives the same prompt, eval none."""
    if backend == "triton" and not INTERPRET:
        pytest.skip("the multipliers are compared on the interpreter")
    adapter_index = torch.tensor([1, 0, -1, 2, 1])
    probabilities = [0.3, 0.5, 0.0]
    hidden = torch.randn(5, SEQ_LEN, HIDDEN)
    bank = make_bank(mode)
    kwargs = {"dropout_p": probabilities, "training": True, "seed": 11}
    scale = expected_multipliers(backend, mode, adapter_index, probabilities, 11)
    check(hidden, bank, adapter_index, mode, backend, dropout_scale=scale, **kwargs)
    first, again = (run(hidden, bank, adapter_index, mode, backend, **kwargs) for _ in range(2))
    assert torch.equal(first, again)
    assert (first[[0, 4], -4:] == 0).any()  # p = 0.5 rows lose elements
    eval_out = run(hidden, bank, adapter_index, mode, backend, dropout_p=probabilities, seed=11)
    assert torch.equal(eval_out[3], first[3])  # p = 0 for adapter 2


def test_triton_launches_do_not_grow_with_adapters():
    """Two forward and three backward launches, for one distinct adapter or three."""
    if not INTERPRET:
        pytest.skip("launches are counted by the interpreter")
    from prompt_ops.profiling import kernel_traffic

    hidden = torch.randn(4, SEQ_LEN, HIDDEN)
    counts = []
    for mode in MODES:
        bank = make_bank(mode)
        for rows in ([1] * 4, [0, 1, 2, -1]):
            with kernel_traffic(check_bounds=True) as traffic:
                out = run(hidden, bank, torch.tensor(rows), mode, "triton")
                forward = traffic.launches
                out.sum().backward()
            counts.append((forward, traffic.launches - forward))
    assert counts == [(2, 3)] * 6


def test_unchecked_adapter_too_wide_for_w_up_stays_in_bounds():
    """Without the data checks, an NPG adapter wider than ``W_max`` (the last one, ``n_a * d = 20 > 10``) is
    undefined output, but the kernels, forward and backward, never read outside ``w_up``/``b_up``."""
    if not INTERPRET:
        pytest.skip("the bounds are checked by the interpreter")
    from prompt_ops.profiling import kernel_traffic

    tokens = TOKENS[:2]
    bank = [t.detach()[:2, ..., :10] if i >= 2 else t.detach()[:2] for i, t in enumerate(make_bank("naive"))]
    bank = [t.contiguous().requires_grad_() for t in bank]
    with kernel_traffic(check_bounds=True):
        out = run(torch.randn(3, SEQ_LEN, HIDDEN), bank, torch.tensor([1, 0, 1]), "naive", "triton", tokens,
                  check_ids=False)  # fmt: skip
        out.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(backend):
    hidden = torch.randn(5, SEQ_LEN, HIDDEN)
    bank = make_bank("pool")
    adapter_index = torch.tensor([1, 1, 0, 1, 2])
    grad = torch.randn(5, max(TOKENS), HIDDEN)
    runs = [torch.autograd.grad(run(hidden, bank, adapter_index, "pool", backend), bank, grad) for _ in range(2)]
    for first, second in zip(*runs, strict=True):
        assert torch.equal(first, second)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_fp64_torch_backend(mode):
    hidden = torch.randn(3, SEQ_LEN, HIDDEN, dtype=torch.float64)
    tokens, ranks = [3, 1], [2, 3]  # a small bank: gradcheck perturbs every element
    bank = make_bank(mode, tokens, ranks, dtype=torch.float64)
    mask = padded_mask([7, 5, 4], SEQ_LEN, "left")

    def fn(*params):
        return run(hidden, params, torch.tensor([1, -1, 0]), mode, "torch", tokens, attention_mask=mask)

    assert torch.autograd.gradcheck(fn, tuple(bank))


def test_opcheck(device):
    """Both custom ops on MPPG's slots (the arg-max rows too; NPG and APPG share the schema and fakes)."""
    mode = "max"
    hidden = torch.randn(3, SEQ_LEN, HIDDEN, device=device)
    bank = [t.detach().to(device) for t in make_bank(mode)]
    adapter_index = torch.tensor([2, -1, 1], device=device)
    lengths = torch.tensor(TOKENS, device=device)
    row_tokens = torch.tensor([1, 0, 4], device=device)
    windows = ops.mixed_slot_windows(adapter_index, row_tokens, 4, SEQ_LEN, mode, None, None, None)
    dropout = torch.tensor([0.2, 0.0, 0.4], device=device)
    args = (hidden, *bank, *windows, lengths, 4, dropout, 3, mode == "max")
    torch.library.opcheck(ops.mixed_lpt_prompt_fwd_op, args)
    out, pre, arg_rows = ops.mixed_lpt_prompt_fwd_op(*args)
    bwd = (torch.randn_like(out), hidden, *windows, pre, arg_rows, bank[2], lengths, dropout, 3, mode == "max")
    torch.library.opcheck(ops.mixed_lpt_prompt_bwd_op, bwd)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend, device):
    """The public entry compiles in one graph with the data checks off (they sync) and ``num_tokens`` a list."""
    hidden = torch.randn(4, SEQ_LEN, HIDDEN, device=device)
    bank = [t.detach().to(device).requires_grad_() for t in make_bank("pool")]
    adapter_index = torch.tensor([2, 0, -1, 1], device=device)
    mask = padded_mask([7, 4, 2, 5], SEQ_LEN, "left").to(device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(hidden, *params):
        out = ops.mixed_lpt_prompt(hidden, *params, adapter_index, TOKENS, attention_mask=mask, mode="pool",
                                   backend=backend, check_ids=False)  # fmt: skip
        return (out * out).sum()

    loss = step(hidden, *bank)
    grads = torch.autograd.grad(loss, bank)
    expected = reference.mixed_lpt_prompt(hidden, *bank, adapter_index, TOKENS, RANKS, "pool", attention_mask=mask)
    ref_loss = (expected * expected).sum()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    assert_grads_close(grads, torch.autograd.grad(ref_loss, bank), NAMES)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    bank = make_bank("max")
    out = run(torch.randn(0, SEQ_LEN, HIDDEN), bank, torch.zeros(0, dtype=torch.long), "max", backend)
    assert out.shape == (0, max(TOKENS), HIDDEN)
    grads = torch.autograd.grad(out.sum(), bank)
    assert all(g.shape == p.shape and not g.any() for g, p in zip(grads, bank, strict=True))


def test_exported():
    assert prompt_ops.mixed_lpt_prompt is ops.mixed_lpt_prompt


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------


BAD_INPUTS = [
    ("hidden", _set("hidden", [[1.0]]), TypeError, r"hidden must be a torch.Tensor"),
    ("hidden", _with("hidden", lambda t: t[:, :0]), ValueError, r"hidden must have shape \(B, L, d\) with L, d >= 1"),
    ("hidden", _with("hidden", lambda t: t.long()), TypeError, r"hidden must be a floating-point"),
    ("w_down", _with("w_down", lambda t: t[0]), ValueError, r"w_down must have shape \(N, d, h_max\) \(3-D\)"),
    ("w_down", _with("w_down", lambda t: t[:, :4]), ValueError, r"w_down must have shape \(N, d, h_max\) with N >= 1"),
    ("w_down", _with("w_down", lambda t: t.double()), TypeError, r"parameters must share one dtype"),
    ("w_down", _with("w_down", lambda t: t.to("meta")), ValueError, r"w_down on meta"),
    ("b_down", _with("b_down", lambda t: t[:, :2]), ValueError, r"b_down must have shape \(3, 6\)"),
    ("w_up", _with("w_up", lambda t: t[:2]), ValueError, r"w_up must have shape \(3, 6, 20\)"),
    ("b_up", _with("b_up", lambda t: t[:, :3]), ValueError, r"b_up must have shape \(3, 20\)"),
    (
        "w_up",
        lambda a: {**a, "w_up": a["w_up"][:, :, :4], "b_up": a["b_up"][:, :4]},
        ValueError,
        r"w_up must have shape \(N, h_max, W_max\) with W_max >= d = 5",
    ),
    (
        "w_up",
        lambda a: {**a, "w_up": a["w_up"][:, :, :10], "b_up": a["b_up"][:, :10]},
        ValueError,
        r"w_up must have at least W_a = 20 columns for adapter 1",
    ),
    ("adapter_index", _with("adapter_index", lambda t: t.float()), TypeError, r"adapter_index must be an int64"),
    ("adapter_index", _with("adapter_index", lambda t: t[:2]), ValueError, r"adapter_index must have shape \(B,\)"),
    ("adapter_index", _set("adapter_index", torch.tensor([0, 3, 1, -1])), ValueError, r"in \[-1, 3\).*found 3"),
    ("num_tokens", _set("num_tokens", 4), TypeError, r"num_tokens must be a \(N,\) tensor or a sequence"),
    ("num_tokens", _set("num_tokens", [2, 4]), ValueError, r"num_tokens must hold one value per adapter, N = 3"),
    ("num_tokens", _set("num_tokens", [2, 0, 1]), ValueError, r"num_tokens\[1\]"),
    ("num_tokens", _set("num_tokens", torch.ones(3, 1)), ValueError, r"num_tokens must be a \(N,\) tensor"),
    ("mode", _set("mode", "mean"), ValueError, r"mode must be one of"),
    ("index", _set("index", torch.tensor([0, 9, 0, 0])), ValueError, r"index must be in \[0, 7\)"),
    ("index", _set("index", torch.zeros(4)), TypeError, r"index must be an int64 or int32"),
    ("attention_mask", _set("attention_mask", torch.ones(4, 3)), ValueError, r"attention_mask must have shape"),
    (
        "attention_mask",
        lambda a: {**a, "mode": "pool", "attention_mask": torch.tensor([[1, 0, 1, 1, 1, 1, 1]] * 4)},
        ValueError,
        r"row 0 has a hole",
    ),
    ("source_lengths", _set("source_lengths", torch.tensor([0, 2, 2, 0])), ValueError, r"source_lengths\[0\] = 0"),
    ("source_lengths", _set("source_lengths", torch.tensor([2, 2])), ValueError, r"source_lengths must have shape"),
    ("dropout_p", _set("dropout_p", [0.1, 1.0, 0.0]), ValueError, r"dropout_p\[1\] must be a float in \[0, 1\)"),
    ("dropout_p", _set("dropout_p", "0.1"), TypeError, r"dropout_p must be a float in \[0, 1\), got str"),
    ("dropout_p", _set("dropout_p", 1.5), ValueError, r"dropout_p must be a float in \[0, 1\), got 1.5"),
    ("dropout_p", _set("dropout_p", [0.1]), ValueError, r"dropout_p must hold one value per adapter"),
    ("training", _set("training", 1), TypeError, r"training must be a bool"),
    ("seed", _set("seed", -1), ValueError, r"seed must be an int"),
    ("backend", _set("backend", "cuda"), ValueError, r"backend must be one of"),
    ("check_ids", _set("check_ids", "yes"), TypeError, r"check_ids must be a bool or None"),
]


@pytest.mark.parametrize(
    "change, error, pattern", [pytest.param(*case[1:], id=f"{case[0]}-{i}") for i, case in enumerate(BAD_INPUTS)]
)
def test_bad_input_is_refused_by_name(change, error, pattern):
    bank = make_bank("naive")
    args = {
        "hidden": torch.randn(4, SEQ_LEN, HIDDEN),
        **dict(zip(NAMES, bank, strict=True)),
        "adapter_index": torch.tensor([0, 1, 2, -1]),
        "num_tokens": TOKENS,
        "mode": "naive",
        "dropout_p": [0.1, 0.2, 0.0],
        "training": True,
        "seed": 3,
        "backend": "torch",
    }
    args = change(args)
    with pytest.raises(error, match=pattern):
        ops.mixed_lpt_prompt(**args)
