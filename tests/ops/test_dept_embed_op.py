"""The custom ops and public entries: torch backend, gradcheck, opcheck, torch.compile, backend selection."""

import os
import subprocess
import sys

import pytest
import torch

import prompt_ops
from prompt_ops.ops import dept_embed as ops
from prompt_ops.ops import reference
from tests.helpers import assert_close, assert_grads_close, make_case, run_public, tolerances

BACKENDS = ["torch", "triton"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rank", [0, 7], ids=["prompt", "dept"])
def test_torch_backend_matches_reference(dtype, rank):
    case = make_case(3, 9, 4, 33, rank, dtype=dtype)
    out, mask = run_public(case, backend="torch")
    ref_out, ref_mask, ref_params = case.reference()
    assert out.dtype == dtype
    assert_close(out, ref_out, dtype, dot=bool(rank))
    assert torch.equal(mask, ref_mask)
    grad = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, case.params, grad)
    names = ("prompt", "lora_a", "lora_b")[: len(case.params)]
    assert_grads_close(grads, torch.autograd.grad(ref_out, ref_params, grad.float()), names)


@pytest.mark.parametrize("rank", [0, 3], ids=["prompt", "dept"])
def test_gradcheck_fp64_torch_backend(rank):
    case = make_case(2, 5, 3, 6, rank, max_length=7, dtype=torch.float64, param_dtype=torch.float64)

    def fn(*params):
        lora = (params[1], params[2]) if rank else (None, None)
        if rank:
            return prompt_ops.dept_embed(
                case.input_ids, case.weight, params[0], *lora, scale=case.scale,
                attention_mask=case.attention_mask, backend="torch",
            )[0]  # fmt: skip
        return prompt_ops.prompt_embed(case.input_ids, case.weight, params[0], backend="torch")[0]

    assert torch.autograd.gradcheck(fn, tuple(case.params))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rank", [0, 5], ids=["prompt", "dept"])
def test_opcheck(backend, rank, device):
    dtypes = [torch.float32] + ([torch.float64] if backend == "torch" else [])
    for dtype in dtypes:
        case = make_case(2, 6, 3, 20, rank, dtype=dtype, param_dtype=dtype, device=device)
        args = (
            case.input_ids, case.weight, case.prompt, case.lora_a, case.lora_b,
            case.attention_mask, case.scale, True, backend,
        )  # fmt: skip
        torch.library.opcheck(ops.dept_embed_fwd_op, args)
        grad = torch.randn(2, 9, 20, dtype=dtype, device=device)
        lora = [t.detach() if t is not None else None for t in (case.lora_a, case.lora_b)]
        torch.library.opcheck(ops.dept_embed_bwd_op, (grad, *lora, 3, case.scale, backend))


@pytest.mark.parametrize(
    "backend, rank, compiler",
    [
        pytest.param("torch", 0, "aot_eager", id="prompt-torch"),
        pytest.param("torch", 5, "inductor", id="dept-torch", marks=pytest.mark.inductor),
        pytest.param("triton", 0, "aot_eager", id="prompt-triton"),
        pytest.param("triton", 5, "aot_eager", id="dept-triton"),
    ],
)
def test_compile_fullgraph(backend, rank, compiler, device):
    """Inductor compiles the torch backend's DePT (the Triton kernels stay opaque custom ops either way)."""
    case = make_case(2, 7, 3, 20, rank, device=device)

    @torch.compile(fullgraph=True, backend=compiler)
    def step(input_ids, weight, attention_mask, *params):
        if rank:
            out, mask = prompt_ops.dept_embed(
                input_ids, weight, params[0], params[1], params[2], scale=case.scale,
                attention_mask=attention_mask, backend=backend,
            )  # fmt: skip
        else:
            out, mask = prompt_ops.prompt_embed(
                input_ids, weight, params[0], attention_mask=attention_mask, backend=backend
            )
        return (out * out).sum(), mask

    loss, mask = step(case.input_ids, case.weight, case.attention_mask, *case.params)
    grads = torch.autograd.grad(loss, case.params)
    ref_out, ref_mask, ref_params = case.reference()
    ref_loss = (ref_out * ref_out).sum()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    assert torch.equal(mask, ref_mask)
    assert_grads_close(grads, torch.autograd.grad(ref_loss, ref_params))


