"""mixed_dept_embed: a bank of prompt-tuning/DePT adapters, one per row, against the independent row-by-row reference
(outputs and every gradient), gradcheck, opcheck, torch.compile, determinism, padding and bad input."""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import pytest
import torch

import prompt_ops
from prompt_ops.ops import mixed_embed as ops
from tests.helpers import (
    MixedBankCase,
    assert_close,
    assert_deterministic,
    assert_grads_close,
    padded_mask,
    random_bank,
    tolerances,
)

KERNELS_MISSING = importlib.util.find_spec("prompt_ops.kernels.mixed_embed") is None
TRITON = pytest.param(
    "triton",
    marks=pytest.mark.skipif(
        KERNELS_MISSING, reason="the Triton launchers (prompt_ops/kernels/mixed_embed.py) are not written yet"
    ),
)
BACKENDS = ["torch", TRITON]
LAYOUTS = ops.SLOTS
NAMES = ("prompts", "lora_a", "lora_b")
RAGGED = {1: [(3, 8, 4)], 3: [(4, 7, 3), (2, 9, 5), (1, 6, 2)]}
"""``(m_a, L_a, r_a)`` per adapter: prompt lengths, A lengths and ranks all different, every ``L_a >= 6``."""


@dataclasses.dataclass
class MixedCase(MixedBankCase):
    """Inputs of one mixed_dept_embed call; ``sizes`` lists each adapter's ``(m_a, L_a, r_a)`` (``r_a = 0``: a
    prompt-tuning adapter, zero factors and scale 0)."""

    positions: str | torch.Tensor
    sizes: list[tuple[int, int, int]]
    slots: str = "front"

    def args(self, params=None) -> tuple:
        prompts, lora_a, lora_b = params if params is not None else (self.prompts, self.lora_a, self.lora_b)
        return (self.input_ids, self.weight, prompts, self.prompt_lengths, lora_a, lora_b, self.scales,
                self.adapter_index)  # fmt: skip

    def run(self, backend: str, **kwargs):
        kwargs = {"attention_mask": self.attention_mask, "positions": self.positions, "slots": self.slots, **kwargs}
        return ops.mixed_dept_embed(*self.args(), backend=backend, **kwargs)

    def reference(self):
        """Reference ``(out, mask, params)`` on fresh leaf copies; a fp16/bf16 table is upcast (DESIGN.md §4)."""
        return self.reference_at(self.positions, self.slots)


def make_mixed_case(
    sizes: list[tuple[int, int, int]],
    adapter_index: list[int],
    seq_len: int,
    *,
    hidden: int = 11,
    vocab: int = 40,
    dept: bool = True,
    mask: torch.Tensor | None = None,
    positions: str | torch.Tensor = "tokens",
    dtype: torch.dtype = torch.float32,
    param_dtype: torch.dtype = torch.float32,
    device: str | None = None,
    slots: str = "front",
) -> MixedCase:
    """A zero-padded bank of random adapters (parameters leaves that require grad) and a batch over it."""
    prompts, lora_a, lora_b, scales = random_bank(
        sizes, hidden, lambda a, r: (a + 4.0) / math.sqrt(r), dtype=param_dtype, device=device
    )
    lora = [t.requires_grad_(True) for t in (lora_a, lora_b)] if dept else [None, None]
    batch = len(adapter_index)
    return MixedCase(
        input_ids=torch.randint(0, vocab, (batch, seq_len), device=device),
        weight=torch.randn(vocab, hidden, device=device).to(dtype),
        prompts=prompts.requires_grad_(True),
        prompt_lengths=torch.tensor([size[0] for size in sizes], device=device),
        lora_a=lora[0],
        lora_b=lora[1],
        scales=scales,
        adapter_index=torch.tensor(adapter_index, dtype=torch.int64, device=device),
        attention_mask=mask,
        positions=positions,
        sizes=sizes,
        slots=slots,
    )


def batch_rows(num: int, batch: int) -> list[int]:
    """Each row's adapter: ``-1`` rows and repeated adapters when ``B = 5``, the last adapter when ``B = 1``."""
    if batch == 1:
        return [num - 1]
    return [2, -1, 0, 2, 1] if num == 3 else [0, -1, 0, 0, -1]


