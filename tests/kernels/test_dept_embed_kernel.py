"""Triton kernels of prompt_embed / dept_embed against ops/reference.py: outputs and every gradient."""

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prompt_ops
from prompt_ops.kernels import dept_embed as kernels
from prompt_ops.ops import reference
from prompt_ops.ops.positions import leading_pads
from tests.helpers import (
    LOW_PRECISION,
    assert_close,
    assert_deterministic,
    assert_grads_close,
    make_case,
    run_public,
    tolerances,
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
@pytest.mark.parametrize("variant", ["dept", "dept-shifted", "prompt"])
def test_gpu_tiles_on_ragged_shapes(shape, variant, device):
    """The shipped GPU tiles and batch grouping, so that every mask edge is crossed by many programs. The shifted
    variant takes the starts of the random mask (``positions="tokens"``, the reference's default); the others run
    without a mask, where every row starts at 0."""
    batch, seq_len, num_prompt, hidden, rank = shape
    with_offset, shifted = variant != "prompt", variant == "dept-shifted"
    case = make_case(batch, seq_len, num_prompt, hidden, rank if with_offset else 0, device=device)
    case.attention_mask = case.attention_mask if shifted else None
    starts = -leading_pads(case.attention_mask) if shifted else None
    shipped = kernels.GPU_SHIFTED_FWD_CONFIG if shifted else kernels.GPU_FWD_CONFIG
    forward_config = dataclasses.replace(shipped, batches_per_program=2)
    params = [p.detach() for p in case.params]
    lora_a, lora_b = (params[1], params[2]) if with_offset else (None, None)
    out, mask = kernels.dept_embed_fwd(
        case.input_ids, case.weight, params[0], lora_a, lora_b, case.attention_mask, case.scale, forward_config,
        starts=starts,
    )  # fmt: skip
    grad = torch.randn(out.shape, device=device)
    grads = kernels.dept_embed_bwd(
        grad, lora_a, lora_b, num_prompt, case.scale, kernels.GPU_BWD_CONFIG, starts=starts, offset_rows=seq_len
    )
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


# ----------------------------------------------------------------------------------------------------------------
# Row starts (positions=): column t of row b takes A[start[b] + t], none outside [0, L_max)
# ----------------------------------------------------------------------------------------------------------------


def padded_mask(lengths: list[int], seq_len: int, left: list[bool], device=None) -> torch.Tensor:
    """``(B, L)`` int64 mask: row ``b`` has ``lengths[b]`` ones, after its pads when ``left[b]``, else before."""
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.int64, device=device)
    for row, (length, on_left) in enumerate(zip(lengths, left, strict=True)):
        if on_left:
            mask[row, seq_len - length :] = 1
        else:
            mask[row, :length] = 1
    return mask


# name -> (B, L, m, d, r, L_max, lengths, left padding per row)
SHIFTED = {
    "left": (3, 7, 2, 37, 5, 9, [7, 4, 1], [True] * 3),
    "right": (3, 7, 2, 37, 5, 9, [7, 4, 1], [False] * 3),
    "mixed": (4, 9, 3, 24, 19, 9, [5, 9, 3, 6], [True, False, True, False]),
    "all-pad": (3, 6, 1, 16, 3, 6, [0, 6, 2], [True, True, True]),
    "batch1": (1, 5, 2, 10, 2, 5, [3], [True]),
}


def shifted_case(name: str, dtype=torch.float32, device=None):
    batch, seq_len, num_prompt, hidden, rank, max_length, lengths, left = SHIFTED[name]
    case = make_case(batch, seq_len, num_prompt, hidden, rank, max_length=max_length, dtype=dtype, device=device)
    case.attention_mask = padded_mask(lengths, seq_len, left, device)
    return case


def check_positions(case, positions, dtype, backend="triton"):
    """Output and every gradient of the public op with ``positions`` against the reference's."""
    out, mask = prompt_ops.dept_embed(
        case.input_ids, case.weight, case.prompt, case.lora_a, case.lora_b, scale=case.scale,
        attention_mask=case.attention_mask, backend=backend, positions=positions,
    )  # fmt: skip
    weight = case.weight.float() if dtype in LOW_PRECISION else case.weight
    params = [p.detach().clone().requires_grad_(True) for p in case.params]
    ref_out, ref_mask = reference.dept_embed(
        case.input_ids, weight, *params, case.scale, case.attention_mask, positions=positions
    )
    assert_close(out, ref_out, dtype, dot=True)
    assert torch.equal(mask, ref_mask)
    grad = torch.randn(out.shape, device=out.device).to(dtype)
    grads = torch.autograd.grad(out, case.params, grad)
    ref_grads = torch.autograd.grad(ref_out, params, grad.float())
    assert_grads_close(grads, ref_grads, ("prompt", "lora_a", "lora_b"), **tolerances(dtype, dot=True))


