"""mixed_adept_embed: a bank of ADePT adapters, one per row, against the independent row-by-row reference (outputs
and every gradient), batch invariance against adept_embed alone, dropout, gradcheck, opcheck, torch.compile,
determinism, the bank's padding and bad input."""

from __future__ import annotations

import pytest
import torch

import prompt_ops
from prompt_ops.ops import mixed_adept as ops
from tests.helpers import (
    ADEPT_BANK_NAMES,
    MixedAdeptCase,
    assert_close,
    assert_deterministic,
    assert_grads_close,
    make_mixed_adept_case,
    padded_mask,
    tolerances,
)
from tests.ops.test_mixed_embed_op import _set, _with, assert_row_is_alone, batch_rows

BACKENDS = ["torch", "triton"]
LAYOUTS = ("front", "after_prompt")
RAGGED = {1: [(3, 4)], 3: [(4, 3), (2, 5), (1, 2)]}
"""``(m_a, r_a)`` per adapter: prompt lengths and ranks all different."""


def run(case: MixedAdeptCase, backend: str, **kwargs):
    kwargs = {"attention_mask": case.attention_mask, "slots": case.slots, **kwargs}
    return ops.mixed_adept_embed(*case.args(), backend=backend, **kwargs)


def check_against_reference(case: MixedAdeptCase, out, out_mask, dtype, dropout_scale=None) -> list[torch.Tensor]:
    """Outputs and every gradient against the reference; returns the gradients."""
    ref_out, ref_mask, ref_params = case.reference(dropout_scale)
    assert out.dtype == case.weight.dtype and out.shape == ref_out.shape
    assert_close(out, ref_out, dtype, dot=True)
    assert torch.equal(out_mask, ref_mask) and out_mask.dtype == ref_mask.dtype
    grad = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, case.params, grad)
    assert [g.dtype for g in grads] == [p.dtype for p in case.params]
    ref_grads = torch.autograd.grad(ref_out, ref_params, grad.float())
    assert_grads_close(grads, ref_grads, ADEPT_BANK_NAMES, **tolerances(dtype, dot=True))
    return list(grads)


def assert_padding_has_zero_grad(case: MixedAdeptCase, grads: list[torch.Tensor]) -> None:
    """Exact zeros on the bank's padding: prompt rows ``>= m_a``, ranks ``>= r_a`` of the FFN."""
    for name, grad, pad in zip(ADEPT_BANK_NAMES, grads, case.padding(), strict=True):
        assert not grad[pad].any(), f"the padding of {name} got a gradient"


FP32, BF16 = torch.float32, torch.bfloat16
MATRIX = [  # every (N, B); both paddings and dtypes on the mixed batch
    (1, 1, "left", FP32), (1, 5, "right", BF16), (3, 1, "right", FP32),
    (3, 5, "left", FP32), (3, 5, "right", FP32), (3, 5, "left", BF16),
]  # fmt: skip