def assert_padding_has_zero_grad(case: MixedCase, grads: list[torch.Tensor]) -> None:
    """Exact zeros on the bank's padding: prompt rows ``>= m_a``, A rows ``>= L_a``, ranks ``>= r_a``."""
    for a, (m, length, r) in enumerate(case.sizes):
        assert not grads[0][a, m:].any(), f"prompt padding of adapter {a}"
        if len(grads) > 1:
            assert not grads[1][a, length:].any() and not grads[1][a, :, r:].any(), f"lora_a padding of adapter {a}"
            assert not grads[2][a, r:].any(), f"lora_b padding of adapter {a}"


FP32, BF16 = torch.float32, torch.bfloat16
MATRIX = [  # every (N, B) with two layouts and both dtypes, every layout with both dtypes, (3, 5) with all layouts
    (1, 1, "left", "tokens", FP32), (1, 1, "left", "explicit", BF16), (1, 5, "right", "tokens", FP32),
    (1, 5, "left", "absolute", BF16), (3, 1, "left", "absolute", FP32), (3, 1, "right", "tokens", BF16),
    (3, 5, "left", "tokens", FP32), (3, 5, "right", "tokens", FP32), (3, 5, "left", "absolute", FP32),
    (3, 5, "left", "explicit", FP32), (3, 5, "left", "tokens", BF16), (3, 5, "left", "explicit", BF16),
]  # fmt: skip


@pytest.mark.parametrize("slots", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "num, batch, side, positions, dtype", [pytest.param(*row, id="-".join(map(str, row))) for row in MATRIX]
)
def test_matches_reference(num, batch, side, positions, dtype, backend, slots):
    seq_len = 6
    mask = padded_mask([6, 3, 1, 5, 2][:batch] if batch > 1 else [4], seq_len, side)
    starts = torch.tensor([-2, 0, 3, 1, -7][:batch]) if positions == "explicit" else positions
    case = make_mixed_case(
        RAGGED[num], batch_rows(num, batch), seq_len, mask=mask, positions=starts, dtype=dtype, slots=slots
    )
    out, out_mask = case.run(backend)
    ref_out, ref_mask, ref_params = case.reference()
    assert out.dtype == dtype and out.shape == (batch, case.prompts.shape[1] + seq_len, 11)
    assert_close(out, ref_out, dtype, dot=True)
    assert torch.equal(out_mask, ref_mask)
    grad = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, case.params, grad)
    ref_grads = torch.autograd.grad(ref_out, ref_params, grad.float())
    assert_grads_close(grads, ref_grads, NAMES, **tolerances(dtype, dot=True))
    if positions != "explicit":  # explicit starts may reach A rows past L_a; the conventions stay below L <= L_a
        assert_padding_has_zero_grad(case, grads)


