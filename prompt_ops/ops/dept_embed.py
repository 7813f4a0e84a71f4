"""``prompt_embed`` and ``dept_embed``: the model input of vanilla prompt tuning and of DePT.

One op family serves both: prompt tuning is DePT without the low-rank offset. Two ``torch.library`` custom ops,
``prompt_ops::dept_embed_fwd`` and ``prompt_ops::dept_embed_bwd``, each with a fake implementation, carry either
backend; ``register_autograd`` on the forward calls the backward op, so eager autograd, ``opcheck`` and
``torch.compile(fullgraph=True)`` all see the same two opaque ops.

Backends: ``triton`` launches ``prompt_ops.kernels.dept_embed`` (one fused launch forward, one launch plus two small
sums backward); ``torch`` is an efficient eager path: the offset is one ``(L, d)`` matmul broadcast over the batch,
added in fp32 straight into the preallocated output (no ``(B, L, d)`` repeat, one rounding).
"""

import torch

from prompt_ops.ops.backend import resolve_check_ids
from prompt_ops.ops.common import accumulate_dtype, custom_op
from prompt_ops.ops.validation import check_embed_sizes, check_scale, check_token_data, validate_embed_call

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# torch backend
# ----------------------------------------------------------------------------------------------------------------


def dept_embed_fwd_torch(
    input_ids: Tensor,
    weight: Tensor,
    prompt: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    attention_mask: Tensor | None,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """Eager forward writing into preallocated outputs; same contract as the Triton launcher."""
    batch, seq_len = input_ids.shape
    num_prompt, hidden = prompt.shape
    total = num_prompt + seq_len
    out = weight.new_empty((batch, total, hidden))
    out[:, :num_prompt] = prompt  # broadcast over the batch, cast to weight.dtype
    tokens = torch.nn.functional.embedding(input_ids, weight)  # (B, L, d)
    if lora_a is None:
        out[:, num_prompt:] = tokens
    else:
        offset = torch.mm(lora_a[:seq_len], lora_b).mul_(scale)  # (L, d), broadcast over the batch
        torch.add(tokens, offset, out=out[:, num_prompt:])  # computed in the offset's precision, rounded once
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    mask = torch.ones((batch, total), dtype=mask_dtype, device=weight.device)
    if attention_mask is not None:
        mask[:, num_prompt:] = attention_mask
    return out, mask


def dept_embed_bwd_torch(
    grad_out: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    num_prompt: int,
    scale: float,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Eager backward: batch sums first, then two skinny matmuls (see ``prompt_ops.kernels.dept_embed``)."""
    acc = accumulate_dtype(grad_out.dtype)
    grad_prompt = grad_out[:, :num_prompt].sum(0, dtype=acc)  # (m, d)
    if lora_a is None:
        return grad_prompt, None, None
    seq_len = grad_out.shape[1] - num_prompt
    summed = grad_out[:, num_prompt:].sum(0, dtype=acc)  # G (L, d)
    grad_a = torch.zeros(lora_a.shape, dtype=acc, device=grad_out.device)
    torch.mm(summed, lora_b.to(acc).t(), out=grad_a[:seq_len]).mul_(scale)  # s * G @ B^T
    grad_b = torch.mm(lora_a[:seq_len].to(acc).t(), summed).mul_(scale)  # s * A[:L]^T @ G
    return grad_prompt, grad_a, grad_b


# ----------------------------------------------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------------------------------------------


@custom_op("prompt_ops::dept_embed_fwd")
def dept_embed_fwd_op(
    input_ids: Tensor,
    weight: Tensor,
    prompt: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    attention_mask: Tensor | None,
    scale: float,
    check_ids: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Forward custom op; the data checks (``check_ids``) run here so that they also guard compiled graphs."""
    if check_ids:
        check_token_data(input_ids, weight.shape[0], attention_mask)
    if backend == "triton":
        from prompt_ops.kernels.dept_embed import dept_embed_fwd

        return dept_embed_fwd(input_ids, weight, prompt, lora_a, lora_b, attention_mask, scale)
    return dept_embed_fwd_torch(input_ids, weight, prompt, lora_a, lora_b, attention_mask, scale)


@dept_embed_fwd_op.register_fake
def _dept_embed_fwd_fake(input_ids, weight, prompt, lora_a, lora_b, attention_mask, scale, check_ids, backend):
    batch, seq_len = input_ids.shape
    num_prompt, hidden = prompt.shape
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    embeds = weight.new_empty((batch, num_prompt + seq_len, hidden))
    return embeds, input_ids.new_empty((batch, num_prompt + seq_len), dtype=mask_dtype)


@custom_op("prompt_ops::dept_embed_bwd")
def dept_embed_bwd_op(
    grad_out: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    num_prompt: int,
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward custom op: fp32 (fp64 for fp64 inputs) ``(d_prompt, d_lora_a, d_lora_b)``; the last two are empty
    tensors when there is no offset (a custom op cannot return None)."""
    if backend == "triton":
        from prompt_ops.kernels.dept_embed import dept_embed_bwd

        grads = dept_embed_bwd(grad_out, lora_a, lora_b, num_prompt, scale)
    else:
        grads = dept_embed_bwd_torch(grad_out, lora_a, lora_b, num_prompt, scale)
    grad_prompt, grad_a, grad_b = grads
    if grad_a is None:  # two distinct empties: custom-op outputs may not alias each other
        grad_a, grad_b = (grad_out.new_empty((0,), dtype=grad_prompt.dtype) for _ in range(2))
    return grad_prompt, grad_a, grad_b


@dept_embed_bwd_op.register_fake
def _dept_embed_bwd_fake(grad_out, lora_a, lora_b, num_prompt, scale, backend):
    acc = accumulate_dtype(grad_out.dtype)
    grad_prompt = grad_out.new_empty((num_prompt, grad_out.shape[2]), dtype=acc)
    if lora_a is None:
        return grad_prompt, grad_out.new_empty((0,), dtype=acc), grad_out.new_empty((0,), dtype=acc)
    return grad_prompt, lora_a.new_empty(lora_a.shape, dtype=acc), lora_b.new_empty(lora_b.shape, dtype=acc)


def _setup_context(ctx, inputs, output):
    _, _, prompt, lora_a, lora_b, _, scale, _, backend = inputs
    ctx.save_for_backward(lora_a, lora_b)
    ctx.num_prompt = prompt.shape[0]
    ctx.prompt_dtype = prompt.dtype
    ctx.scale = scale
    ctx.backend = backend


def _backward(ctx, grad_embeds, _grad_mask):
    lora_a, lora_b = ctx.saved_tensors
    grad_prompt, grad_a, grad_b = dept_embed_bwd_op(grad_embeds, lora_a, lora_b, ctx.num_prompt, ctx.scale, ctx.backend)
    grad_prompt = grad_prompt.to(ctx.prompt_dtype)
    if lora_a is None:
        grad_a = grad_b = None
    else:
        grad_a, grad_b = grad_a.to(lora_a.dtype), grad_b.to(lora_b.dtype)
    return None, None, grad_prompt, grad_a, grad_b, None, None, None, None


dept_embed_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------------
# public entries
# ----------------------------------------------------------------------------------------------------------------


def check_lora_shapes(
    lora_a: Tensor, lora_b: Tensor, seq_len: int, hidden: int, *, method: str, width_source: str = "weight (V, d)"
) -> None:
    """``lora_a (L_max, r)`` with ``r >= 1`` and ``L_max >= seq_len``, ``lora_b (r, d)``: DePT's and EPT's pair.
    ``method`` names the caller's method in the messages; ``width_source`` the argument that gives ``d``."""
    if lora_a.shape[1] == 0:
        raise ValueError(f"lora_a must have shape (L_max, r) with r >= 1, got {tuple(lora_a.shape)}")
    if lora_b.shape != (lora_a.shape[1], hidden):
        raise ValueError(
            f"lora_b must have shape (r, d) = ({lora_a.shape[1]}, {hidden}) to match lora_a (L_max, r) = "
            f"{tuple(lora_a.shape)} and {width_source}, got {tuple(lora_b.shape)}"
        )
    if seq_len > lora_a.shape[0]:
        raise ValueError(
            f"input_ids has L = {seq_len} tokens but lora_a has L_max = {lora_a.shape[0]} rows: the sequence is "
            f"longer than {method}'s max_length; truncate the input or build {method} with max_length >= {seq_len}"
        )


def _run(input_ids, weight, prompt, lora, attention_mask, scale, backend, check_ids):
    """Validate, pick the backend, call the forward op. ``lora`` is ``(lora_a, lora_b)`` or None."""
    params = {"prompt": (prompt, 2, "(m, d)")}
    if lora is not None:
        params.update({"lora_a": (lora[0], 2, "(L_max, r)"), "lora_b": (lora[1], 2, "(r, d)")})
    backend = validate_embed_call(input_ids, weight, attention_mask, backend, params)
    lora_a, lora_b = lora if lora is not None else (None, None)
    if lora is not None:
        check_lora_shapes(lora_a, lora_b, input_ids.shape[1], weight.shape[1], method="DePT")
    check_embed_sizes(input_ids, weight, prompt.shape[0], f"prompt (m, d) = {tuple(prompt.shape)}", attention_mask)
    return dept_embed_fwd_op(
        input_ids, weight, prompt, lora_a, lora_b, attention_mask, scale, resolve_check_ids(check_ids), backend
    )


def prompt_embed(
    input_ids: Tensor,
    weight: Tensor,
    prompt: Tensor,
    *,
    attention_mask: Tensor | None = None,
    backend: str | None = None,
    check_ids: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Vanilla prompt-tuning input: the soft prompt prepended to the token embeddings.

    Args:
        input_ids: ``(B, L)`` int64 or int32 token ids in ``[0, V)``.
        weight: ``(V, d)`` frozen word-embedding table (fp32, fp16 or bf16; must not require grad).
        prompt: ``(m, d)`` trainable soft prompt (usually fp32). The parameters of every method (here the prompt,
            elsewhere also its factors) share one floating dtype: a mix raises TypeError on both backends.
        attention_mask: optional ``(B, L)`` mask of any bool/int/float dtype (finite values).
        backend: ``"auto"`` (default, or ``$PROMPT_OPS_BACKEND``), ``"triton"`` or ``"torch"``.
        check_ids: validate that ids are in range and that a float ``attention_mask`` is finite (default, or
            ``$PROMPT_OPS_CHECK_IDS``). The check reads the ids on the host (one sync); pass ``False`` when
            capturing CUDA graphs. Unchecked out-of-range ids give zero rows in the Triton kernel instead of an
            illegal memory access (the torch backend raises torch's own IndexError).

    Returns:
        ``inputs_embeds (B, m+L, d)`` in ``weight.dtype`` (rows ``0..m-1`` the prompt) and the mask ``(B, m+L)``:
        ones for the prompt, then ``attention_mask`` (ones if None), in its dtype (int64 if None).
        ``B = 0`` gives empty outputs; ``L = 0`` gives the prompt alone.
    """
    return _run(input_ids, weight, prompt, None, attention_mask, 0.0, backend, check_ids)


def dept_embed(
    input_ids: Tensor,
    weight: Tensor,
    prompt: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    *,
    scale: float,
    attention_mask: Tensor | None = None,
    backend: str | None = None,
    check_ids: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """DePT input (Shi & Lipani, ICLR 2024): prompt tuning plus a position-wise low-rank offset.

    Row ``m + t`` of the output is ``(weight[input_ids[b, t]].float() + scale * lora_a[t] @ lora_b)`` rounded once
    to ``weight.dtype``; rows ``0..m-1`` are ``prompt``. ``lora_a`` is ``(L_max, r)`` and ``lora_b`` ``(r, d)``
    (trainable, usually fp32); DePT's scale is ``lora_alpha / sqrt(r)``. ``L <= L_max`` is required. Gradients
    reach ``prompt``, ``lora_a`` and ``lora_b`` (reduced over the batch first; rows of ``lora_a`` at positions
    ``>= L`` get zero). Other arguments and the outputs as in :func:`prompt_embed`.
    """
    scale = check_scale(scale)
    return _run(input_ids, weight, prompt, (lora_a, lora_b), attention_mask, scale, backend, check_ids)
