"""``adept_embed``: the model input of ADePT (Tang, Hu & Liu, ICLR 2025), a token-shared FFN offset.

Custom ops ``prompt_ops::adept_embed_fwd`` / ``prompt_ops::adept_embed_bwd`` carry either backend, with fake
implementations and ``register_autograd``, as for ``dept_embed``. Dropout (training only, before the ReLU, inverted)
is keyed by an integer ``seed``: the forward and the backward regenerate the same mask from it. The Triton kernels use
a counter-based philox stream; the torch backend a ``torch.Generator`` seeded with ``seed``; the two masks differ,
each is reproducible.
"""

import numbers

import torch

from prompt_ops.ops.backend import resolve_check_ids
from prompt_ops.ops.common import accumulate_dtype, custom_op
from prompt_ops.ops.validation import (
    check_embed_sizes,
    check_int32_index,
    check_probability,
    check_token_data,
    validate_embed_call,
)

Tensor = torch.Tensor
SEED_BOUND = 2**31 - 1


def dropout_multipliers_torch(num_tokens: int, rank: int, dropout_p: float, seed: int, device, dtype) -> Tensor:
    """The torch backend's ``(N, r)`` inverted-dropout multipliers for ``seed``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    keep = torch.rand((num_tokens, rank), generator=generator, device=device) >= dropout_p
    return keep.to(dtype) / (1.0 - dropout_p)


def _hidden_torch(input_ids, weight, w_down, b_down, dropout_p, seed):
    """``E`` (N, d) in the accumulate dtype, and ``Hd = (E @ w_down + b_down) * D`` (N, r)."""
    acc = accumulate_dtype(weight.dtype, w_down.dtype)
    emb = torch.nn.functional.embedding(input_ids.reshape(-1), weight).to(acc)
    hidden = torch.addmm(b_down.to(acc), emb, w_down.to(acc))
    if dropout_p > 0.0:
        hidden.mul_(dropout_multipliers_torch(*hidden.shape, dropout_p, seed, hidden.device, acc))
    return emb, hidden


def adept_embed_fwd_torch(input_ids, weight, prompt, w_down, b_down, w_up, b_up, attention_mask, dropout_p, seed):
    """Eager forward into preallocated outputs: two ``addmm`` and one fp32 add rounded once into the output."""
    batch, seq_len = input_ids.shape
    num_prompt, hidden_size = prompt.shape
    total = num_prompt + seq_len
    out = weight.new_empty((batch, total, hidden_size))
    out[:, :num_prompt] = prompt
    emb, hidden = _hidden_torch(input_ids, weight, w_down, b_down, dropout_p, seed)
    offset = torch.addmm(b_up.to(emb.dtype), hidden.relu_(), w_up.to(emb.dtype))  # (N, d)
    shape = (batch, seq_len, hidden_size)
    torch.add(emb.view(shape), offset.view(shape), out=out[:, num_prompt:])  # fp32 add, rounded once
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    mask = torch.ones((batch, total), dtype=mask_dtype, device=weight.device)
    if attention_mask is not None:
        mask[:, num_prompt:] = attention_mask
    return out, mask


def adept_embed_bwd_torch(grad_out, input_ids, weight, w_down, b_down, w_up, num_prompt, dropout_p, seed):
    """Eager backward: recompute ``E`` and ``Hd``, then the skinny matmuls of the chain rule (see the kernels)."""
    hidden_size, rank = w_down.shape
    emb, hidden = _hidden_torch(input_ids, weight, w_down, b_down, dropout_p, seed)
    acc = emb.dtype
    flat = torch.empty(2 * hidden_size * rank + rank + hidden_size, dtype=acc, device=grad_out.device)
    d_w_down, d_b_down, d_w_up, d_b_up = split_ffn_grads(flat, hidden_size, rank)
    grad_y = grad_out[:, num_prompt:].reshape(-1, hidden_size).to(acc)  # (N, d)
    act = hidden.relu()
    torch.mm(act.t(), grad_y, out=d_w_up)
    torch.sum(grad_y, 0, out=d_b_up)
    grad_h = (grad_y @ w_up.to(acc).t()).mul_(hidden > 0)
    if dropout_p > 0.0:
        grad_h.mul_(dropout_multipliers_torch(*grad_h.shape, dropout_p, seed, grad_h.device, acc))
    torch.mm(emb.t(), grad_h, out=d_w_down)
    torch.sum(grad_h, 0, out=d_b_down)
    grad_prompt = grad_out[:, :num_prompt].sum(0, dtype=acc)
    return grad_prompt, flat


def split_ffn_grads(flat: Tensor, hidden_size: int, rank: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Views ``(d_w_down (d, r), d_b_down (r,), d_w_up (r, d), d_b_up (d,))`` of a flat gradient buffer."""
    w_down, b_down, w_up, b_up = torch.split(flat, [hidden_size * rank, rank, rank * hidden_size, hidden_size])
    return w_down.view(hidden_size, rank), b_down, w_up.view(rank, hidden_size), b_up


