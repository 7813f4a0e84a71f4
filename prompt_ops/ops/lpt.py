"""``lpt_prompt``: LPT's instance-dependent prompt generators (Liu et al., Findings of EMNLP 2022).

From the layer-``k`` hidden states ``(B, L, d)`` of a frozen model, NPG (``mode="naive"``, the official default)
reads one row per sample (``index[b]``, token 0 when None) and APPG (``mode="pool"``) average-pools each sample's
valid rows (right padding, from ``attention_mask``) into ``n`` windows; both then run ``relu(. @ w_down + b_down)
@ w_up + b_up`` and dropout. Only the generator trains: no gradient flows to ``hidden``.

On the Triton backend the generator is the custom op ``prompt_ops::lpt_prompt_fwd/bwd`` (``prompt_ops.kernels.lpt``:
two launches forward, three backward). On the torch backend it is a few eager ops (a cumulative sum gives every
pooling window's mean at once) that autograd differentiates. The dropout masks of the two backends differ; each is
reproducible from ``seed``.
"""

import torch

from prompt_ops.ops.adept_embed import check_dropout
from prompt_ops.ops.validation import check_tensor, validate_params

Tensor = torch.Tensor
MODES = ("naive", "pool")


def slot_windows(
    batch: int, seq_len: int, num_tokens: int, mode: str, index: Tensor | None, attention_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Row windows ``[start, end)`` of every slot, flattened ``(S,)`` int64: one slot per sample for NPG, ``n``
    adaptive-pooling windows per sample for APPG."""
    device = index.device if index is not None else (attention_mask.device if attention_mask is not None else None)
    if mode == "naive":
        starts = index.to(torch.int64) if index is not None else torch.zeros(batch, dtype=torch.int64, device=device)
        return starts, starts + 1
    if attention_mask is not None:
        lengths = attention_mask.to(torch.int64).sum(1)
    else:
        lengths = torch.full((batch,), seq_len, dtype=torch.int64, device=device)
    slots = torch.arange(num_tokens, dtype=torch.int64, device=lengths.device)
    starts = (slots[None, :] * lengths[:, None]) // num_tokens
    ends = ((slots[None, :] + 1) * lengths[:, None] + num_tokens - 1) // num_tokens
    return starts.reshape(-1), ends.reshape(-1)


def lpt_prompt_torch(hidden, w_down, b_down, w_up, b_up, starts, ends, num_tokens, dropout_p, seed):
    """Eager generator: window means through a cumulative sum, then the two projections."""
    batch, seq_len, hidden_size = hidden.shape
    projected = torch.addmm(b_down, hidden.reshape(-1, hidden_size).to(w_down.dtype), w_down)  # (B*L, h)
    cumulative = torch.cat([projected.new_zeros(batch, 1, w_down.shape[1]), projected.view(batch, seq_len, -1)], 1)
    cumulative = cumulative.cumsum(1)
    samples = torch.arange(starts.numel(), device=hidden.device) // (starts.numel() // batch)
    window_sums = cumulative[samples, ends] - cumulative[samples, starts]  # (S, h)
    pooled = window_sums / (ends - starts).unsqueeze(1).to(window_sums.dtype)
    out = torch.addmm(b_up, torch.relu(pooled), w_up)  # (S, width)
    if dropout_p > 0.0:
        generator = torch.Generator(device=hidden.device).manual_seed(seed)
        keep = torch.rand(out.shape, generator=generator, device=hidden.device) >= dropout_p
        out = out * keep.to(out.dtype) / (1.0 - dropout_p)
    return out.reshape(batch, num_tokens, hidden_size)


@torch.library.custom_op("prompt_ops::lpt_prompt_fwd", mutates_args=())
def lpt_prompt_fwd_op(
    hidden: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    starts: Tensor,
    ends: Tensor,
    dropout_p: float,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Triton generator: ``(P (S, width), pre (S, h))``; ``pre`` is kept for the backward."""
    from prompt_ops.kernels.lpt import lpt_generate_fwd

    return lpt_generate_fwd(hidden, starts, ends, w_down, b_down, w_up, b_up, dropout_p, seed)


@lpt_prompt_fwd_op.register_fake
def _lpt_prompt_fwd_fake(hidden, w_down, b_down, w_up, b_up, starts, ends, dropout_p, seed):
    num_slots = starts.shape[0]
    return (
        hidden.new_empty((num_slots, w_up.shape[1]), dtype=torch.float32),
        hidden.new_empty((num_slots, w_down.shape[1]), dtype=torch.float32),
    )


@torch.library.custom_op("prompt_ops::lpt_prompt_bwd", mutates_args=())
def lpt_prompt_bwd_op(
    grad: Tensor, hidden: Tensor, starts: Tensor, ends: Tensor, pre: Tensor, w_up: Tensor, dropout_p: float, seed: int
) -> list[Tensor]:
    """fp32 ``[d_w_down, d_b_down, d_w_up, d_b_up]``; no gradient to ``hidden``."""
    from prompt_ops.kernels.lpt import lpt_generate_bwd

    return list(lpt_generate_bwd(grad, hidden, starts, ends, pre, w_up, dropout_p, seed))


@lpt_prompt_bwd_op.register_fake
def _lpt_prompt_bwd_fake(grad, hidden, starts, ends, pre, w_up, dropout_p, seed):
    hidden_size, gen_rank, width = hidden.shape[2], pre.shape[1], w_up.shape[1]
    shapes = ((hidden_size, gen_rank), (gen_rank,), (gen_rank, width), (width,))
    return [grad.new_empty(shape, dtype=torch.float32) for shape in shapes]


def _setup_context(ctx, inputs, output):
    hidden, w_down, b_down, w_up, b_up, starts, ends, dropout_p, seed = inputs
    ctx.save_for_backward(hidden, starts, ends, output[1], w_up)
    ctx.dtypes = [t.dtype for t in (w_down, b_down, w_up, b_up)]
    ctx.dropout_p, ctx.seed = dropout_p, seed


def _backward(ctx, grad, _grad_pre):
    hidden, starts, ends, pre, w_up = ctx.saved_tensors
    grads = lpt_prompt_bwd_op(grad, hidden, starts, ends, pre, w_up, ctx.dropout_p, ctx.seed)
    return (None, *[g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True)], None, None, None, None)


