"""adept_embed custom ops and public entry: torch backend, gradcheck, opcheck, compile, dropout, bad input."""

import pytest
import torch

import prompt_ops
from prompt_ops.ops import adept_embed as ops
from tests.helpers import assert_close, assert_grads_close, make_adept_case

BACKENDS = ["torch", "triton"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_torch_backend_matches_reference(dtype):
    case = make_adept_case(3, 9, 4, 33, 19, dtype=dtype)
    out, mask = case.run("torch")
    ref_out, ref_mask, ref_params = case.reference()
    assert out.dtype == dtype
    assert_close(out, ref_out, dtype, dot=True)
    assert torch.equal(mask, ref_mask)
    grad = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, case.params, grad)
    assert_grads_close(grads, torch.autograd.grad(ref_out, ref_params, grad.float()))


def test_torch_backend_dropout_uses_one_mask():
    case = make_adept_case(2, 11, 3, 24, 7)
    out, _ = case.run("torch", dropout_p=0.25, training=True, seed=42)
    scale = ops.dropout_multipliers_torch(22, 7, 0.25, 42, case.weight.device, torch.float32)
    ref_out, _, ref_params = case.reference(dropout_scale=scale)
    assert_close(out, ref_out, torch.float32, dot=True)
    grad = torch.randn(out.shape)
    grads = torch.autograd.grad(out, case.params, grad)
    assert_grads_close(grads, torch.autograd.grad(ref_out, ref_params, grad))


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_gradcheck_fp64_torch_backend(dropout_p):
    case = make_adept_case(2, 4, 2, 6, 3, dtype=torch.float64, param_dtype=torch.float64)

    def fn(*params):
        return prompt_ops.adept_embed(
            case.input_ids, case.weight, *params, attention_mask=case.attention_mask,
            dropout_p=dropout_p, training=True, seed=11, backend="torch",
        )[0]  # fmt: skip

    assert torch.autograd.gradcheck(fn, tuple(case.params))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    dtypes = [torch.float32] + ([torch.float64] if backend == "torch" else [])
    for dtype in dtypes:
        case = make_adept_case(2, 6, 3, 20, 5, dtype=dtype, param_dtype=dtype)
        args = (case.input_ids, case.weight, *case.params, case.attention_mask, 0.2, 3, True, backend)
        torch.library.opcheck(ops.adept_embed_fwd_op, args)
        grad = torch.randn(2, 9, 20, dtype=dtype)
        frozen = [p.detach() for p in case.params[1:4]]
        torch.library.opcheck(ops.adept_embed_bwd_op, (grad, case.input_ids, case.weight, *frozen, 3, 0.2, 3, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    case = make_adept_case(2, 7, 3, 20, 5)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(input_ids, weight, attention_mask, *params):
        out, mask = prompt_ops.adept_embed(
            input_ids, weight, *params, attention_mask=attention_mask, dropout_p=0.1, training=True, seed=9,
            backend=backend,
        )  # fmt: skip
        return (out * out).sum(), mask

    loss, mask = step(case.input_ids, case.weight, case.attention_mask, *case.params)
    grads = torch.autograd.grad(loss, case.params)
    eager_out, eager_mask = case.run(backend, dropout_p=0.1, training=True, seed=9)
    eager_loss = (eager_out * eager_out).sum()
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert torch.equal(mask, eager_mask)
    assert_grads_close(grads, torch.autograd.grad(eager_loss, case.params), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_seed_is_drawn_from_torch_generator(backend):
    case = make_adept_case(2, 8, 2, 16, 4)
    torch.manual_seed(3)
    first, _ = case.run(backend, dropout_p=0.5, training=True)
    second, _ = case.run(backend, dropout_p=0.5, training=True)
    torch.manual_seed(3)
    replay, _ = case.run(backend, dropout_p=0.5, training=True)
    assert not torch.equal(first, second)  # a new mask each call
    assert torch.equal(first, replay)  # reproducible under torch.manual_seed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "overrides, error, pattern",
    [
        ({"dropout_p": 1.0}, ValueError, r"dropout_p must be a float in \[0, 1\), got 1.0"),
        ({"dropout_p": -0.1}, ValueError, r"dropout_p must be a float in \[0, 1\)"),
        ({"dropout_p": "0.1"}, TypeError, r"dropout_p must be a float"),
        ({"training": 1}, TypeError, r"training must be a bool"),
        ({"seed": -5}, ValueError, r"seed must be an int in \[0, 2147483647\)"),
    ],
)
def test_bad_dropout_arguments(backend, overrides, error, pattern):
    case = make_adept_case(1, 4, 2, 8, 3)
    with pytest.raises(error, match=pattern):
        case.run(backend, **overrides)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "field, shape, pattern",
    [
        ("w_down", (9, 3), r"w_down must have shape \(d, r\) with d = weight.shape\[1\] = 8"),
        ("b_down", (4,), r"b_down must have shape \(3,\) to match w_down"),
        ("w_up", (3, 9), r"w_up must have shape \(3, 8\)"),
        ("b_up", (7,), r"b_up must have shape \(8,\)"),
        ("w_up", (3,), r"w_up must have shape \(r, d\) \(2-D\)"),
    ],
)
def test_bad_ffn_shapes(backend, field, shape, pattern):
    case = make_adept_case(1, 4, 2, 8, 3)
    setattr(case, field, torch.randn(shape))
    with pytest.raises(ValueError, match=pattern):
        case.run(backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_input_checks_apply(backend):
    case = make_adept_case(2, 4, 2, 8, 3, vocab=20)
    case.input_ids[0, 0] = 20
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 20\)"):
        case.run(backend)
    case.input_ids[0, 0] = 0
    case.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="requires grad"):
        case.run(backend)


def test_triton_refuses_ranks_above_64_torch_takes_them():
    case = make_adept_case(1, 3, 2, 8, 65)
    with pytest.raises(ValueError, match=r"rank <= 64, got 65; use backend='torch'"):
        case.run("triton")
    out, _ = case.run("torch")
    assert out.shape == (1, 5, 8)