@custom_op("prompt_ops::adept_embed_fwd")
def adept_embed_fwd_op(
    input_ids: Tensor,
    weight: Tensor,
    prompt: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    attention_mask: Tensor | None,
    dropout_p: float,
    seed: int,
    check_ids: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Forward custom op; ``dropout_p = 0`` is eval (no mask drawn)."""
    if check_ids:
        check_token_data(input_ids, weight.shape[0], attention_mask)
    args = (input_ids, weight, prompt, w_down, b_down, w_up, b_up, attention_mask, dropout_p, seed)
    if backend == "triton":
        from prompt_ops.kernels.adept_embed import adept_embed_fwd

        return adept_embed_fwd(*args)
    return adept_embed_fwd_torch(*args)


@adept_embed_fwd_op.register_fake
def _adept_embed_fwd_fake(
    input_ids, weight, prompt, w_down, b_down, w_up, b_up, attention_mask, dropout_p, seed, check_ids, backend
):
    batch, seq_len = input_ids.shape
    num_prompt, hidden_size = prompt.shape
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    embeds = weight.new_empty((batch, num_prompt + seq_len, hidden_size))
    return embeds, input_ids.new_empty((batch, num_prompt + seq_len), dtype=mask_dtype)


@custom_op("prompt_ops::adept_embed_bwd")
def adept_embed_bwd_op(
    grad_out: Tensor,
    input_ids: Tensor,
    weight: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    num_prompt: int,
    dropout_p: float,
    seed: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Backward custom op: ``d_prompt (m, d)`` and the flat ``[d_w_down | d_b_down | d_w_up | d_b_up]`` buffer."""
    args = (grad_out, input_ids, weight, w_down, b_down, w_up, num_prompt, dropout_p, seed)
    if backend == "triton":
        from prompt_ops.kernels.adept_embed import adept_embed_bwd

        return adept_embed_bwd(*args)
    return adept_embed_bwd_torch(*args)


@adept_embed_bwd_op.register_fake
def _adept_embed_bwd_fake(grad_out, input_ids, weight, w_down, b_down, w_up, num_prompt, dropout_p, seed, backend):
    hidden_size, rank = w_down.shape
    acc = torch.float32 if backend == "triton" else accumulate_dtype(weight.dtype, w_down.dtype)
    grad_prompt = grad_out.new_empty((num_prompt, hidden_size), dtype=acc)
    return grad_prompt, grad_out.new_empty((2 * hidden_size * rank + rank + hidden_size,), dtype=acc)


def _setup_context(ctx, inputs, output):
    input_ids, weight, prompt, w_down, b_down, w_up, b_up, _, dropout_p, seed, _, backend = inputs
    ctx.save_for_backward(input_ids, weight, w_down, b_down, w_up)
    ctx.num_prompt = prompt.shape[0]
    ctx.dtypes = (prompt.dtype, w_down.dtype, b_down.dtype, w_up.dtype, b_up.dtype)
    ctx.dropout_p, ctx.seed, ctx.backend = dropout_p, seed, backend


def _backward(ctx, grad_embeds, _grad_mask):
    input_ids, weight, w_down, b_down, w_up = ctx.saved_tensors
    grad_prompt, flat = adept_embed_bwd_op(
        grad_embeds, input_ids, weight, w_down, b_down, w_up, ctx.num_prompt, ctx.dropout_p, ctx.seed, ctx.backend
    )
    grads = (grad_prompt, *split_ffn_grads(flat, *w_down.shape))
    grads = [g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True)]
    return None, None, *grads, None, None, None, None, None


