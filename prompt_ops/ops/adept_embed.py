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
from prompt_ops.ops.common import accumulate_dtype, custom_op, fake_embed_outputs
from prompt_ops.ops.validation import (
    check_embed_sizes,
    check_int32_index,
    check_probability,
    check_token_data,
    validate_embed_call,
)

Tensor = torch.Tensor
SEED_BOUND = 2**31 - 1


def dropout_multipliers_torch(
    num_tokens: int, rank: int, dropout_p: float | Tensor, seed: int, device, dtype
) -> Tensor:  # fmt: skip
    """The torch backend's ``(N, r)`` inverted-dropout multipliers for ``seed``; ``dropout_p`` is one probability,
    or a ``(N, 1)`` tensor of one per token (a mixed bank's rows of different adapters)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    keep = torch.rand((num_tokens, rank), generator=generator, device=device) >= dropout_p
    return keep.to(dtype) / (1.0 - dropout_p)


def ffn_hidden_torch(emb: Tensor, w_down: Tensor, b_down: Tensor, multipliers: Tensor | None) -> Tensor:
    """``Hd = (E @ w_down + b_down) * D`` ``(n, r)`` in ``emb``'s dtype, for ``E = emb (n, d)`` and the dropout
    multipliers ``D`` ``(n, r)`` (None: eval)."""
    hidden = torch.addmm(b_down.to(emb.dtype), emb, w_down.to(emb.dtype))
    if multipliers is not None:
        hidden.mul_(multipliers)
    return hidden


def ffn_offset_torch(hidden: Tensor, w_up: Tensor, b_up: Tensor) -> Tensor:
    """The offset ``relu(Hd) @ w_up + b_up`` ``(n, d)`` in ``hidden``'s dtype (``hidden`` is rectified in place)."""
    return torch.addmm(b_up.to(hidden.dtype), hidden.relu_(), w_up.to(hidden.dtype))


def ffn_grads_torch(
    emb: Tensor, hidden: Tensor, grad_y: Tensor, w_up: Tensor, multipliers: Tensor | None,
    out: tuple[Tensor, Tensor, Tensor, Tensor],
) -> None:  # fmt: skip
    """The chain rule of the FFN offset (see ``prompt_ops.kernels.adept_embed``) for ``E = emb (n, d)``, its
    ``Hd = hidden (n, r)`` (not rectified) and ``dY = grad_y (n, d)``, written into ``out = (d_w_down (d, r),
    d_b_down (r,), d_w_up (r, d), d_b_up (d,))``: skinny matmuls and sums over the ``n`` tokens."""
    d_w_down, d_b_down, d_w_up, d_b_up = out
    torch.mm(hidden.relu().t(), grad_y, out=d_w_up)
    torch.sum(grad_y, 0, out=d_b_up)
    grad_h = (grad_y @ w_up.to(grad_y.dtype).t()).mul_(hidden > 0)
    if multipliers is not None:
        grad_h.mul_(multipliers)
    torch.mm(emb.t(), grad_h, out=d_w_down)
    torch.sum(grad_h, 0, out=d_b_down)


def _hidden_torch(input_ids, weight, w_down, b_down, dropout_p, seed):
    """``E`` (N, d) in the accumulate dtype, ``Hd = (E @ w_down + b_down) * D`` (N, r) and ``D`` (None: eval)."""
    acc = accumulate_dtype(weight.dtype, w_down.dtype)
    emb = torch.nn.functional.embedding(input_ids.reshape(-1), weight).to(acc)
    multipliers = None
    if dropout_p > 0.0:
        multipliers = dropout_multipliers_torch(emb.shape[0], w_down.shape[1], dropout_p, seed, emb.device, acc)
    return emb, ffn_hidden_torch(emb, w_down, b_down, multipliers), multipliers


def adept_embed_fwd_torch(input_ids, weight, prompt, w_down, b_down, w_up, b_up, attention_mask, dropout_p, seed):
    """Eager forward into preallocated outputs: two ``addmm`` and one fp32 add rounded once into the output."""
    batch, seq_len = input_ids.shape
    num_prompt, hidden_size = prompt.shape
    total = num_prompt + seq_len
    out = weight.new_empty((batch, total, hidden_size))
    out[:, :num_prompt] = prompt
    emb, hidden, _ = _hidden_torch(input_ids, weight, w_down, b_down, dropout_p, seed)
    offset = ffn_offset_torch(hidden, w_up, b_up)  # (N, d)
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
    emb, hidden, multipliers = _hidden_torch(input_ids, weight, w_down, b_down, dropout_p, seed)
    acc = emb.dtype
    flat = torch.empty(2 * hidden_size * rank + rank + hidden_size, dtype=acc, device=grad_out.device)
    grad_y = grad_out[:, num_prompt:].reshape(-1, hidden_size).to(acc)  # (N, d)
    ffn_grads_torch(emb, hidden, grad_y, w_up, multipliers, split_ffn_grads(flat, hidden_size, rank))
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
    return fake_embed_outputs(input_ids, weight, *prompt.shape, attention_mask)


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


def check_ffn_shapes(
    w_down: Tensor, b_down: Tensor, w_up: Tensor, b_up: Tensor, hidden_size: int, layout: str = "(d, r)"
) -> None:  # fmt: skip
    """``w_down (d, r)`` with ``r >= 1``, ``b_down (r,)``, ``w_up (r, d)``, ``b_up (d,)``: ADePT's FFN. Stacked FFNs
    (leading dimensions, e.g. a bank's ``(N, d, r_max)``) are checked on their trailing dimensions, the leading ones
    shared; ``layout`` names ``w_down``'s shape in the messages."""
    lead, (width, rank) = tuple(w_down.shape[:-2]), w_down.shape[-2:]
    if width != hidden_size or rank == 0:
        raise ValueError(
            f"w_down must have shape {layout} with d = weight.shape[1] = {hidden_size} and r >= 1, "
            f"got {tuple(w_down.shape)}"
        )
    expected = {
        "b_down": (b_down, (*lead, rank)),
        "w_up": (w_up, (*lead, rank, hidden_size)),
        "b_up": (b_up, (*lead, hidden_size)),
    }
    for name, (value, shape) in expected.items():
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} to match w_down {layout} = {tuple(w_down.shape)}, "
                f"got {tuple(value.shape)}"
            )


def check_seed(seed: object) -> int | None:
    """A dropout seed: None, or an int in ``[0, 2**31 - 1)``."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int in [0, {SEED_BOUND}) or None, got {type(seed).__name__}")
    if not 0 <= seed < SEED_BOUND:
        raise ValueError(f"seed must be an int in [0, {SEED_BOUND}) or None, got {seed}")
    return int(seed)


def check_training(training: object) -> bool:
    """The ``training`` flag: a bool."""
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    return training


def resolve_seed(seed: int | None, active: bool) -> int:
    """The seed of an active dropout (drawn from torch's global generator when None), else the given one or 0."""
    if active and seed is None:
        seed = int(torch.randint(SEED_BOUND, ()).item())  # drawn from torch's global generator
    return seed if seed is not None else 0


def check_dropout(dropout_p: object, training: object, seed: object) -> tuple[float, int]:
    """Returns the effective probability (0 unless training) and the seed (drawn when needed and missing)."""
    dropout_p = check_probability("dropout_p", dropout_p)
    training = check_training(training)
    seed = check_seed(seed)
    effective = dropout_p if training else 0.0
    return effective, resolve_seed(seed, effective > 0.0)


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
    check_ffn_shapes(w_down, b_down, w_up, b_up, weight.shape[1])
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