def test_auto_backend_and_environment_override(monkeypatch):
    case = make_case(1, 4, 2, 8, 2)
    calls = []
    real = ops.dept_embed_fwd_torch
    monkeypatch.setattr(ops, "dept_embed_fwd_torch", lambda *a: calls.append("torch") or real(*a))
    monkeypatch.delenv("PROMPT_OPS_BACKEND", raising=False)
    run_public(case, backend=None)  # auto on CPU tensors -> torch
    assert calls == ["torch"]
    monkeypatch.setenv("PROMPT_OPS_BACKEND", "triton")
    out, _ = run_public(case, backend=None)  # the interpreter runs the kernel on CPU tensors
    assert calls == ["torch"]
    ref_out, _, _ = case.reference()
    assert_close(out, ref_out, torch.float32, dot=True)
    monkeypatch.setenv("PROMPT_OPS_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"\$PROMPT_OPS_BACKEND must be one of"):
        run_public(case, backend=None)


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=root)


@pytest.mark.order_independent
def test_import_without_triton():
    code = """
import sys
sys.modules["triton"] = None  # makes `import triton` fail, as on a machine without it
import torch, prompt_ops
ids = torch.tensor([[1, 2]]); w = torch.randn(5, 4); p = torch.randn(2, 4)
out, mask = prompt_ops.prompt_embed(ids, w, p)  # auto -> torch on CPU
assert out.shape == (1, 4, 4)
try:
    prompt_ops.prompt_embed(ids, w, p, backend="triton")
except RuntimeError as err:
    assert "triton package" in str(err), err
    print("clear error")
"""
    result = _run_python(code, TRITON_INTERPRET="1")
    assert result.returncode == 0, result.stderr
    assert "clear error" in result.stdout


@pytest.mark.order_independent
def test_triton_backend_on_cpu_without_interpreter_is_refused():
    code = """
import torch, prompt_ops
try:
    prompt_ops.prompt_embed(torch.tensor([[1]]), torch.randn(3, 4), torch.randn(1, 4), backend="triton")
except ValueError as err:
    assert "CUDA tensors" in str(err), err
    print("refused")
"""
    result = _run_python(code, TRITON_INTERPRET="0")
    assert result.returncode == 0, result.stderr
    assert "refused" in result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_sequence_torch_and_triton(backend):
    for batch, seq_len in ((0, 4), (3, 0)):
        case = make_case(batch, seq_len, 2, 8, 3, max_length=5)
        out, mask = run_public(case, backend=backend)
        assert out.shape == (batch, 2 + seq_len, 8)
        assert mask.shape == (batch, 2 + seq_len)
        grads = torch.autograd.grad(out.sum(), case.params)
        assert grads[0].shape == case.prompt.shape
        assert torch.equal(grads[0], torch.full_like(case.prompt, float(batch)))
        if seq_len == 0:
            assert torch.equal(grads[1], torch.zeros_like(case.lora_a))


def test_torch_backend_takes_non_contiguous_views():
    wide_ids = torch.randint(0, 50, (3, 22), dtype=torch.int32)
    ids, weight = wide_ids[:, ::2], torch.randn(40, 50).t()
    case = make_case(3, 11, 4, 40, 6)
    out, mask = prompt_ops.dept_embed(ids, weight, case.prompt, case.lora_a, case.lora_b, scale=0.5, backend="torch")
    ref_out, ref_mask = reference.dept_embed(ids, weight, case.prompt, case.lora_a, case.lora_b, 0.5)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    assert torch.equal(mask, ref_mask)


# ----------------------------------------------------------------------------------------------------------------
# positions=
# ----------------------------------------------------------------------------------------------------------------


