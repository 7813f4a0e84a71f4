"""``ept_prompt`` and ``ept_embed``: EPT (Lan et al., AAAI 2025; no public code, so this project defines it,
DESIGN.md §7): a short prompt fused with DePT-style low-rank knowledge, projected into ``K`` subspaces mixed by a
gate, with DePT's position offset on the input tokens.

The prompt builder is batch-independent and small (``s x L_max`` attention scores, ``K`` rank-``h`` projections).
On the ``triton`` backend it is the custom op ``prompt_ops::ept_prompt_fwd/bwd`` over the kernels of
``prompt_ops.kernels.ept`` (three launches forward, seven backward, ``Q = c A B`` never stored). On the ``torch``
backend it is a few eager PyTorch ops that autograd differentiates, written to do little work: the ``K`` projections
are one pair of matmuls through the concatenated subspaces ``Wd_cat (d, K*h)`` and ``Wu_cat (K*h, d)``, since
``sum_k g_k Pf Wd_k Wu_k = ((Pf Wd_cat) * g_expanded) Wu_cat``. The per-token work, which scales with the batch, is
DePT's fused op: ``ept_embed`` feeds the built prompt to ``prompt_ops::dept_embed_fwd`` (one Triton launch on the
``triton`` backend), and autograd sums the two paths' gradients of ``lora_a`` and ``lora_b``.
"""

import math

import torch

from prompt_ops.ops.backend import resolve_check_ids
from prompt_ops.ops.common import custom_op
from prompt_ops.ops.dept_embed import check_lora_shapes, dept_embed_fwd_op, resolve_positions
from prompt_ops.ops.validation import (
    check_embed_sizes,
    check_output_sizes,
    check_scale,
    validate_embed_call,
    validate_params,
)

Tensor = torch.Tensor


def build_ept_prompt(prompt, lora_a, lora_b, w_down, w_up, w_gate, b_gate, scale: float) -> Tensor:
    """The EPT prompt ``(s, d)`` from validated parameters (differentiable PyTorch ops)."""
    num_subspaces, hidden, sub_rank = w_down.shape
    knowledge = torch.mm(lora_a, lora_b).mul_(scale)  # Q (L_max, d)
    attention = torch.softmax(torch.mm(prompt, knowledge.t()).mul_(1.0 / math.sqrt(hidden)), dim=-1)  # (s, L_max)
    fused = torch.addmm(prompt, attention, knowledge)  # Pf (s, d)
    gate = torch.softmax(torch.addmv(b_gate, w_gate.t(), fused.mean(dim=0)), dim=-1)  # (K,)
    down = w_down.permute(1, 0, 2).reshape(hidden, num_subspaces * sub_rank)  # Wd_cat (d, K*h)
    up = w_up.reshape(num_subspaces * sub_rank, hidden)  # Wu_cat (K*h, d)
    projected = torch.mm(fused, down) * gate.repeat_interleave(sub_rank)  # (s, K*h), column block k scaled by g_k
    return torch.addmm(fused, projected, up)