@pytest.mark.parametrize("slots", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num, batch, side, dtype", [pytest.param(*row, id="-".join(map(str, row))) for row in MATRIX])
def test_matches_reference(num, batch, side, dtype, backend, slots):
    seq_len = 6
    mask = padded_mask([6, 3, 1, 5, 2][:batch] if batch > 1 else [4], seq_len, side)
    case = make_mixed_adept_case(RAGGED[num], batch_rows(num, batch), seq_len, mask=mask, dtype=dtype, slots=slots)
    out, out_mask = run(case, backend)
    grads = check_against_reference(case, out, out_mask, dtype)
    assert_padding_has_zero_grad(case, grads)


@pytest.mark.parametrize("slots", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_row_equals_its_adapter_alone(backend, slots):
    """Batch invariance through the public single-adapter op: a left-padded row's real columns (its prompt and its
    tokens) equal ``prompt_ops.adept_embed`` of its adapter, unpadded, on the row alone; a ``-1`` row's tokens are
    the plain table rows; the masked slots are zero, and the input is at columns ``m_max + t`` either way."""
    lengths, seq_len = [6, 3, 5, 2], 6
    mask = padded_mask(lengths, seq_len, "left")
    case = make_mixed_adept_case(RAGGED[3], [1, 0, 2, -1], seq_len, mask=mask, slots=slots)
    out, out_mask = run(case, backend)
    num_slots = case.prompts.shape[1]
    for row, (adapter, length) in enumerate(zip(case.adapter_index.tolist(), lengths, strict=True)):
        ids = case.input_ids[row : row + 1, seq_len - length :]
        if adapter < 0:
            alone, num_prompt = torch.nn.functional.embedding(ids, case.weight)[0], 0
        else:
            num_prompt, r = case.sizes[adapter]
            ffn = (case.w_down[adapter, :, :r], case.b_down[adapter, :r], case.w_up[adapter, :r], case.b_up[adapter])
            alone = prompt_ops.adept_embed(ids, case.weight, case.prompts[adapter, :num_prompt], *ffn, backend=backend)
            alone = alone[0][0]
        assert_row_is_alone(out, out_mask, row, alone, num_prompt, num_slots, length, slots)


def expected_multipliers(case: MixedAdeptCase, backend: str, dropout: torch.Tensor, seed: int) -> torch.Tensor:
    """The ``(B, L, r_max)`` multipliers each backend documents: the torch backend's one draw from a generator
    seeded with ``seed``; the kernels' philox stream keyed by ``seed`` and ``(b * L + t) * r_max + k``, each row
    against its adapter's probability (``prompt_ops.kernels.adept_embed.dropout_multipliers`` per probability)."""
    batch, seq_len = case.input_ids.shape
    rank = case.w_down.shape[2]
    if backend == "torch":
        flat = ops.dropout_multipliers_mixed(case.adapter_index, seq_len, rank, dropout, seed, torch.float32)
        return flat.view(batch, seq_len, rank)
    from prompt_ops.kernels.adept_embed import dropout_multipliers

    rows = []
    for b, adapter in enumerate(case.adapter_index.tolist()):
        every = dropout_multipliers(batch * seq_len, rank, float(dropout[max(adapter, 0)]), seed, dropout.device)
        rows.append(every.view(batch, seq_len, rank)[b])
    return torch.stack(rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout(backend):
    """Training: each row drops with its adapter's probability, reproducibly from ``seed`` (the reference with the
    documented multipliers gives outputs and gradients); another seed differs; rows of an adapter with ``p = 0``
    and a bank of zeros equal eval; ``training=False`` ignores ``dropout``."""
    mask = padded_mask([6, 3, 5, 2, 6], 6, "left")
    case = make_mixed_adept_case(RAGGED[3], [2, -1, 0, 2, 1], 6, mask=mask)
    dropout = torch.tensor([0.5, 0.0, 0.3])
    out, out_mask = run(case, backend, dropout=dropout, training=True, seed=7)
    scale = expected_multipliers(case, backend, dropout, 7)
    check_against_reference(case, out, out_mask, torch.float32, dropout_scale=scale)
    again = run(case, backend, dropout=dropout, training=True, seed=7)[0]
    assert torch.equal(out, again)
    other = run(case, backend, dropout=dropout, training=True, seed=8)[0]
    assert not torch.equal(other, out)
    eval_out = run(case, backend)[0]
    assert torch.equal(out[[1, 4]], eval_out[[1, 4]])  # a -1 row and the row of adapter 1 (p = 0)
    assert not torch.equal(out[[0, 2, 3]], eval_out[[0, 2, 3]])
    assert torch.equal(run(case, backend, dropout=torch.zeros(3), training=True, seed=7)[0], eval_out)
    assert torch.equal(run(case, backend, dropout=dropout, training=False, seed=7)[0], eval_out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(backend):
    case = make_mixed_adept_case(
        RAGGED[3], [2, -1, 0, 2, 1, 0, 2], 6, mask=padded_mask([6, 3, 1, 5, 2, 6, 4], 6, "left")
    )
    grad = torch.randn(7, case.prompts.shape[1] + 6, 11)
    kwargs = {"dropout": torch.tensor([0.2, 0.1, 0.4]), "training": True, "seed": 3}
    assert_deterministic(lambda: run(case, backend, **kwargs), case.params, grad)


@pytest.mark.parametrize("training, slots", [(False, "front"), (True, "after_prompt")], ids=["eval", "dropout"])
def test_gradcheck_fp64_torch_backend(training, slots):
    case = make_mixed_adept_case(
        [(2, 2), (1, 3)], [1, -1, 0], 4, hidden=5, mask=padded_mask([4, 2, 3], 4, "left"), dtype=torch.float64,
        param_dtype=torch.float64, slots=slots,
    )  # fmt: skip
    dropout = torch.tensor([0.3, 0.2], dtype=torch.float64)

    def fn(*params):
        return ops.mixed_adept_embed(
            *case.args(params), attention_mask=case.attention_mask, slots=slots, dropout=dropout, training=training,
            seed=5, backend="torch",
        )[0]  # fmt: skip

    assert torch.autograd.gradcheck(fn, tuple(case.params))


@pytest.mark.parametrize(
    "backend, dtype, training, slots",
    [
        pytest.param("torch", torch.float64, True, "after_prompt", id="torch-fp64-dropout"),
        pytest.param("torch", torch.float32, False, "front", id="torch-fp32-eval"),
        pytest.param("triton", torch.float32, True, "after_prompt", id="triton-fp32-dropout"),
    ],
)
def test_opcheck(backend, dtype, training, slots, device):
    case = make_mixed_adept_case(
        [(3, 2), (1, 3)], [1, -1, 0], 4, hidden=5, mask=padded_mask([4, 2, 3], 4, "left").to(device), dtype=dtype,
        param_dtype=dtype, device=device,
    )  # fmt: skip
    frozen = [p.detach() for p in case.params]
    dropout = torch.tensor([0.2, 0.5], device=device) if training else None
    torch.library.opcheck(
        ops.mixed_adept_embed_fwd_op, (*case.args(), case.attention_mask, dropout, 4, True, backend, slots)
    )
    grad = torch.randn(3, 3 + 4, 5, dtype=dtype, device=device)
    bwd = (grad, case.input_ids, case.weight, case.prompt_lengths, *frozen[1:4], case.adapter_index, dropout, 4, 3,
           backend, slots)  # fmt: skip
    torch.library.opcheck(ops.mixed_adept_embed_bwd_op, bwd)


@pytest.mark.parametrize(
    "backend, compiler",
    [
        pytest.param("torch", "aot_eager", id="torch"),
        pytest.param("torch", "inductor", id="torch-inductor", marks=pytest.mark.inductor),
        pytest.param("triton", "aot_eager", id="triton"),
    ],
)
def test_compile_fullgraph(backend, compiler, device):
    mask = padded_mask([6, 3, 5, 2], 6, "left").to(device)
    case = make_mixed_adept_case(RAGGED[3], [2, -1, 0, 1], 6, mask=mask, device=device)
    dropout = torch.tensor([0.1, 0.0, 0.2], device=device)

    @torch.compile(fullgraph=True, backend=compiler)
    def step(input_ids, weight, attention_mask, *params):
        out, mask = ops.mixed_adept_embed(
            input_ids, weight, params[0], case.prompt_lengths, *params[1:], case.adapter_index,
            attention_mask=attention_mask, dropout=dropout, training=True, seed=9, backend=backend,
        )  # fmt: skip
        return (out * out).sum(), mask

    loss, out_mask = step(case.input_ids, case.weight, case.attention_mask, *case.params)
    grads = torch.autograd.grad(loss, case.params)
    ref_out, ref_mask, ref_params = case.reference(expected_multipliers(case, backend, dropout, 9))
    ref_loss = (ref_out * ref_out).sum()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    assert torch.equal(out_mask, ref_mask)
    assert_grads_close(grads, torch.autograd.grad(ref_loss, ref_params), ADEPT_BANK_NAMES)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "dropout"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_sequence(backend, training):
    """B = 0 or L = 0, in eval and with active dropout (no tokens to draw multipliers for)."""
    dropout = torch.tensor([0.5, 0.1, 0.3]) if training else None
    for batch, seq_len in ((0, 4), (3, 0)):
        case = make_mixed_adept_case(RAGGED[3], [2, -1, 0][:batch], seq_len)
        out, mask = run(case, backend, dropout=dropout, training=training, seed=5)
        assert out.shape == (batch, 4 + seq_len, 11) and mask.shape == (batch, 4 + seq_len)
        if batch:
            ref_out, ref_mask, _ = case.reference()
            assert torch.equal(out, ref_out) and torch.equal(mask, ref_mask)
        grads = torch.autograd.grad(out.sum(), case.params)
        assert [g.shape for g in grads] == [p.shape for p in case.params]
        assert not any(g[1:].any() for g in grads[1:])  # no tokens: no FFN gradient


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------


BAD_INPUTS = [
    ("input_ids", _set("input_ids", [[1, 2]]), TypeError, r"input_ids must be a torch.Tensor"),
    ("input_ids", _with("input_ids", lambda t: t.float()), TypeError, r"input_ids must hold int64 or int32"),
    ("input_ids", _with("input_ids", lambda t: t + 40), ValueError, r"input_ids must be in \[0, 40\)"),
    ("weight", _with("weight", lambda t: t.long()), TypeError, r"weight must be a floating-point dtype"),
    ("weight", _with("weight", lambda t: t.clone().requires_grad_(True)), ValueError, r"weight .*requires grad"),
    ("weight", _with("weight", lambda t: t[:, :7]), ValueError, r"prompts must have shape \(N, m_max, d\) with d ="),
    ("prompts", _set("prompts", None), TypeError, r"prompts must be a torch.Tensor of shape \(N, m_max, d\)"),
    ("prompts", _with("prompts", lambda t: t[0]), ValueError, r"prompts must have shape \(N, m_max, d\) \(3-D\)"),
    ("prompts", _with("prompts", lambda t: t.double()), TypeError, r"parameters must share one dtype"),
    ("prompts", _with("prompts", lambda t: t[:, :0]), ValueError, r"m_max >= 1 prompt rows.*bank is empty"),
    ("prompt_lengths", _with("prompt_lengths", lambda t: t.float()), TypeError, r"prompt_lengths must hold int64"),
    ("prompt_lengths", _with("prompt_lengths", lambda t: t[:2]), ValueError, r"prompt_lengths must have shape \(N,\)"),
    ("prompt_lengths", _set("prompt_lengths", torch.tensor([5, 2, 1])), ValueError, r"in \[1, m_max\] = \[1, 4\]"),
    ("w_down", _set("w_down", 1.0), TypeError, r"w_down must be a torch.Tensor of shape \(N, d, r_max\)"),
    ("w_down", _with("w_down", lambda t: t[0]), ValueError, r"w_down must have shape \(N, d, r_max\) \(3-D\)"),
    ("w_down", _with("w_down", lambda t: t[:2]), ValueError, r"w_down must have shape .* N = prompts.shape\[0\] = 3"),
    ("w_down", _with("w_down", lambda t: t[:, :7]), ValueError, r"w_down must have shape \(N, d, r_max\) with d = "),
    ("w_down", _with("w_down", lambda t: t[:, :, :0]), ValueError, r"w_down must have shape .* r >= 1"),
    ("w_down", _with("w_down", lambda t: t.to("meta")), ValueError, r"w_down on meta"),
    ("b_down", _with("b_down", lambda t: t[:, :2]), ValueError, r"b_down must have shape \(3, 5\) to match w_down"),
    ("b_down", _with("b_down", lambda t: t[0]), ValueError, r"b_down must have shape \(N, r_max\) \(2-D\)"),
    ("w_up", _with("w_up", lambda t: t[:, :, :7]), ValueError, r"w_up must have shape \(3, 5, 11\) to match w_down"),
    ("w_up", _with("w_up", lambda t: t.bfloat16()), TypeError, r"w_up torch.bfloat16"),
    ("b_up", _with("b_up", lambda t: t[:2]), ValueError, r"b_up must have shape \(3, 11\) to match w_down"),
    ("b_up", _set("b_up", "bias"), TypeError, r"b_up must be a torch.Tensor of shape \(N, d\)"),
    ("adapter_index", _with("adapter_index", lambda t: t.float()), TypeError, r"adapter_index must hold int64"),
    ("adapter_index", _with("adapter_index", lambda t: t[:3]), ValueError, r"adapter_index must have shape \(B,\)"),
    ("adapter_index", _set("adapter_index", torch.tensor([0, 3, 1, 2])), ValueError, r"in \[-1, 3\).*found 3"),
    ("adapter_index", _with("adapter_index", lambda t: t.to("meta")), ValueError, r"adapter_index must be on"),
    ("attention_mask", _set("attention_mask", torch.ones(4, 5)), ValueError, r"attention_mask must have shape"),
    ("attention_mask", _set("attention_mask", torch.full((4, 6), float("nan"))), ValueError, r"attention_mask must"),
    ("slots", _set("slots", "back"), ValueError, r"slots must be one of \('front', 'after_prompt'\).*'back'"),
    ("dropout", _set("dropout", 0.1), TypeError, r"dropout must be a torch.Tensor of shape \(N,\)"),
    ("dropout", _set("dropout", torch.zeros(3, dtype=torch.long)), TypeError, r"dropout must be a floating-point"),
    ("dropout", _set("dropout", torch.zeros(2)), ValueError, r"dropout must have shape \(N,\) = \(3,\)"),
    ("dropout", _set("dropout", torch.tensor([0.1, 1.0, 0.0])), ValueError, r"dropout must hold probabilities.*1.0"),
    ("dropout", _set("dropout", torch.tensor([0.1, float("nan"), 0.0])), ValueError, r"dropout must hold prob.*nan"),
    ("dropout", _set("dropout", torch.zeros(3, device="meta")), ValueError, r"dropout must be on input_ids' device"),
    ("training", _set("training", 1), TypeError, r"training must be a bool, got int"),
    ("seed", _set("seed", 1.5), TypeError, r"seed must be an int in \[0, 2147483647\) or None, got float"),
    ("seed", _set("seed", -1), ValueError, r"seed must be an int in \[0, 2147483647\) or None, got -1"),
    ("backend", _set("backend", "cuda"), ValueError, r"backend must be one of"),
    ("check_ids", _set("check_ids", "yes"), TypeError, r"check_ids must be a bool or None"),
]


@pytest.mark.parametrize(
    "change, error, pattern", [pytest.param(*case[1:], id=f"{case[0]}-{i}") for i, case in enumerate(BAD_INPUTS)]
)
def test_bad_input_is_refused_by_name(change, error, pattern):
    case = make_mixed_adept_case(RAGGED[3], [0, 1, 2, -1], 6, vocab=40)
    names = ("input_ids", "weight", "prompts", "prompt_lengths", "w_down", "b_down", "w_up", "b_up", "adapter_index")
    args = dict(zip(names, case.args(), strict=True))
    args.update(attention_mask=None, dropout=torch.tensor([0.1, 0.2, 0.0]), training=True, seed=3, backend="torch",
                check_ids=True)  # fmt: skip
    args = change(args)
    with pytest.raises(error, match=pattern):
        ops.mixed_adept_embed(**args)


def test_triton_refuses_ranks_above_its_limit():
    case = make_mixed_adept_case([(2, 65)], [0], 3)
    with pytest.raises(ValueError, match=r"rank <= 64, got 65; use backend='torch'"):
        run(case, "triton")
