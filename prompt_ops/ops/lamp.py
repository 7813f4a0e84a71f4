"""``lamp_prompt`` and ``lamp_embed``: LAMP's prompt from SVD factors (Lan et al., NAACL 2025; no public code, so
this project defines it, DESIGN.md §7): ``P = avgpool_pool((u * q) @ v)``, window = stride = ``pool`` over rows.

Custom ops ``prompt_ops::lamp_prompt_fwd/bwd`` and ``prompt_ops::lamp_embed_fwd/bwd`` with fake implementations and
``register_autograd``. Pooling is linear, so both backends pool ``u`` first: ``P = (avgpool(u) * q) @ v``, never
the ``(l, d)`` prompt. ``lamp_embed`` is one Triton launch forward (the embedding kernel computes the prompt rows
from the factors) and two backward.
"""

import torch

from prompt_ops.ops.backend import resolve_check_ids
from prompt_ops.ops.common import accumulate_dtype, custom_op, fake_embed_outputs
from prompt_ops.ops.dept_embed import dept_embed_fwd_torch
from prompt_ops.ops.validation import (
    check_embed_sizes,
    check_int,
    check_output_sizes,
    check_token_data,
    check_width,
    validate_embed_call,
    validate_params,
)

Tensor = torch.Tensor


def _pooled_rows(u: Tensor, pool: int) -> Tensor:
    """``avgpool_pool(u)``: ``(l / pool, r)``."""
    rows, rank = u.shape
    return u.reshape(rows // pool, pool, rank).mean(dim=1)


def lamp_prompt_torch(u: Tensor, q: Tensor, v: Tensor, pool: int) -> Tensor:
    """Eager prompt: one small matmul of the pooled, scaled left factor with ``v``."""
    return torch.mm(_pooled_rows(u, pool) * q, v)


def lamp_factor_grads_torch(grad_prompt: Tensor, u: Tensor, q: Tensor, v: Tensor, pool: int):
    """``(dU, dq, dV)`` from the pooled prompt's gradient (derivation in ``prompt_ops.kernels.lamp``)."""
    acc = accumulate_dtype(grad_prompt.dtype, u.dtype)
    pooled = _pooled_rows(u, pool).to(acc)
    grad_prompt, q_acc = grad_prompt.to(acc), q.to(acc)
    grad_v = torch.mm((pooled * q_acc).t(), grad_prompt)
    grad_left = torch.mm(grad_prompt, v.to(acc).t())  # (m, r)
    grad_q = (grad_left * pooled).sum(0)
    grad_u = (grad_left * (q_acc / pool)).repeat_interleave(pool, dim=0)
    return grad_u, grad_q, grad_v


def _factors(u, q, v, pool):
    from prompt_ops.kernels.dept_embed import PromptFactors

    return PromptFactors(u, q, v, pool)


# ----------------------------------------------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------------------------------------------


@custom_op("prompt_ops::lamp_prompt_fwd")
def lamp_prompt_fwd_op(u: Tensor, q: Tensor, v: Tensor, pool: int, backend: str) -> Tensor:
    if backend == "triton":
        from prompt_ops.kernels.lamp import lamp_prompt_fwd

        return lamp_prompt_fwd(_factors(u, q, v, pool))
    return lamp_prompt_torch(u, q, v, pool)


@lamp_prompt_fwd_op.register_fake
def _lamp_prompt_fwd_fake(u, q, v, pool, backend):
    return v.new_empty((u.shape[0] // pool, v.shape[1]))


@custom_op("prompt_ops::lamp_prompt_bwd")
def lamp_prompt_bwd_op(grad: Tensor, u: Tensor, q: Tensor, v: Tensor, pool: int, backend: str) -> list[Tensor]:
    """``[dU, dq, dV]`` in fp32 (fp64 for fp64 inputs on the torch backend)."""
    if backend == "triton":
        from prompt_ops.kernels.lamp import lamp_factor_grads

        return list(lamp_factor_grads(grad, _factors(u, q, v, pool)))
    return list(lamp_factor_grads_torch(grad, u, q, v, pool))


@custom_op("prompt_ops::lamp_embed_fwd")
def lamp_embed_fwd_op(
    input_ids: Tensor,
    weight: Tensor,
    u: Tensor,
    q: Tensor,
    v: Tensor,
    attention_mask: Tensor | None,
    pool: int,
    check_ids: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    if check_ids:
        check_token_data(input_ids, weight.shape[0], attention_mask)
    if backend == "triton":
        from prompt_ops.kernels.dept_embed import dept_embed_fwd

        return dept_embed_fwd(input_ids, weight, _factors(u, q, v, pool), None, None, attention_mask, 0.0)
    prompt = lamp_prompt_torch(u, q, v, pool)
    return dept_embed_fwd_torch(input_ids, weight, prompt, None, None, attention_mask, 0.0)


@lamp_embed_fwd_op.register_fake
def _lamp_embed_fwd_fake(input_ids, weight, u, q, v, attention_mask, pool, check_ids, backend):
    return fake_embed_outputs(input_ids, weight, u.shape[0] // pool, v.shape[1], attention_mask)


@custom_op("prompt_ops::lamp_embed_bwd")
def lamp_embed_bwd_op(grad_out: Tensor, u: Tensor, q: Tensor, v: Tensor, pool: int, backend: str) -> list[Tensor]:
    """``[dU, dq, dV]`` from the gradient of the whole model input."""
    if backend == "triton":
        from prompt_ops.kernels.lamp import lamp_embed_bwd

        return list(lamp_embed_bwd(grad_out, _factors(u, q, v, pool)))
    num_rows = u.shape[0] // pool
    grad_prompt = grad_out[:, :num_rows].sum(0, dtype=accumulate_dtype(grad_out.dtype, u.dtype))
    return list(lamp_factor_grads_torch(grad_prompt, u, q, v, pool))


def _fake_factor_grads(grad, u, q, v, pool, backend):
    acc = torch.float32 if backend == "triton" else accumulate_dtype(grad.dtype, u.dtype)
    return [t.new_empty(t.shape, dtype=acc) for t in (u, q, v)]


lamp_prompt_bwd_op.register_fake(_fake_factor_grads)
lamp_embed_bwd_op.register_fake(_fake_factor_grads)


def _register_factor_autograd(forward_op, backward_op, first_factor: int, pool_index: int) -> None:
    """Both forward ops take ``u, q, v`` at ``first_factor`` and ``pool`` at ``pool_index``, the backend last; their
    gradients flow to the three factors only."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[first_factor : first_factor + 3])
        ctx.pool, ctx.backend, ctx.num_inputs = inputs[pool_index], inputs[-1], len(inputs)

    def backward(ctx, grad, *_unused):
        u, q, v = ctx.saved_tensors
        grads = backward_op(grad, u, q, v, ctx.pool, ctx.backend)
        grads = [g.to(t.dtype) for g, t in zip(grads, (u, q, v), strict=True)]
        return (None,) * first_factor + tuple(grads) + (None,) * (ctx.num_inputs - first_factor - 3)

    forward_op.register_autograd(backward, setup_context=setup_context)


_register_factor_autograd(lamp_prompt_fwd_op, lamp_prompt_bwd_op, first_factor=0, pool_index=3)
_register_factor_autograd(lamp_embed_fwd_op, lamp_embed_bwd_op, first_factor=2, pool_index=6)


# ----------------------------------------------------------------------------------------------------------------
# public entries
# ----------------------------------------------------------------------------------------------------------------


def _factor_params(u, q, v) -> dict:
    return {"u": (u, 2, "(l, r)"), "q": (q, 1, "(r,)"), "v": (v, 2, "(r, d)")}


def _check_factors(u: Tensor, q: Tensor, v: Tensor, pool: object) -> int:
    """Shapes and ``pool`` (the dtypes are checked with the other parameters); returns ``pool``."""
    pool = check_int("pool", pool, 1)
    rows, rank = u.shape
    if rank == 0 or rows == 0:
        raise ValueError(f"u must have shape (l, r) with l, r >= 1, got {tuple(u.shape)}")
    if rows % pool:
        raise ValueError(f"pool = {pool} must divide the prompt length l = u.shape[0] = {rows}")
    if tuple(q.shape) != (rank,):
        raise ValueError(
            f"q must have shape (r,) = ({rank},) to match u (l, r) = {tuple(u.shape)}, got {tuple(q.shape)}"
        )
    if v.shape[0] != rank or v.shape[1] == 0:
        raise ValueError(f"v must have shape (r, d) with r = {rank} to match u and d >= 1, got {tuple(v.shape)}")
    return pool


def _check_triton_factors(u: Tensor, pool: int, backend: str) -> None:
    """Refuses shapes the Triton gradient kernel does not take, before any launch."""
    if backend == "triton":
        from prompt_ops.kernels.lamp import block_sizes

        block_sizes(u.shape[0] // pool, u.shape[1])


def lamp_prompt(u: Tensor, q: Tensor, v: Tensor, *, pool: int, backend: str | None = None) -> Tensor:
    """LAMP's prompt ``avgpool_pool((u * q) @ v)``: ``u (l, r)``, ``q (r,)``, ``v (r, d)`` give ``(l // pool, d)``.

    Rows ``j*pool .. j*pool+pool-1`` of the compressed outer product average into row ``j``; ``pool`` must divide
    ``l``. Gradients reach ``u``, ``q`` and ``v``. ``backend`` as in :func:`prompt_ops.prompt_embed`; the Triton
    backend takes (``l // pool``, ``r``) up to 4096 elements once each is padded to a power of two >= 16.
    """
    backend = validate_params(_factor_params(u, q, v), backend)
    pool = _check_factors(u, q, v, pool)
    sources = f"u (l, r) = {tuple(u.shape)}, pool = {pool} and v (r, d) = {tuple(v.shape)}"
    check_output_sizes(sources, u.device, {"the prompt (l // pool, d)": ((u.shape[0] // pool, v.shape[1]), v.dtype)})
    _check_triton_factors(u, pool, backend)
    return lamp_prompt_fwd_op(u, q, v, pool, backend)


def lamp_embed(
    input_ids: Tensor,
    weight: Tensor,
    u: Tensor,
    q: Tensor,
    v: Tensor,
    *,
    pool: int,
    attention_mask: Tensor | None = None,
    backend: str | None = None,
    check_ids: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """LAMP input: :func:`lamp_prompt` prepended to the token embeddings, in one fused launch.

    Outputs as :func:`prompt_ops.prompt_embed` with ``m = l // pool`` prompt rows, computed in fp32 from the factors
    and rounded once to ``weight.dtype``. ``v``'s width must equal the table's.
    """
    backend = validate_embed_call(input_ids, weight, attention_mask, backend, _factor_params(u, q, v))
    check_width("v", v, "(r, d)", weight.shape[1], "weight.shape[1]")
    pool = _check_factors(u, q, v, pool)
    check_embed_sizes(
        input_ids, weight, u.shape[0] // pool, f"u (l, r) = {tuple(u.shape)}, pool = {pool}", attention_mask
    )
    _check_triton_factors(u, pool, backend)
    return lamp_embed_fwd_op(input_ids, weight, u, q, v, attention_mask, pool, resolve_check_ids(check_ids), backend)