def left_padded(lengths: list[int], seq_len: int) -> torch.Tensor:
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.int64)
    for row, length in enumerate(lengths):
        mask[row, seq_len - length :] = 1
    return mask


def norm_relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).detach().norm() / want.detach().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "mask, positions",
    [
        pytest.param(left_padded([6, 3, 1, 0], 6), "tokens", id="left"),
        pytest.param(torch.tensor([[1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 0, 1]] * 2), "tokens", id="mixed"),
        pytest.param(left_padded([6, 3, 1, 0], 6), "absolute", id="absolute"),
        pytest.param(None, torch.tensor([-2, 0, 3, 9]), id="explicit"),
    ],
)
def test_torch_backend_positions_match_reference(mask, positions, dtype):
    case = make_case(4, 6, 3, 17, 5, max_length=8, dtype=dtype)
    case.attention_mask = mask
    out, out_mask = prompt_ops.dept_embed(
        case.input_ids, case.weight, case.prompt, case.lora_a, case.lora_b, scale=case.scale, attention_mask=mask,
        backend="torch", positions=positions,
    )  # fmt: skip
    weight = case.weight.float() if dtype != torch.float32 else case.weight
    params = [p.detach().clone().requires_grad_(True) for p in case.params]
    ref_out, ref_mask = reference.dept_embed(case.input_ids, weight, *params, case.scale, mask, positions)
    assert_close(out, ref_out, dtype, dot=True)
    assert torch.equal(out_mask, ref_mask)
    grad = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, case.params, grad)
    ref_grads = torch.autograd.grad(ref_out, params, grad.float())
    assert_grads_close(grads, ref_grads, ("prompt", "lora_a", "lora_b"), **tolerances(dtype, dot=True))


def test_gradcheck_fp64_with_row_starts():
    case = make_case(3, 5, 2, 6, 3, max_length=6, dtype=torch.float64, param_dtype=torch.float64)
    starts = torch.tensor([-2, 0, 4])

    def fn(*params):
        return prompt_ops.dept_embed(
            case.input_ids, case.weight, *params, scale=case.scale, backend="torch", positions=starts
        )[0]

    assert torch.autograd.gradcheck(fn, tuple(case.params))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nonpositive", [True, False])
def test_opcheck_with_row_starts(backend, nonpositive, device):
    case = make_case(3, 6, 3, 20, 5, max_length=8, device=device)
    starts = torch.tensor([-2, 0, -5] if nonpositive else [-2, 3, 7], device=device)
    args = (
        case.input_ids, case.weight, case.prompt, case.lora_a, case.lora_b,
        case.attention_mask, case.scale, True, backend, starts, nonpositive,
    )  # fmt: skip
    torch.library.opcheck(ops.dept_embed_fwd_op, args)
    grad = torch.randn(3, 9, 20, device=device)
    lora = [t.detach() for t in (case.lora_a, case.lora_b)]
    torch.library.opcheck(ops.dept_embed_bwd_op, (grad, *lora, 3, case.scale, backend, starts, nonpositive))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("positions", ["tokens", "explicit"])