@pytest.mark.parametrize("slots", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dept", [False, True], ids=["prompt-only-bank", "prompt-tuning-in-dept-bank"])
def test_prompt_tuning_adapters_match_reference(dept, backend, slots):
    """A bank without offsets (``lora_a = lora_b = None``), and prompt-tuning adapters (rank 0, scale 0) stacked
    with DePT ones."""
    sizes = [(2, 7, 0), (5, 6, 3), (1, 8, 0)]
    mask = padded_mask([6, 2, 4, 5], 6, "left")
    case = make_mixed_case(sizes, [1, 0, -1, 2], 6, dept=dept, mask=mask, slots=slots)
    out, out_mask = case.run(backend)
    ref_out, ref_mask, ref_params = case.reference()
    assert_close(out, ref_out, torch.float32, dot=True)
    assert torch.equal(out_mask, ref_mask)
    grad = torch.randn(out.shape)
    grads = torch.autograd.grad(out, case.params, grad)
    assert_grads_close(grads, torch.autograd.grad(ref_out, ref_params, grad), NAMES[: len(grads)])
    assert_padding_has_zero_grad(case, grads)


@pytest.mark.parametrize("slots", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("positions", ["tokens", "explicit"])
def test_max_lengths_mask_the_rows_past_each_adapter(positions, backend, slots):
    """With ``max_lengths``, tokens past an adapter's ``L_a`` (an input longer than it, or an explicit start) get no
    offset, as the zero padding gives, and the padded rows get an exact zero gradient: the reference's gradient
    with those rows zeroed (it differentiates the padded ``A`` as a whole)."""
    sizes = [(4, 7, 3), (2, 9, 5), (1, 3, 2)]  # adapter 2 is shorter than the input (L = 6)
    starts = torch.tensor([2, -1, 0, 4, 1]) if positions == "explicit" else "tokens"
    mask = padded_mask([6, 3, 5, 4, 6], 6, "left")
    case = make_mixed_case(sizes, [2, -1, 0, 2, 1], 6, mask=mask, positions=starts, slots=slots)
    lengths = torch.tensor([size[1] for size in sizes])
    out, out_mask = case.run(backend, max_lengths=lengths)
    ref_out, ref_mask, ref_params = case.reference()
    assert_close(out, ref_out, torch.float32, dot=True)
    assert torch.equal(out_mask, ref_mask)
    grad = torch.randn(out.shape)
    grads = torch.autograd.grad(out, case.params, grad)
    ref_grads = list(torch.autograd.grad(ref_out, ref_params, grad))
    assert ref_grads[1][2, 3:].any(), "the case must reach adapter 2's padded rows"
    for a, length in enumerate(lengths.tolist()):
        ref_grads[1][a, length:] = 0
    assert_grads_close(grads, ref_grads, NAMES)
    assert_padding_has_zero_grad(case, grads)


@pytest.mark.parametrize("slots", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_row_equals_its_adapter_alone(backend, slots):
    """Batch invariance through the public single-adapter op: a left-padded row's real columns (its prompt and its
    tokens) equal ``prompt_ops.dept_embed`` of its adapter on the row alone, unpadded; the masked slots (in front
    of the prompt, or between it and the input) are zero, and the input is at columns ``m_max + t`` either way."""
    lengths, seq_len = [6, 3, 5, 2], 6
    mask = padded_mask(lengths, seq_len, "left")
    case = make_mixed_case(RAGGED[3], [1, 0, 2, -1], seq_len, mask=mask, slots=slots)
    out, out_mask = case.run(backend)
    num_slots = case.prompts.shape[1]
    for row, (adapter, length) in enumerate(zip(case.adapter_index.tolist(), lengths, strict=True)):
        ids = case.input_ids[row : row + 1, seq_len - length :]
        if adapter < 0:
            alone, num_prompt = torch.nn.functional.embedding(ids, case.weight)[0], 0
        else:
            m, max_length, r = case.sizes[adapter]
            alone = prompt_ops.dept_embed(
                ids, case.weight, case.prompts[adapter, :m], case.lora_a[adapter, :max_length, :r],
                case.lora_b[adapter, :r], scale=float(case.scales[adapter]), backend="torch",
            )[0][0]  # fmt: skip
            num_prompt = m
        assert_row_is_alone(out, out_mask, row, alone, num_prompt, num_slots, length, slots)


def assert_row_is_alone(out, out_mask, row: int, alone, num_prompt: int, num_slots: int, length: int, slots: str):
    """Row ``row`` of a bank op's ``(out, out_mask)`` (``num_slots`` prompt slots in the ``slots`` layout, its input
    left-padded to ``length`` real tokens): its prompt columns and real token columns equal ``alone`` (its
    adapter's ``num_prompt`` prompt rows, then its tokens, on the row alone); its other slots are zero and masked,
    its prompt slots unmasked."""
    first = num_slots - num_prompt if slots == "front" else 0  # the column of the prompt's row 0
    prompt = slice(first, first + num_prompt)
    real = torch.cat([out[row, prompt], out[row, out.shape[1] - length :]])
    assert_close(real, alone, torch.float32, dot=True)
    empty = [c for c in range(num_slots) if not first <= c < first + num_prompt]
    assert not out[row, empty].any()
    expected = [int(first <= c < first + num_prompt) for c in range(num_slots)]
    assert out_mask[row, :num_slots].tolist() == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(backend):
    case = make_mixed_case(RAGGED[3], [2, -1, 0, 2, 1, 0, 2], 6, mask=padded_mask([6, 3, 1, 5, 2, 6, 4], 6, "left"))
    grad = torch.randn(7, case.prompts.shape[1] + 6, 11)
    assert_deterministic(lambda: case.run(backend), case.params, grad)


@pytest.mark.parametrize("slots", LAYOUTS)
@pytest.mark.parametrize("positions", ["tokens", "explicit"])
def test_gradcheck_fp64_torch_backend(positions, slots):
    starts = torch.tensor([-1, 2, 0]) if positions == "explicit" else "tokens"
    case = make_mixed_case(
        [(2, 4, 2), (1, 6, 3)], [1, -1, 0], 4, hidden=5, mask=padded_mask([4, 2, 3], 4, "left"), positions=starts,
        dtype=torch.float64, param_dtype=torch.float64,
    )  # fmt: skip

    def fn(*params):
        return ops.mixed_dept_embed(
            *case.args(params),
            attention_mask=case.attention_mask,
            positions=case.positions,
            backend="torch",
            slots=slots,
        )[0]

    assert torch.autograd.gradcheck(fn, tuple(case.params))


@pytest.mark.parametrize("slots", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("starts", [None, [-2, 3, 7]], ids=["unshifted", "explicit"])
def test_opcheck(backend, starts, slots, device):
    """fp32 and (torch) fp64; the unshifted case also checks the backward of a bank without offsets."""
    dtypes = [torch.float32] + ([torch.float64] if backend == "torch" else [])
    for dtype in dtypes:
        case = make_mixed_case(
            [(3, 5, 2), (1, 4, 3)], [1, -1, 0], 4, hidden=5, mask=padded_mask([4, 2, 3], 4, "left").to(device),
            dtype=dtype, param_dtype=dtype, device=device,
        )  # fmt: skip
        row_starts = None if starts is None else torch.tensor(starts, device=device)
        args = (*case.args(), case.attention_mask, True, backend, row_starts, False, None, slots)
        torch.library.opcheck(ops.mixed_dept_embed_fwd_op, args)
        grad = torch.randn(3, 3 + 4, 5, dtype=dtype, device=device)
        lora = [t.detach() for t in (case.lora_a, case.lora_b)]
        head = (grad, case.prompt_lengths)
        tail = (case.scales, case.adapter_index, 3, backend, row_starts, False, None, slots)
        torch.library.opcheck(ops.mixed_dept_embed_bwd_op, (*head, *lora, *tail))
        if starts is None and dtype == torch.float32:
            torch.library.opcheck(ops.mixed_dept_embed_bwd_op, (*head, None, None, *tail))


@pytest.mark.parametrize(
    "backend, compiler",
    [
        pytest.param("torch", "aot_eager", id="torch"),
        pytest.param("torch", "inductor", id="torch-inductor", marks=pytest.mark.inductor),
        pytest.param("triton", "aot_eager", id="triton", marks=TRITON.marks),
    ],
)
def test_compile_fullgraph(backend, compiler, device):
    mask = padded_mask([6, 3, 5, 2], 6, "left").to(device)
    case = make_mixed_case(RAGGED[3], [2, -1, 0, 1], 6, mask=mask, device=device)

    @torch.compile(fullgraph=True, backend=compiler)
    def step(input_ids, weight, attention_mask, *params):
        out, mask = ops.mixed_dept_embed(
            input_ids, weight, params[0], case.prompt_lengths, params[1], params[2], case.scales,
            case.adapter_index, attention_mask=attention_mask, backend=backend,
        )  # fmt: skip
        return (out * out).sum(), mask

    loss, out_mask = step(case.input_ids, case.weight, case.attention_mask, *case.params)
    grads = torch.autograd.grad(loss, case.params)
    ref_out, ref_mask, ref_params = case.reference()
    ref_loss = (ref_out * ref_out).sum()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    assert torch.equal(out_mask, ref_mask)
    assert_grads_close(grads, torch.autograd.grad(ref_loss, ref_params), NAMES)


def test_empty_batch_and_sequence():
    for batch, seq_len in ((0, 4), (3, 0)):
        case = make_mixed_case(RAGGED[3], [2, -1, 0][:batch], seq_len, positions="absolute")
        out, mask = case.run("torch")
        assert out.shape == (batch, 4 + seq_len, 11) and mask.shape == (batch, 4 + seq_len)
        ref_out, ref_mask, _ = case.reference() if batch else (out, mask, None)
        assert torch.equal(out, ref_out) and torch.equal(mask, ref_mask)
        grads = torch.autograd.grad(out.sum(), case.params)
        assert [g.shape for g in grads] == [p.shape for p in case.params]


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------


def _set(name: str, value):
    return lambda args: {**args, name: value}


def _with(name: str, make):
    return lambda args: {**args, name: make(args[name])}


BAD_INPUTS = [
    ("input_ids", _set("input_ids", [[1, 2]]), TypeError, r"input_ids must be a torch.Tensor"),
    ("input_ids", _with("input_ids", lambda t: t.float()), TypeError, r"input_ids must hold int64 or int32"),
    ("input_ids", _with("input_ids", lambda t: t[0]), ValueError, r"input_ids must have shape \(B, L\)"),
    ("input_ids", _with("input_ids", lambda t: t + 40), ValueError, r"input_ids must be in \[0, 40\)"),
    ("weight", _set("weight", "table"), TypeError, r"weight must be a torch.Tensor"),
    ("weight", _with("weight", lambda t: t.long()), TypeError, r"weight must be a floating-point dtype"),
    ("weight", _with("weight", lambda t: t.clone().requires_grad_(True)), ValueError, r"weight .*requires grad"),
    ("weight", _with("weight", lambda t: t[:, :7]), ValueError, r"prompts must have shape \(N, m_max, d\) with d ="),
    ("prompts", _set("prompts", None), TypeError, r"prompts must be a torch.Tensor of shape \(N, m_max, d\)"),
    ("prompts", _with("prompts", lambda t: t[0]), ValueError, r"prompts must have shape \(N, m_max, d\) \(3-D\)"),
    ("prompts", _with("prompts", lambda t: t.long()), TypeError, r"prompts must be a floating-point dtype"),
    ("prompts", _with("prompts", lambda t: t.double()), TypeError, r"parameters must share one dtype"),
    ("prompts", _with("prompts", lambda t: t[:0]), ValueError, r"prompts must have shape .*N >= 1 .*bank is empty"),
    ("prompts", _with("prompts", lambda t: t[:, :0]), ValueError, r"m_max >= 1 prompt rows.*bank is empty"),
    ("prompt_lengths", _set("prompt_lengths", [4, 2, 1]), TypeError, r"prompt_lengths must be a torch.Tensor"),
    ("prompt_lengths", _with("prompt_lengths", lambda t: t.float()), TypeError, r"prompt_lengths must hold int64"),
    ("prompt_lengths", _with("prompt_lengths", lambda t: t[:2]), ValueError, r"prompt_lengths must have shape \(N,\)"),
    ("prompt_lengths", _with("prompt_lengths", lambda t: t[None]), ValueError, r"prompt_lengths must have shape \(N"),
    ("prompt_lengths", _set("prompt_lengths", torch.tensor([4, 0, 1])), ValueError, r"prompt_lengths must be in \[1"),
    ("prompt_lengths", _set("prompt_lengths", torch.tensor([5, 2, 1])), ValueError, r"in \[1, m_max\] = \[1, 4\]"),
    ("prompt_lengths", _with("prompt_lengths", lambda t: t.to("meta")), ValueError, r"prompt_lengths must be on"),
    ("lora_a", _set("lora_a", None), ValueError, r"lora_b is given but lora_a is None"),
    ("lora_b", _set("lora_b", None), ValueError, r"lora_a is given but lora_b is None"),
    ("lora_a", _set("lora_a", 1.0), TypeError, r"lora_a must be a torch.Tensor of shape \(N, L_max, r_max\)"),
    ("lora_a", _with("lora_a", lambda t: t[0]), ValueError, r"lora_a must have shape \(N, L_max, r_max\) \(3-D\)"),
    ("lora_a", _with("lora_a", lambda t: t[:2]), ValueError, r"lora_a must have shape .* N = prompts.shape\[0\] = 3"),
    ("lora_a", _with("lora_a", lambda t: t[:, :, :0]), ValueError, r"lora_a must have shape .* r >= 1"),
    ("lora_a", _with("lora_a", lambda t: t[:, :5]), ValueError, r"L = 6 tokens but lora_a has L_max = 5"),
    ("lora_a", _with("lora_a", lambda t: t.to("meta")), ValueError, r"lora_a on meta"),
    ("lora_b", _with("lora_b", lambda t: t[:, :3]), ValueError, r"lora_b must have shape \(N, r_max, d\) = \(3, 5, 11"),
    ("lora_b", _with("lora_b", lambda t: t.bfloat16()), TypeError, r"lora_b torch.bfloat16"),
    ("scales", _set("scales", 1.0), TypeError, r"scales must be a torch.Tensor of shape \(N,\)"),
    ("scales", _with("scales", lambda t: t.long()), TypeError, r"scales must be a floating-point tensor"),
    ("scales", _with("scales", lambda t: t[:1]), ValueError, r"scales must have shape \(N,\) = \(3,\)"),
    ("scales", _set("scales", torch.tensor([1.0, float("nan"), 0.0])), ValueError, r"scales must hold finite"),
    ("scales", _set("scales", torch.tensor([1.0, 0.0, float("inf")])), ValueError, r"scales must hold finite"),
    ("scales", _with("scales", lambda t: t.to("meta")), ValueError, r"scales must be on input_ids' device"),
    ("adapter_index", _set("adapter_index", [0, 1, 2, 0]), TypeError, r"adapter_index must be a torch.Tensor"),
    ("adapter_index", _with("adapter_index", lambda t: t.float()), TypeError, r"adapter_index must hold int64"),
    ("adapter_index", _with("adapter_index", lambda t: t[:3]), ValueError, r"adapter_index must have shape \(B,\)"),
    ("adapter_index", _set("adapter_index", torch.tensor([0, 3, 1, 2])), ValueError, r"in \[-1, 3\).*found 3"),
    ("adapter_index", _set("adapter_index", torch.tensor([0, -2, 1, 2])), ValueError, r"in \[-1, 3\).*found -2"),
    ("adapter_index", _with("adapter_index", lambda t: t.to("meta")), ValueError, r"adapter_index must be on"),
    ("attention_mask", _set("attention_mask", torch.ones(4, 5)), ValueError, r"attention_mask must have shape"),
    ("attention_mask", _set("attention_mask", torch.ones(4, 6, dtype=torch.complex64)), TypeError, r"attention_mask"),
    ("attention_mask", _set("attention_mask", torch.full((4, 6), float("nan"))), ValueError, r"attention_mask must"),
    ("positions", _set("positions", "relative"), ValueError, r"positions must be one of"),
    ("positions", _set("positions", torch.zeros(3, dtype=torch.long)), ValueError, r"positions must have shape \(B,\)"),
    ("backend", _set("backend", "cuda"), ValueError, r"backend must be one of"),
    ("check_ids", _set("check_ids", "yes"), TypeError, r"check_ids must be a bool or None"),
    ("slots", _set("slots", "back"), ValueError, r"slots must be one of \('front', 'after_prompt'\).*'back'"),
    ("slots", _set("slots", None), ValueError, r"slots must be one of .*got None"),
    ("max_lengths", _set("max_lengths", [7, 9, 6]), TypeError, r"max_lengths must be a torch.Tensor of shape \(N,\)"),
    ("max_lengths", _set("max_lengths", torch.ones(3)), TypeError, r"max_lengths must hold int64 or int32"),
    ("max_lengths", _set("max_lengths", torch.ones(2, dtype=torch.long)), ValueError, r"max_lengths must have shape"),
    ("max_lengths", _set("max_lengths", torch.tensor([7, 10, 6])), ValueError, r"in \[0, L_max\] = \[0, 9\].*10"),
    ("max_lengths", _set("max_lengths", torch.tensor([7, -1, 6])), ValueError, r"max_lengths must be in .*found -1"),
    ("max_lengths", _set("max_lengths", torch.ones(3, device="meta").long()), ValueError, r"max_lengths must b"),
]


@pytest.mark.parametrize(
    "change, error, pattern", [pytest.param(*case[1:], id=f"{case[0]}-{i}") for i, case in enumerate(BAD_INPUTS)]
)
def test_bad_input_is_refused_by_name(change, error, pattern):
    case = make_mixed_case(RAGGED[3], [0, 1, 2, -1], 6, vocab=40)
    args = dict(zip(("input_ids", "weight", "prompts", "prompt_lengths", "lora_a", "lora_b", "scales",
                     "adapter_index"), case.args(), strict=True))  # fmt: skip
    args.update(attention_mask=None, positions="tokens", backend="torch", check_ids=True)
    args = change(args)
    with pytest.raises(error, match=pattern):
        ops.mixed_dept_embed(**args)
