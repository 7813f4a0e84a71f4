"""Triton kernels of prompt_embed / dept_embed against ops/reference.py: outputs and every gradient."""

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prompt_ops
from prompt_ops.kernels import dept_embed as kernels
from tests.helpers import (
    LOW_PRECISION,
    assert_close,
    assert_deterministic,
    assert_grads_close,
    make_case,
    run_public,
)

# (B, L, m, d, r): batch 1, odd d and L, ranks that are not powers of two, rank above one 16-wide chunk.
RAGGED = [(1, 1, 1, 3, 1), (3, 7, 5, 37, 5), (2, 13, 3, 200, 19), (1, 33, 17, 65, 30), (4, 5, 2, 16, 16)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def check_case(case, device_dtype, out, mask, grads, grad):
    ref_out, ref_mask, ref_params = case.reference()
    assert out.dtype == case.weight.dtype
    assert out.shape == ref_out.shape
    assert_close(out, ref_out, device_dtype, dot=case.lora_a is not None)
    assert torch.equal(mask, ref_mask) and mask.dtype == ref_mask.dtype
    ref_grads = torch.autograd.grad(ref_out, ref_params, grad.float())
    assert len(grads) == len(ref_grads) == len(case.params)
    assert all(got.dtype == torch.float32 for got in grads)
    assert_grads_close(grads, ref_grads, ("prompt", "lora_a", "lora_b")[: len(grads)])


@pytest.mark.parametrize("shape", RAGGED, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_offset", [True, False], ids=["dept", "prompt"])
def test_public_op_matches_reference(shape, dtype, with_offset, device):
    batch, seq_len, num_prompt, hidden, rank = shape
    case = make_case(batch, seq_len, num_prompt, hidden, rank if with_offset else 0, dtype=dtype, device=device)
    out, mask = run_public(case, backend="triton")
    grad = torch.randn(out.shape, device=device).to(dtype)
    grads = torch.autograd.grad(out, case.params, grad)
    check_case(case, dtype, out, mask, grads, grad)


@pytest.mark.parametrize("shape", RAGGED[1:], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_offset", [True, False], ids=["dept", "prompt"])
def test_gpu_tiles_on_ragged_shapes(shape, with_offset, device):
    """The shipped GPU tiles and batch grouping, so that every mask edge is crossed by many programs."""
    batch, seq_len, num_prompt, hidden, rank = shape
    case = make_case(batch, seq_len, num_prompt, hidden, rank if with_offset else 0, device=device)
    forward_config = dataclasses.replace(kernels.GPU_FWD_CONFIG, batches_per_program=2)
    params = [p.detach() for p in case.params]
    lora_a, lora_b = (params[1], params[2]) if with_offset else (None, None)
    out, mask = kernels.dept_embed_fwd(
        case.input_ids, case.weight, params[0], lora_a, lora_b, case.attention_mask, case.scale, forward_config
    )
    grad = torch.randn(out.shape, device=device)
    grads = kernels.dept_embed_bwd(grad, lora_a, lora_b, num_prompt, case.scale, kernels.GPU_BWD_CONFIG)
    check_case(case, torch.float32, out, mask, [g for g in grads if g is not None], grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_realistic_shape(dtype, device):
    """B=4, L=128, d=768, r=30, m=60 with the interpreter's big tiles."""
    case = make_case(4, 128, 60, 768, 30, vocab=1000, max_length=256, dtype=dtype, device=device)
    out, mask = run_public(case, backend="triton")
    grad = torch.randn(out.shape, device=device).to(dtype)
    grads = torch.autograd.grad(out, case.params, grad)
    check_case(case, dtype, out, mask, grads, grad)


@pytest.mark.parametrize("mask_dtype", ["bool", "int32", "float32", None])
def test_mask_dtypes(mask_dtype, device):
    case = make_case(2, 9, 3, 24, 4, mask=mask_dtype, device=device)
    out, mask = run_public(case, backend="triton")
    assert mask.dtype == (getattr(torch, mask_dtype) if mask_dtype else torch.int64)
    _, ref_mask, _ = case.reference()
    assert torch.equal(mask, ref_mask)


def test_int32_ids_and_non_contiguous_views(device):
    case = make_case(3, 11, 4, 40, 6, ids_dtype=torch.int32, device=device)
    wide_ids = torch.randint(0, 50, (3, 22), dtype=torch.int32, device=device)
    ids = wide_ids[:, ::2]  # strided view
    weight = torch.randn(40, 50, device=device).t()  # (V, d) view with strides (1, 50)
    assert not ids.is_contiguous() and not weight.is_contiguous()
    out, mask = prompt_ops.dept_embed(
        ids, weight, case.prompt, case.lora_a, case.lora_b, scale=case.scale, backend="triton"
    )
    case.input_ids, case.weight, case.attention_mask = ids, weight, None
    ref_out, ref_mask, _ = case.reference()
    assert_close(out, ref_out, torch.float32, dot=True)
    assert torch.equal(mask, ref_mask)


def test_empty_batch_and_empty_sequence(device):
    for batch, seq_len in ((0, 5), (2, 0), (0, 0)):
        case = make_case(batch, seq_len, 3, 8, 2, max_length=6, device=device)
        out, mask = run_public(case, backend="triton")
        assert out.shape == (batch, 3 + seq_len, 8) and mask.shape == (batch, 3 + seq_len)
        ref_out, ref_mask, ref_params = case.reference()
        assert torch.equal(out, ref_out) and torch.equal(mask, ref_mask)
        grads = torch.autograd.grad(out.sum(), case.params)
        ref_grads = torch.autograd.grad(ref_out.sum(), ref_params)
        for got, want in zip(grads, ref_grads, strict=True):
            assert torch.equal(got, want)


def test_expanded_output_gradient(device):
    """``out.sum().backward()`` hands the backward a stride-0 gradient."""
    case = make_case(3, 6, 2, 20, 3, device=device)
    out, _ = run_public(case, backend="triton")
    grads = torch.autograd.grad(out.sum(), case.params)
    ref_out, _, ref_params = case.reference()
    assert_grads_close(grads, torch.autograd.grad(ref_out.sum(), ref_params), ("prompt", "lora_a", "lora_b"))


def test_deterministic(device):
    case = make_case(4, 31, 7, 96, 19, device=device)
    grad = torch.randn(4, 38, 96, device=device)
    assert_deterministic(lambda: run_public(case, backend="triton"), case.params, grad)


def test_unchecked_out_of_range_ids_read_nothing(device):
    """With the host check off, bad ids give zero rows (plus the offset), never an out-of-bounds read."""
    case = make_case(1, 4, 2, 16, 3, mask=None, device=device)
    case.input_ids[0, 1], case.input_ids[0, 3] = -7, 50
    out, _ = prompt_ops.dept_embed(
        case.input_ids, case.weight, case.prompt, case.lora_a, case.lora_b,
        scale=case.scale, backend="triton", check_ids=False,
    )  # fmt: skip
    offset = case.scale * (case.lora_a[:4] @ case.lora_b)
    torch.testing.assert_close(out[0, 2 + 1], offset[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0, 2 + 3], offset[3], rtol=1e-5, atol=1e-5)


def test_int64_offsets(device):
    """A table with more than 2**31 elements (allocated lazily): row V-1 needs 64-bit address arithmetic."""
    vocab, hidden = 3_000_000, 768
    weight = torch.empty(vocab, hidden, dtype=torch.bfloat16, device=device)
    assert weight.numel() > 2**31
    ids = torch.tensor([[vocab - 1, 5, vocab - 2]], device=device)
    weight[ids[0]] = torch.randn(3, hidden, device=device).to(torch.bfloat16)
    prompt = torch.randn(2, hidden, device=device)
    out, _ = prompt_ops.prompt_embed(ids, weight, prompt, backend="triton")
    assert torch.equal(out[0, 2:], weight[ids[0]])


def test_kernels_are_interpreted_when_interpreting():
    from tests.conftest import INTERPRET

    if not INTERPRET:
        pytest.skip("compiled run")
    from triton.runtime.interpreter import InterpretedFunction

    assert isinstance(kernels._dept_embed_fwd_kernel, InterpretedFunction)
    assert isinstance(kernels._dept_embed_bwd_kernel, InterpretedFunction)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 3),
    seq_len=st.integers(1, 20),
    num_prompt=st.integers(1, 9),
    hidden=st.integers(1, 70),
    rank=st.integers(0, 20),
    dtype=st.sampled_from(DTYPES),
    mask=st.sampled_from([None, "int64", "bool"]),
)
def test_property_random_shapes(batch, seq_len, num_prompt, hidden, rank, dtype, mask, device):
    case = make_case(batch, seq_len, num_prompt, hidden, rank, dtype=dtype, mask=mask, device=device)
    out, out_mask = run_public(case, backend="triton")
    grad = torch.randn(out.shape, device=device).to(dtype)
    grads = torch.autograd.grad(out, case.params, grad)
    check_case(case, dtype, out, out_mask, grads, grad)
    assert dtype in LOW_PRECISION or out.dtype == torch.float32
