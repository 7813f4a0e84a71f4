"""ADePT Triton kernels against ops/reference.py: outputs, every gradient, dropout semantics."""

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prompt_ops.kernels import adept_embed as kernels
from prompt_ops.ops.adept_embed import split_ffn_grads
from tests.helpers import assert_close, assert_deterministic, assert_grads_close, make_adept_case

# (B, L, m, d, r): batch 1, odd d and L, ranks 1, 5, 19 (the paper's) and 30, a 64-wide rank.
RAGGED = [(1, 1, 1, 3, 1), (3, 7, 5, 37, 19), (2, 13, 3, 200, 5), (1, 33, 17, 65, 30), (2, 5, 2, 16, 64)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NAMES = ("prompt", "w_down", "b_down", "w_up", "b_up")


def check(case, dtype, out, mask, grads, grad, dropout_scale=None):
    ref_out, ref_mask, ref_params = case.reference(dropout_scale)
    assert out.dtype == case.weight.dtype and out.shape == ref_out.shape
    assert_close(out, ref_out, dtype, dot=True)
    assert torch.equal(mask, ref_mask) and mask.dtype == ref_mask.dtype
    ref_grads = torch.autograd.grad(ref_out, ref_params, grad.float())
    assert len(grads) == len(ref_grads) == 5
    assert all(got.dtype == torch.float32 for got in grads)
    assert_grads_close(grads, ref_grads, NAMES)


@pytest.mark.parametrize("shape", RAGGED, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_public_op_matches_reference(shape, dtype, device):
    case = make_adept_case(*shape, dtype=dtype, device=device)
    out, mask = case.run("triton")
    grad = torch.randn(out.shape, device=device).to(dtype)
    check(case, dtype, out, mask, torch.autograd.grad(out, case.params, grad), grad)


@pytest.mark.parametrize("shape", RAGGED[1:], ids=lambda s: "x".join(map(str, s)))
def test_gpu_tiles_on_ragged_shapes(shape, device):
    """The shipped GPU tiles and several token splits in the weight-gradient launch."""
    case = make_adept_case(*shape, device=device)
    config = dataclasses.replace(kernels.GPU_CONFIG, splits=3)
    params = [p.detach() for p in case.params]
    out, mask = kernels.adept_embed_fwd(case.input_ids, case.weight, *params, case.attention_mask, 0.0, 0, config)
    grad = torch.randn(out.shape, device=device)
    grad_prompt, flat = kernels.adept_embed_bwd(
        grad, case.input_ids, case.weight, *params[1:4], shape[2], 0.0, 0, config
    )
    check(case, torch.float32, out, mask, (grad_prompt, *split_ffn_grads(flat, shape[3], shape[4])), grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_realistic_shape(dtype, device):
    """B=4, L=128, d=768, r=19 (the paper's rank), m=60."""
    case = make_adept_case(4, 128, 60, 768, 19, vocab=1000, dtype=dtype, device=device)
    out, mask = case.run("triton")
    grad = torch.randn(out.shape, device=device).to(dtype)
    check(case, dtype, out, mask, torch.autograd.grad(out, case.params, grad), grad)


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_dropout_uses_one_mask_in_forward_and_backward(dropout_p, device):
    """The reference given the kernels' own mask reproduces the forward output and every gradient."""
    case = make_adept_case(3, 21, 4, 48, 19, device=device)
    out, mask = case.run("triton", dropout_p=dropout_p, training=True, seed=1234)
    scale = kernels.dropout_multipliers(3 * 21, 19, dropout_p, 1234, device)
    kept_value = torch.tensor(1.0 / (1.0 - dropout_p), dtype=torch.float32).item()
    assert set(scale.unique().tolist()) == {0.0, kept_value}
    grad = torch.randn(out.shape, device=device)
    check(case, torch.float32, out, mask, torch.autograd.grad(out, case.params, grad), grad, dropout_scale=scale)


def test_dropout_zero_and_eval_equal_the_reference(device):
    case = make_adept_case(2, 9, 3, 40, 5, device=device)
    ref_out, _, _ = case.reference()
    for kwargs in ({"dropout_p": 0.0, "training": True}, {"dropout_p": 0.3, "training": False}):
        out, _ = case.run("triton", **kwargs)
        assert_close(out, ref_out, torch.float32, dot=True)


def test_same_seed_same_output_new_seed_new_mask(device):
    case = make_adept_case(2, 16, 3, 32, 19, device=device)
    first, _ = case.run("triton", dropout_p=0.2, training=True, seed=7)
    again, _ = case.run("triton", dropout_p=0.2, training=True, seed=7)
    other, _ = case.run("triton", dropout_p=0.2, training=True, seed=8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_kept_fraction_is_one_minus_p(dropout_p, device):
    """Over n = 64k draws the kept fraction is within 5 standard deviations of 1 - p."""
    num_tokens, rank = 4096, 16
    scale = kernels.dropout_multipliers(num_tokens, rank, dropout_p, 99, device)
    n = num_tokens * rank
    kept = (scale > 0).float().mean().item()
    assert abs(kept - (1 - dropout_p)) < 5 * (dropout_p * (1 - dropout_p) / n) ** 0.5
    assert torch.all(scale[scale > 0] == 1.0 / (1.0 - dropout_p))


def test_empty_batch_and_empty_sequence(device):
    for batch, seq_len in ((0, 5), (2, 0)):
        case = make_adept_case(batch, seq_len, 3, 8, 4, device=device)
        out, mask = case.run("triton")
        ref_out, ref_mask, ref_params = case.reference()
        assert out.shape == ref_out.shape and torch.equal(out, ref_out) and torch.equal(mask, ref_mask)
        grads = torch.autograd.grad(out.sum(), case.params)
        for got, want in zip(grads, torch.autograd.grad(ref_out.sum(), ref_params), strict=True):
            assert torch.equal(got, want)


def test_deterministic(device):
    case = make_adept_case(3, 17, 5, 80, 19, device=device)
    grad = torch.randn(3, 22, 80, device=device)
    assert_deterministic(lambda: case.run("triton", dropout_p=0.1, training=True, seed=5), case.params, grad)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 3),
    seq_len=st.integers(1, 12),
    num_prompt=st.integers(1, 6),
    hidden=st.integers(1, 70),
    rank=st.integers(1, 40),
    dtype=st.sampled_from(DTYPES),
    mask=st.sampled_from([None, "int64", "bool"]),
)
def test_property_random_shapes(batch, seq_len, num_prompt, hidden, rank, dtype, mask, device):
    case = make_adept_case(batch, seq_len, num_prompt, hidden, rank, dtype=dtype, mask=mask, device=device)
    out, out_mask = case.run("triton")
    grad = torch.randn(out.shape, device=device).to(dtype)
    check(case, dtype, out, out_mask, torch.autograd.grad(out, case.params, grad), grad)


def test_int64_offsets(device):
    """A table with more than 2**31 elements (allocated lazily): row V-1 needs 64-bit address arithmetic."""
    vocab, hidden, rank = 3_000_000, 768, 19
    weight = torch.empty(vocab, hidden, dtype=torch.bfloat16, device=device)
    ids = torch.tensor([[vocab - 1, 5, vocab - 2]], device=device)
    weight[ids[0]] = torch.randn(3, hidden, device=device).to(torch.bfloat16)
    case = make_adept_case(1, 3, 2, hidden, rank, device=device, mask=None)
    out, _ = kernels.adept_embed_fwd(ids, weight, *[p.detach() for p in case.params], None, 0.0, 0)
    small_ids = torch.arange(3, device=device).view(1, 3)  # the same rows, gathered from a 3-row table
    case.input_ids, case.weight = small_ids, weight[ids[0]]
    ref_out, _, _ = case.reference()
    assert_close(out, ref_out, torch.bfloat16, dot=True)


def test_non_contiguous_views(device):
    case = make_adept_case(3, 11, 4, 40, 6, device=device)
    case.input_ids = torch.randint(0, 50, (3, 22), dtype=torch.int32, device=device)[:, ::2]
    case.weight = torch.randn(40, 50, device=device).t()
    case.w_down = torch.randn(6, 40, device=device).t().requires_grad_(True)
    out, mask = case.run("triton")
    grad = torch.randn(out.shape, device=device)
    check(case, torch.float32, out, mask, torch.autograd.grad(out, case.params, grad), grad)