def test_compile_fullgraph_with_row_starts(backend, positions, device):
    case = make_case(3, 7, 3, 20, 5, max_length=9, device=device)
    mask = left_padded([7, 4, 2], 7).to(device)
    starts = torch.tensor([-1, 2, 5], device=device) if positions == "explicit" else "tokens"

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(input_ids, weight, attention_mask, *params):
        out, _ = prompt_ops.dept_embed(
            input_ids, weight, *params, scale=case.scale, attention_mask=attention_mask, backend=backend,
            positions=starts,
        )  # fmt: skip
        return (out * out).sum()

    loss = step(case.input_ids, case.weight, mask, *case.params)
    grads = torch.autograd.grad(loss, case.params)
    params = [p.detach().clone().requires_grad_(True) for p in case.params]
    ref_out, _ = reference.dept_embed(case.input_ids, case.weight, *params, case.scale, mask, starts)
    ref_loss = (ref_out * ref_out).sum()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    assert_grads_close(grads, torch.autograd.grad(ref_loss, params))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_alone_equals_the_row_in_a_left_padded_batch(backend):
    """Batch invariance: each sequence alone and left-padded in a batch with longer and shorter mates gives the
    same outputs at its real positions, and the batch's gradients are the sum of the rows' own."""
    lengths, seq_len, num_prompt = [3, 7, 5, 1], 7, 2
    case = make_case(4, seq_len, num_prompt, 24, 6, max_length=7)
    mask = left_padded(lengths, seq_len)
    ids = case.input_ids

    def run(input_ids, attention_mask):
        return prompt_ops.dept_embed(
            input_ids, case.weight, *case.params, scale=case.scale, attention_mask=attention_mask, backend=backend
        )[0]

    batch_out = run(ids, mask)
    grad = torch.randn(batch_out.shape)
    batch_grads = torch.autograd.grad(batch_out, case.params, grad)
    summed = [torch.zeros_like(p) for p in case.params]
    for row, length in enumerate(lengths):
        real = slice(seq_len - length, seq_len)
        alone = run(ids[row : row + 1, real], None)[0]  # (m + length, d)
        in_batch = torch.cat([batch_out[row, :num_prompt], batch_out[row, num_prompt:][real]])
        assert norm_relative(in_batch, alone) <= 1e-5
        row_grad = torch.cat([grad[row, :num_prompt], grad[row, num_prompt:][real]])[None]
        for total, part in zip(summed, torch.autograd.grad(alone[None], case.params, row_grad), strict=True):
            total += part
    for name, got, want in zip(("prompt", "lora_a", "lora_b"), batch_grads, summed, strict=True):
        assert norm_relative(got, want) <= 1e-5, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "positions, error, pattern",
    [
        ("relative", ValueError, r"positions must be one of \('tokens', 'absolute'\), got 'relative'"),
        (3, TypeError, r"positions must be one of .* or a \(B,\) integer tensor of row starts, got int"),
        (None, TypeError, r"positions must be one of .*got NoneType"),
        (torch.zeros(2), TypeError, r"positions must be a \(B,\) int64 or int32 tensor of row starts, got torch.float"),
        (torch.zeros(2, dtype=torch.bool), TypeError, r"positions must be a \(B,\) int64 or int32 tensor"),
        (torch.zeros(3, dtype=torch.long), ValueError, r"positions must have shape \(B,\) = \(2,\).*got \(3,\)"),
        (torch.zeros(2, 1, dtype=torch.long), ValueError, r"positions must have shape \(B,\) = \(2,\)"),
        (torch.zeros(2, dtype=torch.long, device="meta"), ValueError, r"positions must be on input_ids' device"),
    ],
)
def test_bad_positions_are_refused_by_name(backend, positions, error, pattern):
    case = make_case(2, 4, 2, 8, 2)
    with pytest.raises(error, match=pattern):
        prompt_ops.dept_embed(
            case.input_ids, case.weight, case.prompt, case.lora_a, case.lora_b, scale=1.0, backend=backend,
            positions=positions,
        )  # fmt: skip


def test_length_limit_holds_for_conventions_not_for_explicit_starts():
    case = make_case(2, 6, 2, 8, 2, max_length=4)
    for positions in ("tokens", "absolute"):
        with pytest.raises(ValueError, match=r"L = 6 tokens but lora_a has L_max = 4"):
            prompt_ops.dept_embed(
                case.input_ids, case.weight, case.prompt, case.lora_a, case.lora_b, scale=1.0, positions=positions
            )
    starts = torch.tensor([0, -3])
    out, _ = prompt_ops.dept_embed(
        case.input_ids, case.weight, case.prompt, case.lora_a, case.lora_b, scale=1.0, positions=starts
    )
    offset = case.lora_a @ case.lora_b
    torch.testing.assert_close(out[0, 2 + 4 :], case.weight[case.input_ids[0, 4:]])  # past L_max: no offset
    torch.testing.assert_close(out[1, 2 + 3 :], case.weight[case.input_ids[1, 3:]] + offset[:3])