@pytest.mark.parametrize("name", sorted(SHIFTED))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_token_positions_match_reference(name, dtype, device):
    check_positions(shifted_case(name, dtype, device), "tokens", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_explicit_starts_match_reference(dtype, device):
    """Starts of every kind: negative, zero, positive, past L_max; L > L_max is allowed with explicit starts."""
    case = make_case(5, 8, 2, 21, 17, max_length=6, dtype=dtype, device=device)
    starts = torch.tensor([-3, 0, 2, 7, -9], device=device)
    check_positions(case, starts, dtype)
    check_positions(case, starts.to(torch.int32), dtype)


def test_gpu_tiles_with_starts(device):
    """The shipped GPU tiles, several batch rows per program with repeated and changing starts (the slice is kept
    for a repeated start and recomputed for a new one), and a backward over all L_max rows."""
    case = make_case(6, 13, 3, 200, 19, max_length=17, device=device)
    starts = torch.tensor([0, 0, -4, -4, 3, -1], device=device)
    params = [p.detach() for p in case.params]
    config = dataclasses.replace(kernels.GPU_SHIFTED_FWD_CONFIG, batches_per_program=3)
    out, mask = kernels.dept_embed_fwd(
        case.input_ids, case.weight, *params, case.attention_mask, case.scale, config, starts=starts
    )
    grad = torch.randn(out.shape, device=device)
    grads = kernels.dept_embed_bwd(grad, params[1], params[2], 3, case.scale, kernels.GPU_BWD_CONFIG, starts=starts)
    ref_params = [p.clone().requires_grad_(True) for p in params]
    ref_out, ref_mask = reference.dept_embed(
        case.input_ids, case.weight, *ref_params, case.scale, case.attention_mask, positions=starts
    )
    assert_close(out, ref_out, torch.float32, dot=True)
    assert torch.equal(mask, ref_mask)
    assert_grads_close(grads, torch.autograd.grad(ref_out, ref_params, grad), ("prompt", "lora_a", "lora_b"))


def test_nonpositive_starts_cover_only_the_first_rows(device):
    """``offset_rows=L`` (what the string conventions promise) gives the gradients of all ``L_max`` rows."""
    case = shifted_case("left", device=device)  # L = 7 < L_max = 9
    starts = -leading_pads(case.attention_mask)
    params = [p.detach() for p in case.params]
    grad = torch.randn(3, 9, 37, device=device)
    covered = kernels.dept_embed_bwd(grad, params[1], params[2], 2, case.scale, starts=starts, offset_rows=7)
    full = kernels.dept_embed_bwd(grad, params[1], params[2], 2, case.scale, starts=starts)
    assert torch.equal(full[1][7:], torch.zeros_like(full[1][7:]))
    for got, want in zip(covered, full, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_shifted_launch_counts(bounds_checked, device):
    """With starts the forward stays one launch and the backward two."""
    if bounds_checked is None:
        pytest.skip("launches are counted by the interpreter")
    case = shifted_case("mixed", device=device)
    launches = bounds_checked.launches
    out, mask = prompt_ops.dept_embed(
        case.input_ids, case.weight, case.prompt, case.lora_a, case.lora_b, scale=case.scale,
        attention_mask=case.attention_mask, backend="triton",
    )  # fmt: skip
    assert bounds_checked.launches - launches == 1
    launches = bounds_checked.launches
    torch.autograd.grad(out, case.params, torch.randn_like(out))
    assert bounds_checked.launches - launches == 2
    assert mask.shape == (4, 12)


def test_absolute_ignores_padding_bit_for_bit(device):
    """``positions="absolute"`` runs the unshifted kernel: with a left-padded mask the embeddings and gradients are
    bitwise those of the same call without a mask (the offset row is the padded column, as before)."""
    case = shifted_case("left", device=device)

    def run(mask):
        out, _ = prompt_ops.dept_embed(
            case.input_ids, case.weight, case.prompt, case.lora_a, case.lora_b, scale=case.scale,
            attention_mask=mask, backend="triton", positions="absolute",
        )  # fmt: skip
        return out, torch.autograd.grad(out, case.params, torch.ones_like(out))

    (out, grads), (plain, plain_grads) = run(case.attention_mask), run(None)
    assert torch.equal(out, plain)
    assert all(torch.equal(g, p) for g, p in zip(grads, plain_grads, strict=True))
    check_positions(case, "absolute", torch.float32)


def test_right_padding_keeps_the_official_output(device):
    """Under right padding ``"tokens"`` gives exactly the ``"absolute"`` (official) output."""
    case = shifted_case("right", device=device)
    outs = [
        prompt_ops.dept_embed(
            case.input_ids, case.weight, case.prompt, case.lora_a, case.lora_b, scale=case.scale,
            attention_mask=case.attention_mask, backend="triton", positions=positions,
        )[0]
        for positions in ("tokens", "absolute")
    ]  # fmt: skip
    assert torch.equal(outs[0], outs[1])


def test_shifted_variant_is_shipped_for_sm90():
    labels = {spec.label for spec in kernels.sm90_specs()}
    for dtype in ("fp32", "fp16", "bf16"):
        assert {f"dept_embed_fwd[dept-shifted,{dtype}]", f"dept_embed_bwd[dept-shifted,{dtype}]"} <= labels