lpt_prompt_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _check_generator(hidden, w_down, b_down, w_up, b_up, num_tokens, mode, index, attention_mask) -> None:
    batch, seq_len, hidden_size = hidden.shape
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be an int >= 1, got {num_tokens!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    gen_rank = w_down.shape[1]
    width = num_tokens * hidden_size if mode == "naive" else hidden_size
    expected = {"w_down": (w_down, (hidden_size, gen_rank)), "b_down": (b_down, (gen_rank,)),
                "w_up": (w_up, (gen_rank, width)), "b_up": (b_up, (width,))}  # fmt: skip
    for name, (value, shape) in expected.items():
        if tuple(value.shape) != shape or gen_rank == 0:
            raise ValueError(
                f"{name} must have shape {shape} for mode={mode!r}, num_tokens={num_tokens}, d={hidden_size} and "
                f"w_down (d, h) = {tuple(w_down.shape)}, got {tuple(value.shape)}"
            )
    if index is not None:
        check_tensor("index", index, 1, "(B,)")
        if index.shape[0] != batch or index.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"index must be an int64 or int32 tensor of shape ({batch},), got {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= seq_len):
            raise ValueError(f"index must be in [0, {seq_len}) (rows of hidden), got {index.tolist()}")
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask, 2, "(B, L)")
        if attention_mask.shape != (batch, seq_len):
            raise ValueError(f"attention_mask must have shape {(batch, seq_len)}, got {tuple(attention_mask.shape)}")
    if mode == "pool":
        lengths = attention_mask.sum(1) if attention_mask is not None else torch.full((batch,), seq_len)
        if batch and int(lengths.min()) < 1:
            raise ValueError("attention_mask has an all-padding row: APPG pools over at least one valid token")


def lpt_prompt(
    hidden: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    *,
    num_tokens: int,
    index: Tensor | None = None,
    attention_mask: Tensor | None = None,
    mode: str = "naive",
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | None = None,
    backend: str | None = None,
) -> Tensor:
    """LPT prompt ``(B, n, d)`` in fp32 from layer-``k`` hidden states ``(B, L, d)`` (gradient-free).

    NPG: ``w_down (d, h)``, ``b_down (h,)``, ``w_up (h, n*d)``, ``b_up (n*d,)``. APPG: ``w_up (h, d)``,
    ``b_up (d,)``; ``attention_mask`` (right padding) gives each sample's length. Dropout on the output in training,
    keyed by ``seed`` as in :func:`prompt_ops.adept_embed`. Gradients reach the four generator tensors only.
    """
    params = {
        "hidden": (hidden, 3, "(B, L, d)"),
        "w_down": (w_down, 2, "(d, h)"),
        "b_down": (b_down, 1, "(h,)"),
        "w_up": (w_up, 2, "(h, n*d) or (h, d)"),
        "b_up": (b_up, 1, "(n*d,) or (d,)"),
    }
    extras = {"index": index, "attention_mask": attention_mask}  # rank and dtype checked with the generator
    backend = validate_params(params, backend, **{k: v for k, v in extras.items() if isinstance(v, Tensor)})
    _check_generator(hidden, w_down, b_down, w_up, b_up, num_tokens, mode, index, attention_mask)
    dropout_p, seed = check_dropout(dropout_p, training, seed)
    batch, seq_len, hidden_size = hidden.shape
    hidden = hidden.detach()  # the layers below k are frozen and run without gradients
    starts, ends = slot_windows(batch, seq_len, num_tokens, mode, index, attention_mask)
    starts, ends = starts.to(hidden.device), ends.to(hidden.device)
    if backend == "triton":
        out, _ = lpt_prompt_fwd_op(hidden, w_down, b_down, w_up, b_up, starts, ends, dropout_p, seed)
        return out.reshape(batch, num_tokens, hidden_size)
    return lpt_prompt_torch(hidden, w_down, b_down, w_up, b_up, starts, ends, num_tokens, dropout_p, seed)