@custom_op("prompt_ops::ept_prompt_fwd")
def ept_prompt_fwd_op(
    prompt: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    w_down: Tensor,
    w_up: Tensor,
    w_gate: Tensor,
    b_gate: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton builder: ``(P, Pf, Pa, g)``; the last three are kept for the backward."""
    from prompt_ops.kernels.ept import ept_prompt_fwd

    return ept_prompt_fwd(prompt, lora_a, lora_b, w_down, w_up, w_gate, b_gate, scale)


@ept_prompt_fwd_op.register_fake
def _ept_prompt_fwd_fake(prompt, lora_a, lora_b, w_down, w_up, w_gate, b_gate, scale):
    num_rows, hidden = prompt.shape
    as_fp32 = {"dtype": torch.float32}
    return (
        prompt.new_empty((num_rows, hidden), **as_fp32),
        prompt.new_empty((num_rows, hidden), **as_fp32),
        prompt.new_empty((num_rows, lora_a.shape[0]), **as_fp32),
        prompt.new_empty((w_down.shape[0],), **as_fp32),
    )


@custom_op("prompt_ops::ept_prompt_bwd")
def ept_prompt_bwd_op(
    grad: Tensor,
    prompt: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    w_down: Tensor,
    w_up: Tensor,
    w_gate: Tensor,
    fused: Tensor,
    probs: Tensor,
    gate: Tensor,
    scale: float,
) -> list[Tensor]:
    """fp32 gradients of the seven builder parameters."""
    from prompt_ops.kernels.ept import ept_prompt_bwd

    return list(ept_prompt_bwd(grad, prompt, lora_a, lora_b, w_down, w_up, w_gate, fused, probs, gate, scale))


@ept_prompt_bwd_op.register_fake
def _ept_prompt_bwd_fake(grad, prompt, lora_a, lora_b, w_down, w_up, w_gate, fused, probs, gate, scale):
    shapes = (prompt.shape, lora_a.shape, lora_b.shape, w_down.shape, w_up.shape, w_gate.shape, gate.shape)
    return [grad.new_empty(shape, dtype=torch.float32) for shape in shapes]


def _setup_context(ctx, inputs, output):
    *params, scale = inputs
    _, fused, probs, gate = output
    ctx.save_for_backward(*params[:6], fused, probs, gate)
    ctx.dtypes = [p.dtype for p in params]
    ctx.scale = scale


def _backward(ctx, grad, *_aux_grads):
    *params, fused, probs, gate = ctx.saved_tensors
    grads = ept_prompt_bwd_op(grad, *params, fused, probs, gate, ctx.scale)
    return (*[g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True)], None)


ept_prompt_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _build(params: tuple[Tensor, ...], scale: float, backend: str) -> Tensor:
    if backend == "triton":
        from prompt_ops.kernels.ept import block_width

        block_width(params[3].shape[0], params[3].shape[2])  # refuses what the kernels do not take
        return ept_prompt_fwd_op(*params, scale)[0]
    return build_ept_prompt(*params, scale)


def _check_builder(params: tuple[Tensor, ...], seq_len: int | None, width_source: str) -> None:
    """Shapes of the seven builder parameters (``prompt``'s width is ``d``, checked by the caller), and sizes: the
    prompt needs a row (the gate averages them) and the attention a key (``L_max >= 1``). ``seq_len``: the input
    length ``lora_a`` must cover, or None for no limit."""
    prompt, lora_a, lora_b, w_down, w_up, w_gate, b_gate = params
    if prompt.shape[0] == 0 or prompt.shape[1] == 0:
        raise ValueError(
            f"prompt must have shape (s, d) with s, d >= 1 (EPT's gate averages its rows), got {tuple(prompt.shape)}"
        )
    if lora_a.shape[0] == 0:
        raise ValueError(
            f"lora_a must have shape (L_max, r) with L_max >= 1 (the prompt attends over its rows), "
            f"got {tuple(lora_a.shape)}"
        )
    check_lora_shapes(lora_a, lora_b, seq_len, prompt.shape[1], method="EPT", width_source=width_source)
    _check_subspaces(w_down, w_up, w_gate, b_gate, prompt.shape[1])
    sources = f"prompt (s, d) = {tuple(prompt.shape)} and lora_a (L_max, r) = {tuple(lora_a.shape)}"
    num_rows, hidden = prompt.shape
    outputs = {  # the prompt and the largest intermediates of either backend: Q and the attention
        "the prompt (s, d)": ((num_rows, hidden), torch.float32),
        "Q (L_max, d)": ((lora_a.shape[0], hidden), torch.float32),
        "the attention (s, L_max)": ((num_rows, lora_a.shape[0]), torch.float32),
    }
    check_output_sizes(sources, prompt.device, outputs)


def _check_subspaces(w_down: Tensor, w_up: Tensor, w_gate: Tensor, b_gate: Tensor, hidden: int) -> None:
    num_subspaces, down_width, sub_rank = w_down.shape
    if down_width != hidden or num_subspaces == 0 or sub_rank == 0:
        raise ValueError(f"w_down must have shape (K, d, h) with d = {hidden} and K, h >= 1, got {tuple(w_down.shape)}")
    expected = {
        "w_up": (w_up, (num_subspaces, sub_rank, hidden)),
        "w_gate": (w_gate, (hidden, num_subspaces)),
        "b_gate": (b_gate, (num_subspaces,)),
    }
    for name, (value, shape) in expected.items():
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} to match w_down (K, d, h) = {tuple(w_down.shape)} "
                f"(K = {num_subspaces} subspaces), got {tuple(value.shape)}"
            )


_SUBSPACE_LAYOUTS = {
    "w_down": (3, "(K, d, h)"),
    "w_up": (3, "(K, h, d)"),
    "w_gate": (2, "(d, K)"),
    "b_gate": (1, "(K,)"),
}


def _subspace_params(w_down, w_up, w_gate, b_gate) -> dict:
    values = {"w_down": w_down, "w_up": w_up, "w_gate": w_gate, "b_gate": b_gate}
    return {name: (values[name], ndim, layout) for name, (ndim, layout) in _SUBSPACE_LAYOUTS.items()}


def ept_prompt(
    prompt: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    w_down: Tensor,
    w_up: Tensor,
    w_gate: Tensor,
    b_gate: Tensor,
    *,
    scale: float,
    backend: str | None = None,
) -> Tensor:
    """EPT's prompt ``(s, d)``: ``Q = scale * lora_a @ lora_b``; ``Pf = prompt + softmax(prompt Q^T / sqrt(d)) Q``;
    ``P_k = Pf @ w_down[k] @ w_up[k]``; ``g = softmax(Pf.mean(0) @ w_gate + b_gate)``; result
    ``Pf + sum_k g[k] P_k``.

    Shapes: ``prompt (s, d)``, ``lora_a (L_max, r)``, ``lora_b (r, d)``, ``w_down (K, d, h)``, ``w_up (K, h, d)``,
    ``w_gate (d, K)``, ``b_gate (K,)``, all of one dtype, with ``s, L_max, r, K, h, d >= 1``. Gradients reach all
    seven. The result is fp32. The Triton backend takes ``K * h <= 64``.
    """
    scale = check_scale(scale)
    params = {"prompt": (prompt, 2, "(s, d)"), "lora_a": (lora_a, 2, "(L_max, r)"), "lora_b": (lora_b, 2, "(r, d)")}
    backend = validate_params({**params, **_subspace_params(w_down, w_up, w_gate, b_gate)}, backend)
    builder = (prompt, lora_a, lora_b, w_down, w_up, w_gate, b_gate)
    _check_builder(builder, 0, "prompt (s, d)")
    return _build(builder, scale, backend)


def ept_embed(
    input_ids: Tensor,
    weight: Tensor,
    prompt: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    w_down: Tensor,
    w_up: Tensor,
    w_gate: Tensor,
    b_gate: Tensor,
    *,
    scale: float,
    attention_mask: Tensor | None = None,
    backend: str | None = None,
    check_ids: bool | None = None,
    positions: str | Tensor = "tokens",
) -> tuple[Tensor, Tensor]:
    """EPT input: :func:`ept_prompt` prepended, and DePT's offset ``scale * lora_a[p] @ lora_b`` added to the input
    token at position ``p``, through DePT's fused op. ``positions`` (``"tokens"``, the default: positions count
    real tokens, so outputs do not depend on padding or batch mates; ``"absolute"``: the column in the padded
    batch; or a ``(B,)`` tensor of row starts) and the length limit as in :func:`prompt_ops.dept_embed`. Outputs as
    :func:`prompt_ops.dept_embed`; ``lora_a`` and ``lora_b`` get the sum of both paths' gradients."""
    scale = check_scale(scale)
    params = {"prompt": (prompt, 2, "(s, d)"), "lora_a": (lora_a, 2, "(L_max, r)"), "lora_b": (lora_b, 2, "(r, d)")}
    params.update(_subspace_params(w_down, w_up, w_gate, b_gate))
    backend = validate_embed_call(input_ids, weight, attention_mask, backend, params)
    starts, nonpositive, limited = resolve_positions(positions, input_ids, attention_mask)
    builder = (prompt, lora_a, lora_b, w_down, w_up, w_gate, b_gate)
    _check_builder(builder, input_ids.shape[1] if limited else None, "weight (V, d)")
    check_embed_sizes(input_ids, weight, prompt.shape[0], f"prompt (s, d) = {tuple(prompt.shape)}", attention_mask)
    full_prompt = _build(builder, scale, backend)
    return dept_embed_fwd_op(
        input_ids, weight, full_prompt, lora_a, lora_b, attention_mask, scale, resolve_check_ids(check_ids), backend,
        starts, nonpositive,
    )  # fmt: skip
