"""LAMP through the Triton kernels against ops/reference.py: the pooled prompt, the model input, every gradient."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prompt_ops
from prompt_ops.kernels import lamp as kernels
from prompt_ops.kernels.dept_embed import PromptFactors
from prompt_ops.ops import reference
from tests.helpers import assert_close, assert_deterministic, assert_grads_close, make_lamp_case

# (B, L, l, d, r, pool): pool 1 (no pooling), 2, 3 (odd), l = pool; odd d; ranks 1, 5, 8, 19.
RAGGED = [(1, 1, 2, 3, 1, 2), (3, 7, 9, 37, 5, 3), (2, 13, 100, 200, 8, 2), (1, 5, 16, 65, 19, 1), (2, 4, 6, 16, 5, 6)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def check(case, dtype, out, mask, grads, grad):
    ref_out, ref_mask, ref_params = case.reference()
    assert out.dtype == case.weight.dtype and out.shape == ref_out.shape
    assert_close(out, ref_out, dtype, dot=True)
    assert torch.equal(mask, ref_mask) and mask.dtype == ref_mask.dtype
    ref_grads = torch.autograd.grad(ref_out, ref_params, grad.float())
    assert len(grads) == len(ref_grads) == 3
    assert all(got.dtype == torch.float32 for got in grads)
    assert_grads_close(grads, ref_grads, ("u", "q", "v"))


@pytest.mark.parametrize("shape", RAGGED, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lamp_embed_matches_reference(shape, dtype, device):
    case = make_lamp_case(*shape, dtype=dtype, device=device)
    out, mask = case.run("triton")
    grad = torch.randn(out.shape, device=device).to(dtype)
    check(case, dtype, out, mask, torch.autograd.grad(out, case.params, grad), grad)


@pytest.mark.parametrize("shape", RAGGED, ids=lambda s: "x".join(map(str, s)))
def test_lamp_prompt_matches_reference(shape, device):
    _, _, rows, hidden, rank, pool = shape
    case = make_lamp_case(1, 1, rows, hidden, rank, pool, device=device)
    prompt = prompt_ops.lamp_prompt(*case.params, pool=pool, backend="triton")
    params = [p.detach().clone().requires_grad_(True) for p in case.params]
    expected = reference.lamp_prompt(*params, pool)
    assert prompt.shape == (rows // pool, hidden) and prompt.dtype == torch.float32
    assert_close(prompt, expected, torch.float32, dot=True)
    grad = torch.randn(prompt.shape, device=device)
    got = torch.autograd.grad(prompt, case.params, grad)
    assert_grads_close(got, torch.autograd.grad(expected, params, grad), ("u", "q", "v"))


def test_gpu_tiles_on_ragged_shapes(device):
    """The shipped GPU forward tile over a factored prompt, several programs per row and column."""
    from prompt_ops.kernels import dept_embed

    case = make_lamp_case(3, 19, 40, 130, 8, 2, device=device)
    factors = PromptFactors(*[p.detach() for p in case.params], case.pool)
    out, mask = dept_embed.dept_embed_fwd(
        case.input_ids, case.weight, factors, None, None, case.attention_mask, 0.0, dept_embed.GPU_FWD_CONFIG
    )
    grad = torch.randn(out.shape, device=device)
    grad_prompt, _, _ = dept_embed.dept_embed_bwd(grad, None, None, 20, 0.0, dept_embed.GPU_BWD_CONFIG)
    check(case, torch.float32, out, mask, kernels.lamp_factor_grads(grad_prompt, factors), grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_realistic_shape(dtype, device):
    """B=4, L=128, d=768, l=100, r=8, pool=2 (the module defaults)."""
    case = make_lamp_case(4, 128, 100, 768, 8, 2, vocab=1000, dtype=dtype, device=device)
    out, mask = case.run("triton")
    grad = torch.randn(out.shape, device=device).to(dtype)
    check(case, dtype, out, mask, torch.autograd.grad(out, case.params, grad), grad)


def test_empty_batch_and_empty_sequence(device):
    for batch, seq_len in ((0, 5), (2, 0)):
        case = make_lamp_case(batch, seq_len, 6, 8, 3, 2, device=device)
        out, mask = case.run("triton")
        ref_out, ref_mask, ref_params = case.reference()
        assert out.shape == ref_out.shape and torch.equal(mask, ref_mask)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        grads = torch.autograd.grad(out.sum(), case.params)
        assert_grads_close(grads, torch.autograd.grad(ref_out.sum(), ref_params), ("u", "q", "v"), rtol=1e-5, atol=1e-5)


def test_deterministic(device):
    case = make_lamp_case(3, 11, 20, 80, 8, 4, device=device)
    grad = torch.randn(3, 16, 80, device=device)
    assert_deterministic(lambda: case.run("triton"), case.params, grad)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 3),
    seq_len=st.integers(0, 12),
    windows=st.integers(1, 8),
    pool=st.integers(1, 4),
    hidden=st.integers(1, 70),
    rank=st.integers(1, 20),
    dtype=st.sampled_from(DTYPES),
)
def test_property_random_shapes(batch, seq_len, windows, pool, hidden, rank, dtype, device):
    case = make_lamp_case(batch, seq_len, windows * pool, hidden, rank, pool, dtype=dtype, device=device)
    out, mask = case.run("triton")
    grad = torch.randn(out.shape, device=device).to(dtype)
    check(case, dtype, out, mask, torch.autograd.grad(out, case.params, grad), grad)
