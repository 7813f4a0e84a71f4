"""LPT's generators (NPG and APPG) against ops/reference.py on both backends: outputs, gradients, dropout."""

import pytest
import torch

import prompt_ops
from prompt_ops.kernels import lpt as kernels
from prompt_ops.ops import lpt as ops
from prompt_ops.ops import reference

BACKENDS = ["torch", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, L, d, h, n): batch 1 with one row, odd widths, h not a power of two, windows longer and shorter than 1 row.
SHAPES = [(1, 1, 8, 3, 1), (3, 9, 20, 6, 4), (2, 13, 37, 19, 5), (2, 5, 33, 16, 7)]


def make(batch, seq_len, hidden_size, gen_rank, num_tokens, mode, dtype=torch.float32, device="cpu"):
    width = num_tokens * hidden_size if mode == "naive" else hidden_size
    hidden = torch.randn(batch, seq_len, hidden_size, device=device).to(dtype)
    params = [
        torch.randn(hidden_size, gen_rank, device=device) / hidden_size**0.5,
        torch.randn(gen_rank, device=device),
        torch.randn(gen_rank, width, device=device) / gen_rank**0.5,
        torch.randn(width, device=device),
    ]
    mask = torch.ones(batch, seq_len, dtype=torch.long, device=device)
    if batch > 1 and seq_len > 2:
        mask[-1, seq_len - 2 :] = 0  # ragged lengths, right padding
    index = torch.randint(0, seq_len, (batch,), device=device)
    return hidden, [p.requires_grad_(True) for p in params], mask, index


def check(out, hidden, params, mask, index, num_tokens, mode, dropout_scale=None):
    fresh = [p.detach().clone().requires_grad_(True) for p in params]
    expected = reference.lpt_prompt(hidden.float(), *fresh, num_tokens, index, mask, mode, dropout_scale)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    grad = torch.randn(out.shape, device=out.device)
    got, want = torch.autograd.grad(out, params, grad), torch.autograd.grad(expected, fresh, grad)
    for name, g, w in zip(("w_down", "b_down", "w_up", "b_up"), got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=f"grad of {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["naive", "pool"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_generators_match_reference(backend, mode, shape, dtype):
    hidden, params, mask, index = make(*shape, mode, dtype)
    num_tokens = shape[4]
    out = prompt_ops.lpt_prompt(
        hidden, *params, num_tokens=num_tokens, index=index, attention_mask=mask, mode=mode, backend=backend
    )
    check(out, hidden, params, mask, index, num_tokens, mode)


@pytest.mark.parametrize("mode", ["naive", "pool"])
def test_realistic_shape(mode):
    """B=4, L=128, d=768, h=128, n=5 (the official scripts' generator)."""
    hidden, params, mask, index = make(4, 128, 768, 128, 5, mode)
    out = prompt_ops.lpt_prompt(hidden, *params, num_tokens=5, index=index, attention_mask=mask, mode=mode,
                                backend="triton")  # fmt: skip
    check(out, hidden, params, mask, index, 5, mode)


@pytest.mark.parametrize("mode", ["naive", "pool"])
def test_dropout_uses_one_mask(mode):
    hidden, params, mask, index = make(3, 9, 20, 6, 4, mode)
    kwargs = {"num_tokens": 4, "index": index, "attention_mask": mask, "mode": mode, "backend": "triton"}
    out = prompt_ops.lpt_prompt(hidden, *params, dropout_p=0.3, training=True, seed=11, **kwargs)
    again = prompt_ops.lpt_prompt(hidden, *params, dropout_p=0.3, training=True, seed=11, **kwargs)
    assert torch.equal(out, again)
    rows, width = (3, 80) if mode == "naive" else (12, 20)
    scale = kernels.dropout_multipliers(rows, width, 0.3, 11, "cpu")
    check(out, hidden, params, mask, index, 4, mode, dropout_scale=scale)


def test_no_gradient_reaches_the_hidden_states():
    hidden, params, mask, index = make(2, 6, 16, 4, 3, "pool")
    hidden.requires_grad_(True)
    for backend in BACKENDS:
        out = prompt_ops.lpt_prompt(hidden, *params, num_tokens=3, attention_mask=mask, mode="pool", backend=backend)
        out.sum().backward()
    assert hidden.grad is None


def test_gradcheck_fp64_torch_backend():
    hidden, params, mask, _ = make(2, 5, 6, 3, 2, "pool")
    hidden, params = hidden.double(), [p.detach().double().requires_grad_(True) for p in params]

    def fn(*p):
        return prompt_ops.lpt_prompt(hidden, *p, num_tokens=2, attention_mask=mask, mode="pool", backend="torch")

    assert torch.autograd.gradcheck(fn, tuple(params))


def test_opcheck_and_compile():
    hidden, params, mask, _ = make(2, 6, 16, 4, 3, "pool")
    starts, ends = ops.slot_windows(2, 6, 3, "pool", None, mask)
    torch.library.opcheck(ops.lpt_prompt_fwd_op, (hidden, *params, starts, ends, 0.2, 3))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(hidden, *p):
        return prompt_ops.lpt_prompt(hidden, *p, num_tokens=3, mode="naive", backend="triton").square().sum()

    naive_hidden, naive_params, _, _ = make(2, 6, 16, 4, 3, "naive")
    loss = step(naive_hidden, *naive_params)
    expected = reference.lpt_prompt(naive_hidden, *naive_params, 3).square().sum()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend):
    hidden, params, mask, index = make(2, 6, 16, 4, 3, "naive")
    with pytest.raises(ValueError, match=r"num_tokens must be an int >= 1, got 0"):
        prompt_ops.lpt_prompt(hidden, *params, num_tokens=0, backend=backend)
    with pytest.raises(ValueError, match=r"mode must be one of \('naive', 'pool'\)"):
        prompt_ops.lpt_prompt(hidden, *params, num_tokens=3, mode="mean", backend=backend)
    with pytest.raises(ValueError, match=r"index must be in \[0, 6\)"):
        prompt_ops.lpt_prompt(hidden, *params, num_tokens=3, index=torch.tensor([0, 6]), backend=backend)
    with pytest.raises(ValueError, match=r"w_up must have shape \(4, 48\) for mode='naive'"):
        prompt_ops.lpt_prompt(
            hidden, *params, num_tokens=3, mode="naive", backend=backend
        ) if False else prompt_ops.lpt_prompt(
            hidden, *params[:2], torch.randn(4, 47), params[3], num_tokens=3, backend=backend
        )
    pool_hidden, pool_params, pool_mask, _ = make(2, 6, 16, 4, 3, "pool")
    pool_mask[1] = 0
    with pytest.raises(ValueError, match="all-padding row"):
        prompt_ops.lpt_prompt(pool_hidden, *pool_params, num_tokens=3, attention_mask=pool_mask, mode="pool",
                              backend=backend)  # fmt: skip
