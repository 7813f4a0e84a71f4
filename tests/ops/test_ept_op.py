"""ept_prompt / ept_embed against ops/reference.py on both backends: outputs, all seven gradients, compile, errors."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prompt_ops
from prompt_ops.ops import reference
from tests.helpers import (
    EPT_NAMES,
    assert_close,
    assert_deterministic,
    assert_grads_close,
    make_ept_case,
    tolerances,
)

BACKENDS = ["torch", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, L, s, d, r, K, h): batch 1, odd d and L, ranks and subspace ranks that are not powers of two, K = 1.
RAGGED = [(1, 1, 1, 3, 1, 1, 1), (3, 7, 5, 37, 5, 3, 6), (2, 13, 4, 64, 30, 4, 8), (1, 20, 9, 33, 7, 2, 5)]


def check(case, dtype, out, mask, grads, grad):
    ref_out, ref_mask, ref_params = case.reference()
    assert out.dtype == case.weight.dtype and out.shape == ref_out.shape
    assert_close(out, ref_out, dtype, dot=True)
    assert torch.equal(mask, ref_mask)
    ref_grads = torch.autograd.grad(ref_out, ref_params, grad.float())
    assert_grads_close(grads, ref_grads, EPT_NAMES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", RAGGED, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ept_embed_matches_reference(backend, shape, dtype):
    case = make_ept_case(*shape, dtype=dtype)
    out, mask = case.run(backend)
    grad = torch.randn(out.shape).to(dtype)
    check(case, dtype, out, mask, torch.autograd.grad(out, case.params, grad), grad)


def test_realistic_shape_through_the_fused_kernel():
    """B=4, L=128, d=768, s=60, r=30, K=4, h=8 (the module defaults) on the Triton backend."""
    case = make_ept_case(4, 128, 60, 768, 30, 4, 8, max_length=256, vocab=1000)
    out, mask = case.run("triton")
    grad = torch.randn(out.shape)
    check(case, torch.float32, out, mask, torch.autograd.grad(out, case.params, grad), grad)


def test_ept_prompt_matches_reference():
    case = make_ept_case(1, 4, 6, 40, 5, 3, 7)
    prompt = prompt_ops.ept_prompt(*case.params, scale=case.scale)
    params = [p.detach().clone().requires_grad_(True) for p in case.params]
    expected = reference.ept_prompt(*params, case.scale)
    assert_close(prompt, expected, torch.float32, dot=True)
    grad = torch.randn(prompt.shape)
    grads = torch.autograd.grad(prompt, case.params, grad)
    assert_grads_close(grads, torch.autograd.grad(expected, params, grad), EPT_NAMES)


def test_gradcheck_fp64():
    case = make_ept_case(2, 3, 2, 5, 2, 2, 3, dtype=torch.float64, param_dtype=torch.float64)

    def embed(*params):
        return prompt_ops.ept_embed(case.input_ids, case.weight, *params, scale=0.9, backend="torch")[0]

    assert torch.autograd.gradcheck(embed, tuple(case.params))
    assert torch.autograd.gradcheck(lambda *p: prompt_ops.ept_prompt(*p, scale=0.9), tuple(case.params))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    case = make_ept_case(2, 7, 3, 20, 5, 2, 4)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(input_ids, weight, attention_mask, *params):
        out, mask = prompt_ops.ept_embed(
            input_ids, weight, *params, scale=1.1, attention_mask=attention_mask, backend=backend
        )
        return (out * out).sum(), mask

    loss, mask = step(case.input_ids, case.weight, case.attention_mask, *case.params)
    grads = torch.autograd.grad(loss, case.params)
    ref_out, ref_mask, ref_params = case.reference()
    ref_loss = (ref_out * ref_out).sum()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    assert torch.equal(mask, ref_mask)
    assert_grads_close(grads, torch.autograd.grad(ref_loss, ref_params))


def test_deterministic():
    case = make_ept_case(3, 9, 4, 30, 5, 3, 4)
    grad = torch.randn(3, 13, 30)
    assert_deterministic(lambda: case.run("triton"), case.params, grad)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 3),
    seq_len=st.integers(1, 10),
    num_prompt=st.integers(1, 6),
    hidden=st.integers(1, 40),
    rank=st.integers(1, 20),
    subspaces=st.integers(1, 4),
    sub_rank=st.integers(1, 9),
    dtype=st.sampled_from(DTYPES),
)
def test_property_random_shapes(batch, seq_len, num_prompt, hidden, rank, subspaces, sub_rank, dtype):
    case = make_ept_case(batch, seq_len, num_prompt, hidden, rank, subspaces, sub_rank, dtype=dtype)
    out, mask = case.run("triton")
    grad = torch.randn(out.shape).to(dtype)
    check(case, dtype, out, mask, torch.autograd.grad(out, case.params, grad), grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "index, shape, pattern",
    [
        (3, (3, 9, 4), r"w_down must have shape \(K, d, h\) with d = 8"),
        (4, (2, 4, 8), r"w_up must have shape \(3, 4, 8\) to match w_down .* \(K = 3 subspaces\)"),
        (4, (3, 5, 8), r"w_up must have shape \(3, 4, 8\)"),
        (5, (8, 2), r"w_gate must have shape \(8, 3\)"),
        (6, (4,), r"b_gate must have shape \(3,\)"),
        (2, (5, 8), r"lora_b must have shape \(r, d\) = \(2, 8\)"),
        (3, (3, 8), r"w_down must have shape \(K, d, h\) \(3-D\)"),
    ],
)
def test_bad_shapes(backend, index, shape, pattern):
    case = make_ept_case(2, 5, 3, 8, 2, 3, 4)
    case.params[index] = torch.randn(shape)
    with pytest.raises(ValueError, match=pattern):
        case.run(backend)
    with pytest.raises(ValueError, match=pattern):
        prompt_ops.ept_prompt(*case.params, scale=1.0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_longer_than_max_length_and_shared_checks(backend):
    case = make_ept_case(2, 7, 3, 8, 2, 3, 4, max_length=6, vocab=20)
    with pytest.raises(ValueError, match=r"L = 7 tokens but lora_a has L_max = 6"):
        case.run(backend)
    case = make_ept_case(2, 5, 3, 8, 2, 3, 4, vocab=20)
    case.input_ids[0, 0] = 20
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 20\)"):
        case.run(backend)
    with pytest.raises(TypeError, match="scale must be a real number"):
        prompt_ops.ept_prompt(*case.params, scale=None)


# ----------------------------------------------------------------------------------------------------------------
# positions=: DePT's offset on the input tokens follows each row's start
# ----------------------------------------------------------------------------------------------------------------


def left_padded(lengths: list[int], seq_len: int) -> torch.Tensor:
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.int64)
    for row, length in enumerate(lengths):
        mask[row, seq_len - length :] = 1
    return mask


def run_positions(case, backend, positions):
    return prompt_ops.ept_embed(
        case.input_ids, case.weight, *case.params, scale=case.scale, attention_mask=case.attention_mask,
        backend=backend, positions=positions,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "mask, positions",
    [
        pytest.param(left_padded([5, 2, 0], 5), "tokens", id="left"),
        pytest.param(torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 1, 0]]), "tokens", id="mixed"),
        pytest.param(left_padded([5, 2, 0], 5), "absolute", id="absolute"),
        pytest.param(None, torch.tensor([-4, 1, 6]), id="explicit"),
    ],
)
def test_positions_match_reference(backend, dtype, mask, positions):
    case = make_ept_case(3, 5, 3, 20, 5, 2, 3, max_length=7, dtype=dtype)
    case.attention_mask = mask
    out, out_mask = run_positions(case, backend, positions)
    weight = case.weight.float() if dtype != torch.float32 else case.weight
    params = [p.detach().clone().requires_grad_(True) for p in case.params]
    ref_out, ref_mask = reference.ept_embed(case.input_ids, weight, *params, case.scale, mask, positions)
    assert_close(out, ref_out, dtype, dot=True)
    assert torch.equal(out_mask, ref_mask)
    grad = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, case.params, grad)
    assert_grads_close(grads, torch.autograd.grad(ref_out, params, grad.float()), EPT_NAMES, **tolerances(dtype, True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_alone_equals_the_row_in_a_left_padded_batch(backend):
    """Outputs at a sequence's real positions alone and left-padded in a batch agree; the batch's gradients are the
    sum of the rows' own."""
    lengths, seq_len, num_prompt = [2, 6, 4], 6, 3
    case = make_ept_case(3, seq_len, num_prompt, 16, 4, 2, 3, max_length=6)
    mask = left_padded(lengths, seq_len)

    def run(input_ids, attention_mask):
        return prompt_ops.ept_embed(
            input_ids, case.weight, *case.params, scale=case.scale, attention_mask=attention_mask, backend=backend
        )[0]

    batch_out = run(case.input_ids, mask)
    grad = torch.randn(batch_out.shape)
    batch_grads = torch.autograd.grad(batch_out, case.params, grad)
    summed = [torch.zeros_like(p) for p in case.params]
    for row, length in enumerate(lengths):
        real = slice(seq_len - length, seq_len)
        alone = run(case.input_ids[row : row + 1, real], None)[0]
        in_batch = torch.cat([batch_out[row, :num_prompt], batch_out[row, num_prompt:][real]])
        assert float((in_batch - alone).detach().norm() / alone.detach().norm()) <= 1e-5
        row_grad = torch.cat([grad[row, :num_prompt], grad[row, num_prompt:][real]])[None]
        for total, part in zip(summed, torch.autograd.grad(alone[None], case.params, row_grad), strict=True):
            total += part
    for name, got, want in zip(EPT_NAMES, batch_grads, summed, strict=True):
        assert float((got - want).norm() / want.norm()) <= 1e-5, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_positions_checks(backend):
    case = make_ept_case(2, 7, 3, 8, 2, 3, 4, max_length=6)
    with pytest.raises(ValueError, match=r"positions must be one of \('tokens', 'absolute'\), got 'padded'"):
        run_positions(case, backend, "padded")
    with pytest.raises(TypeError, match=r"positions must be a \(B,\) int64 or int32 tensor"):
        run_positions(case, backend, torch.zeros(2))
    with pytest.raises(ValueError, match=r"positions must have shape \(B,\) = \(2,\)"):
        run_positions(case, backend, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"L = 7 tokens but lora_a has L_max = 6"):
        run_positions(case, backend, "tokens")
    out, _ = run_positions(case, backend, torch.tensor([0, 2]))  # explicit starts: no length limit
    assert out.shape == (2, 10, 8)
