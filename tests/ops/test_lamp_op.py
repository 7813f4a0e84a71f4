"""lamp_prompt / lamp_embed custom ops and public entries: torch backend, gradcheck, opcheck, compile, bad input."""

import pytest
import torch

import prompt_ops
from prompt_ops.ops import lamp as ops
from prompt_ops.ops import reference
from tests.helpers import assert_close, assert_grads_close, make_lamp_case

BACKENDS = ["torch", "triton"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_torch_backend_matches_reference(dtype):
    case = make_lamp_case(3, 9, 12, 33, 5, 3, dtype=dtype)
    out, mask = case.run("torch")
    ref_out, ref_mask, ref_params = case.reference()
    assert_close(out, ref_out, dtype, dot=True)
    assert torch.equal(mask, ref_mask)
    grad = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, case.params, grad)
    assert_grads_close(grads, torch.autograd.grad(ref_out, ref_params, grad.float()))


def test_gradcheck_fp64_torch_backend():
    case = make_lamp_case(2, 3, 6, 5, 3, 2, dtype=torch.float64, param_dtype=torch.float64)

    def embed(*params):
        return prompt_ops.lamp_embed(case.input_ids, case.weight, *params, pool=2, backend="torch")[0]

    def prompt(*params):
        return prompt_ops.lamp_prompt(*params, pool=3, backend="torch")

    assert torch.autograd.gradcheck(embed, tuple(case.params))
    assert torch.autograd.gradcheck(prompt, tuple(case.params))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    dtypes = [torch.float32] + ([torch.float64] if backend == "torch" else [])
    for dtype in dtypes:
        case = make_lamp_case(2, 5, 8, 20, 3, 2, dtype=dtype, param_dtype=dtype)
        torch.library.opcheck(ops.lamp_prompt_fwd_op, (*case.params, 2, backend))
        args = (case.input_ids, case.weight, *case.params, case.attention_mask, 2, True, backend)
        torch.library.opcheck(ops.lamp_embed_fwd_op, args)
        frozen = [p.detach() for p in case.params]
        torch.library.opcheck(ops.lamp_prompt_bwd_op, (torch.randn(4, 20, dtype=dtype), *frozen, 2, backend))
        torch.library.opcheck(ops.lamp_embed_bwd_op, (torch.randn(2, 9, 20, dtype=dtype), *frozen, 2, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    case = make_lamp_case(2, 7, 8, 20, 3, 2)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(input_ids, weight, attention_mask, *params):
        out, mask = prompt_ops.lamp_embed(
            input_ids, weight, *params, pool=2, attention_mask=attention_mask, backend=backend
        )
        prompt = prompt_ops.lamp_prompt(*params, pool=4, backend=backend)
        return (out * out).sum() + prompt.sum(), mask

    loss, mask = step(case.input_ids, case.weight, case.attention_mask, *case.params)
    grads = torch.autograd.grad(loss, case.params)
    ref_out, ref_mask, ref_params = case.reference()
    ref_loss = (ref_out * ref_out).sum() + reference.lamp_prompt(*ref_params, 4).sum()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    assert torch.equal(mask, ref_mask)
    assert_grads_close(grads, torch.autograd.grad(ref_loss, ref_params))


FACTOR_ERRORS = [
    ({"pool": 0}, ValueError, r"pool must be an int >= 1, got 0"),
    ({"pool": -2}, ValueError, r"pool must be an int >= 1, got -2"),
    ({"pool": 2.0}, TypeError, r"pool must be an int"),
    ({"pool": 4}, ValueError, r"pool = 4 must divide the prompt length l = u.shape\[0\] = 6"),
    ({"q": torch.randn(4)}, ValueError, r"q must have shape \(r,\) = \(3,\)"),
    ({"v": torch.randn(4, 8)}, ValueError, r"v must have shape \(r, d\) with r = 3"),
    ({"u": torch.randn(6)}, ValueError, r"u must have shape \(l, r\) \(2-D\)"),
    ({"u": torch.zeros(6, 3, dtype=torch.int64)}, TypeError, r"u must be"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("overrides, error, pattern", FACTOR_ERRORS)
def test_bad_factors(backend, overrides, error, pattern):
    case = make_lamp_case(2, 4, 6, 8, 3, 2, vocab=20)
    args = {"u": case.u, "q": case.q, "v": case.v, "pool": 2, **overrides}
    factors = [args.pop(name) for name in ("u", "q", "v")]
    with pytest.raises(error, match=pattern):
        prompt_ops.lamp_embed(case.input_ids, case.weight, *factors, backend=backend, **args)
    with pytest.raises(error, match=pattern):
        prompt_ops.lamp_prompt(*factors, backend=backend, **args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_factor_width_must_match_the_table(backend):
    case = make_lamp_case(2, 4, 6, 8, 3, 2)
    with pytest.raises(ValueError, match=r"v must have shape \(r, d\) with d = weight.shape\[1\] = 8"):
        prompt_ops.lamp_embed(case.input_ids, case.weight, case.u, case.q, torch.randn(3, 9), pool=2, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_input_checks_apply(backend):
    case = make_lamp_case(2, 4, 6, 8, 3, 2, vocab=20)
    case.input_ids[1, 1] = -1
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 20\)"):
        case.run(backend)


def test_triton_refuses_oversized_factor_tiles():
    case = make_lamp_case(1, 2, 600, 8, 8, 2)  # 300 pooled rows
    with pytest.raises(ValueError, match=r"use backend='torch'"):
        case.run("triton")
    out, _ = case.run("torch")
    assert out.shape == (1, 302, 8)