adept_embed_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _check_ffn_shapes(w_down: Tensor, b_down: Tensor, w_up: Tensor, b_up: Tensor, hidden_size: int) -> None:
    if w_down.shape[0] != hidden_size or w_down.shape[1] == 0:
        raise ValueError(
            f"w_down must have shape (d, r) with d = weight.shape[1] = {hidden_size} and r >= 1, "
            f"got {tuple(w_down.shape)}"
        )
    rank = w_down.shape[1]
    expected = {"b_down": (b_down, (rank,)), "w_up": (w_up, (rank, hidden_size)), "b_up": (b_up, (hidden_size,))}
    for name, (value, shape) in expected.items():
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} to match w_down (d, r) = {tuple(w_down.shape)}, "
                f"got {tuple(value.shape)}"
            )


def check_dropout(dropout_p: object, training: object, seed: object) -> tuple[float, int]:
    """Returns the effective probability (0 unless training) and the seed (drawn when needed and missing)."""
    dropout_p = check_probability("dropout_p", dropout_p)
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int in [0, {SEED_BOUND}) or None, got {type(seed).__name__}")
        if not 0 <= seed < SEED_BOUND:
            raise ValueError(f"seed must be an int in [0, {SEED_BOUND}) or None, got {seed}")
        seed = int(seed)
    effective = dropout_p if training else 0.0
    if effective > 0.0 and seed is None:
        seed = int(torch.randint(SEED_BOUND, ()).item())  # drawn from torch's global generator
    return effective, seed if seed is not None else 0


def adept_embed(
    input_ids: Tensor,
    weight: Tensor,
    prompt: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    *,
    attention_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | None = None,
    backend: str | None = None,
    check_ids: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """ADePT input: the prompt prepended to ``E + relu(dropout(E @ w_down + b_down)) @ w_up + b_up``.

    ``w_down (d, r)``, ``b_down (r,)``, ``w_up (r, d)``, ``b_up (d,)`` are trainable (usually fp32); the offset is
    computed in fp32 and rounded once to ``weight.dtype``. Dropout acts only when ``training`` and ``dropout_p > 0``,
    on the pre-activation (before the ReLU, as the official code does), inverted (kept values scaled by
    ``1/(1-p)``). The same ``seed`` gives the same mask; ``seed=None`` draws one from torch's global generator (pass
    it explicitly under ``torch.compile``). Gradients reach ``prompt`` and the four FFN tensors. The Triton backend
    takes ``r <= 64``. Other arguments and the outputs as in :func:`prompt_ops.prompt_embed`.
    """
    params = {
        "prompt": (prompt, 2, "(m, d)"),
        "w_down": (w_down, 2, "(d, r)"),
        "b_down": (b_down, 1, "(r,)"),
        "w_up": (w_up, 2, "(r, d)"),
        "b_up": (b_up, 1, "(d,)"),
    }
    backend = validate_embed_call(input_ids, weight, attention_mask, backend, params)
    _check_ffn_shapes(w_down, b_down, w_up, b_up, weight.shape[1])
    effective_p, seed = check_dropout(dropout_p, training, seed)
    check_embed_sizes(input_ids, weight, prompt.shape[0], f"prompt (m, d) = {tuple(prompt.shape)}", attention_mask)
    if backend == "triton":
        from prompt_ops.kernels.adept_embed import block_rank

        block_rank(w_down.shape[1])  # refuses ranks the kernels do not take, before any launch
        if effective_p > 0.0:
            sources = f"input_ids (B, L) = {tuple(input_ids.shape)} and w_down (d, r) = {tuple(w_down.shape)}"
            check_int32_index("B * L * r dropout multipliers", input_ids.numel() * w_down.shape[1], sources)
    return adept_embed_fwd_op(
        input_ids, weight, prompt, w_down, b_down, w_up, b_up, attention_mask, effective_p, seed,
        resolve_check_ids(check_ids), backend,
    )  # fmt: skip
