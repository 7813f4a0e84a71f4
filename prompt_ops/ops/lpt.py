"""``lpt_prompt`` and ``lpt_insert``: LPT's instance-dependent prompt generators (Liu et al., Findings of EMNLP
2022), and the insertion of the prompt in front of the layer-``k`` hidden states.

From the layer-``k`` hidden states ``(B, L, d)`` of a frozen model, the official code's three generators:

- NPG (``mode="naive"``, the official default) reads one row per sample (``index[b]``, the first valid row when
  None): ``relu(h @ w_down + b_down) @ w_up + b_up``, viewed as ``(B, n, d)``;
- APPG (``mode="pool"``) projects each sample's pooled rows, ``Z = H @ w_down + b_down``, average-pools them into
  ``n`` adaptive windows (pooling is linear: the kernels pool first, then project), then ReLU and ``@ w_up + b_up``
  per slot;
- MPPG (``mode="max"``) is APPG with adaptive *max* pooling; max does not commute with the projection, so every
  pooled row is projected first.

All three end with dropout. The pooled rows are each sample's valid rows (from ``attention_mask``, wherever the
padding is), or only its first ``source_lengths[b]``. Only the generator trains: no gradient flows to ``hidden``.

On the Triton backend the generator is the custom op ``prompt_ops::lpt_prompt_fwd/bwd`` (``prompt_ops.kernels.lpt``:
two launches forward, three backward), and the insertion ``prompt_ops::lpt_insert_fwd`` (three launches; it shares
the backward). MPPG's backward routes each window's gradient to the row that held its maximum (the first such row
on a tie, as ``torch.max`` and ``nn.AdaptiveMaxPool1d`` do), deterministically. On the torch backend it is a few
eager ops (a cumulative sum gives every averaging window's mean at once, a padded gather and ``torch.max`` every
window's maximum) that autograd differentiates. The dropout masks of the two backends differ; each is reproducible
from ``seed``.
"""

import torch

from prompt_ops.ops.adept_embed import check_dropout
from prompt_ops.ops.common import custom_op
from prompt_ops.ops.positions import leading_pads
from prompt_ops.ops.validation import (
    TOKEN_ID_DTYPES,
    check_float,
    check_int,
    check_int32_index,
    check_mask,
    check_mask_values,
    check_output_sizes,
    check_tensor,
    validate_params,
)

Tensor = torch.Tensor
MODES = ("naive", "pool", "max")


def valid_blocks(attention_mask: Tensor | None, batch: int, seq_len: int, device=None) -> tuple[Tensor, Tensor]:
    """``(first, count)``, ``(B,)`` int64: each row's first valid row (its leading padding,
    :func:`prompt_ops.ops.positions.leading_pads`) and its number of valid (non-zero) rows; every row of ``hidden``
    when there is no mask."""
    if attention_mask is None:
        zeros = torch.zeros(batch, dtype=torch.int64, device=device)
        return zeros, torch.full((batch,), seq_len, dtype=torch.int64, device=device)
    return leading_pads(attention_mask), (attention_mask != 0).sum(1)


def slot_windows(
    batch: int,
    seq_len: int,
    num_tokens: int,
    mode: str,
    index: Tensor | None,
    attention_mask: Tensor | None,
    source_lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Row windows ``[start, end)`` of every slot, flattened ``(S,)`` int64 rows of ``hidden``.

    NPG: one slot per sample, the single row ``index[b]`` (default: the row's first valid row, 0 under right
    padding). Pooling modes: ``n`` adaptive-pooling windows per sample over its pooled block, the ``len`` rows from
    its first valid row on (``len = source_lengths[b]`` when given, else its number of valid rows), so a
    left-padded row pools the rows it pools alone: window ``i`` is ``first + [floor(i*len/n), ceil((i+1)*len/n))``.
    The callers check that the valid rows are one contiguous block."""
    device = index.device if index is not None else (attention_mask.device if attention_mask is not None else None)
    first, count = valid_blocks(attention_mask, batch, seq_len, device)
    if mode == "naive":
        # packed: the kernels read the windows at unit stride
        starts = first if index is None else index.to(torch.int64).contiguous()
        return starts, starts + 1
    lengths = count if source_lengths is None else source_lengths.to(device=first.device, dtype=torch.int64)
    slots = torch.arange(num_tokens, dtype=torch.int64, device=first.device)
    starts, ends = adaptive_windows(first, lengths, slots[None, :], num_tokens)
    return starts.reshape(-1), ends.reshape(-1)


def adaptive_windows(first: Tensor, lengths: Tensor, slots: Tensor, num_tokens: int | Tensor) -> tuple[Tensor, Tensor]:
    """``(starts, ends)`` ``(B, n)``: window ``slots[b, i]`` of ``num_tokens`` (an int, or ``(B, 1)`` per row)
    adaptive-pooling windows over the ``lengths[b]`` rows from row ``first[b]`` on."""
    starts = first[:, None] + (slots * lengths[:, None]) // num_tokens
    ends = first[:, None] + ((slots + 1) * lengths[:, None] + num_tokens - 1) // num_tokens
    return starts, ends


def pooled_rows_only(rows: Tensor, starts: Tensor, ends: Tensor, live: Tensor | None = None) -> Tensor:
    """``rows (B, L, d)`` with every row outside its sample's pooled block zeroed: the block is ``[min start, max
    end)`` of the sample's windows ``starts, ends (B, n)`` (only the ``live (B, n)`` ones when given). The eager
    pooling generators project every row, so a non-finite value in a row no window reads (padding) would otherwise
    reach the cumulative sum and every gradient."""
    seq_len = rows.shape[1]
    low = (starts if live is None else torch.where(live, starts, seq_len)).amin(1)  # (B,)
    high = (ends if live is None else torch.where(live, ends, 0)).amax(1)
    columns = torch.arange(seq_len, device=rows.device)[None, :]
    return rows.masked_fill(~((columns >= low[:, None]) & (columns < high[:, None]))[:, :, None], 0.0)


def lpt_prompt_torch(hidden, w_down, b_down, w_up, b_up, starts, ends, num_tokens, dropout_p, seed, mode):
    """Eager generator. NPG gathers its one row per sample before projecting; APPG projects every row of each
    sample's pooled block (the rows outside it zeroed, :func:`pooled_rows_only`) and takes each window's mean
    through a cumulative sum; MPPG likewise takes each window's maximum."""
    batch, seq_len, hidden_size = hidden.shape
    gen_rank = w_down.shape[1]
    if mode == "naive":
        picked = hidden[torch.arange(batch, device=hidden.device), starts]  # (B, d)
        pooled = torch.addmm(b_down, picked.to(w_down.dtype), w_down)  # (B, h)
        return _up_projection(pooled, w_up, b_up, dropout_p, seed).reshape(batch, num_tokens, hidden_size)
    rows = pooled_rows_only(hidden.to(w_down.dtype), starts.view(batch, num_tokens), ends.view(batch, num_tokens))
    projected = torch.addmm(b_down, rows.reshape(-1, hidden_size), w_down)  # (B*L, h)
    projected = projected.view(batch, seq_len, gen_rank)
    samples = torch.arange(starts.numel(), device=hidden.device) // num_tokens
    if mode == "max":
        pooled = window_max(projected, samples, starts, ends, num_tokens)
    else:
        pooled = window_mean(projected, samples, starts, ends)
    return _up_projection(pooled, w_up, b_up, dropout_p, seed).reshape(batch, num_tokens, hidden_size)


def window_mean(projected: Tensor, samples: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """``(S, h)``: each window's mean of ``projected (B, L, h)`` (window ``s`` is rows ``[starts[s], ends[s])`` of
    sample ``samples[s]``), every one at once from a cumulative sum."""
    batch, _, gen_rank = projected.shape
    cumulative = torch.cat([projected.new_zeros(batch, 1, gen_rank), projected], 1).cumsum(1)  # (B, L+1, h)
    window_sums = cumulative[samples, ends] - cumulative[samples, starts]  # (S, h)
    return window_sums / (ends - starts).unsqueeze(1).to(window_sums.dtype)


def window_max(projected: Tensor, samples: Tensor, starts: Tensor, ends: Tensor, num_tokens: int) -> Tensor:
    """``(S, h)``: each window's column-wise maximum of ``projected (B, L, h)``. The window's rows are gathered,
    padded with ``-inf`` to the widest window a row of ``L`` can have (``ceil(L/n) + 1``, so no sync), and reduced
    with ``torch.max``, whose gradient goes to the first maximal row, as ``nn.AdaptiveMaxPool1d``'s does.
    ``num_tokens`` is the fewest windows of any sample (it bounds the widest window)."""
    seq_len = projected.shape[1]
    widest = min(seq_len, -(-seq_len // num_tokens) + 1)
    rows = starts[:, None] + torch.arange(widest, device=starts.device)  # (S, W)
    inside = rows < ends[:, None]
    gathered = projected[samples[:, None], rows.clamp(max=seq_len - 1)]  # (S, W, h)
    return gathered.masked_fill(~inside[:, :, None], float("-inf")).max(dim=1).values


def _up_projection(pooled, w_up, b_up, dropout_p, seed):
    """``dropout(relu(pooled) @ w_up + b_up)`` (S, width)."""
    out = torch.addmm(b_up, torch.relu(pooled), w_up)
    if dropout_p > 0.0:
        generator = torch.Generator(device=out.device).manual_seed(seed)
        keep = torch.rand(out.shape, generator=generator, device=out.device) >= dropout_p
        out = out * keep.to(out.dtype) / (1.0 - dropout_p)
    return out


def _arg_rows(hidden: Tensor, starts: Tensor, w_down: Tensor, max_pool: bool) -> Tensor:
    """The uninitialised arg-max rows: ``(S, h)`` int64 for MPPG (``max_pool``), an empty ``(0, h)`` placeholder
    for the averaging generators."""
    return hidden.new_empty((starts.shape[0] if max_pool else 0, w_down.shape[1]), dtype=torch.int64)


def _generator_outputs_fake(hidden: Tensor, starts: Tensor, w_down: Tensor, max_pool: bool) -> tuple[Tensor, Tensor]:
    """``pre (S, h)`` fp32 and the arg-max rows, as the Triton generator returns them."""
    pre = hidden.new_empty((starts.shape[0], w_down.shape[1]), dtype=torch.float32)
    return pre, _arg_rows(hidden, starts, w_down, max_pool)


def _prompt_buffer(hidden: Tensor, num_tokens: int) -> Tensor:
    return hidden.new_empty((hidden.shape[0], num_tokens, hidden.shape[2]), dtype=torch.float32)


@custom_op("prompt_ops::lpt_prompt_fwd")
def lpt_prompt_fwd_op(
    hidden: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    starts: Tensor,
    ends: Tensor,
    num_tokens: int,
    dropout_p: float,
    seed: int,
    max_pool: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton generator: ``(P (B, n, d) fp32, pre (S, h), arg_rows)``; ``pre`` and MPPG's (``max_pool``) arg-max
    rows are kept for the backward."""
    from prompt_ops.kernels.lpt import lpt_generate_fwd

    out, arg_rows = _prompt_buffer(hidden, num_tokens), _arg_rows(hidden, starts, w_down, max_pool)
    generator = (hidden, starts, ends, w_down, b_down, w_up, b_up, dropout_p, seed)
    pre = lpt_generate_fwd(*generator, out, arg_rows if max_pool else None)
    return out, pre, arg_rows


@lpt_prompt_fwd_op.register_fake
def _lpt_prompt_fwd_fake(hidden, w_down, b_down, w_up, b_up, starts, ends, num_tokens, dropout_p, seed, max_pool):
    return (_prompt_buffer(hidden, num_tokens), *_generator_outputs_fake(hidden, starts, w_down, max_pool))


@custom_op("prompt_ops::lpt_insert_fwd")
def lpt_insert_fwd_op(
    hidden: Tensor,
    attention_mask: Tensor | None,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    starts: Tensor,
    ends: Tensor,
    num_tokens: int,
    dropout_p: float,
    seed: int,
    max_pool: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton insertion: ``(X (B, n+L, d) in hidden's dtype, mask (B, n+L), pre (S, h), arg_rows)``. The generator
    writes rows ``0..n-1`` of ``X`` directly; one more launch copies ``hidden`` to rows ``n..`` and writes the
    mask."""
    from prompt_ops.kernels.lpt import lpt_insert_fwd

    out, mask_out = _insert_buffers(hidden, attention_mask, num_tokens)
    arg_rows = _arg_rows(hidden, starts, w_down, max_pool)
    generator = (starts, ends, w_down, b_down, w_up, b_up, dropout_p, seed)
    pre = lpt_insert_fwd(hidden, attention_mask, *generator, out, mask_out, arg_rows if max_pool else None)
    return out, mask_out, pre, arg_rows


def _mask_buffer(hidden: Tensor, attention_mask: Tensor | None, num_tokens: int) -> Tensor:
    """The uninitialised ``(B, n+L)`` extended mask, in ``attention_mask``'s dtype (int64 when it is None)."""
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    return hidden.new_empty((hidden.shape[0], num_tokens + hidden.shape[1]), dtype=mask_dtype)


def _insert_buffers(hidden: Tensor, attention_mask: Tensor | None, num_tokens: int) -> tuple[Tensor, Tensor]:
    batch, seq_len, hidden_size = hidden.shape
    out = hidden.new_empty((batch, num_tokens + seq_len, hidden_size))
    return out, _mask_buffer(hidden, attention_mask, num_tokens)


@lpt_insert_fwd_op.register_fake
def _lpt_insert_fwd_fake(hidden, attention_mask, w_down, b_down, w_up, b_up, starts, ends, num_tokens, dropout_p, seed,
                         max_pool):  # fmt: skip
    out, mask_out = _insert_buffers(hidden, attention_mask, num_tokens)
    return out, mask_out, *_generator_outputs_fake(hidden, starts, w_down, max_pool)


@custom_op("prompt_ops::lpt_prompt_bwd")
def lpt_prompt_bwd_op(
    grad: Tensor,
    hidden: Tensor,
    starts: Tensor,
    ends: Tensor,
    pre: Tensor,
    arg_rows: Tensor,
    w_up: Tensor,
    dropout_p: float,
    seed: int,
    max_pool: bool,
) -> list[Tensor]:
    """fp32 ``[d_w_down, d_b_down, d_w_up, d_b_up]`` from the prompt's gradient ``(B, n, d)``; none to ``hidden``.
    MPPG (``max_pool``) routes each window's gradient to its ``arg_rows``."""
    from prompt_ops.kernels.lpt import lpt_generate_bwd

    generator = (grad, hidden, starts, ends, pre, w_up, dropout_p, seed)
    return list(lpt_generate_bwd(*generator, arg_rows if max_pool else None))


@lpt_prompt_bwd_op.register_fake
def _lpt_prompt_bwd_fake(grad, hidden, starts, ends, pre, arg_rows, w_up, dropout_p, seed, max_pool):
    hidden_size, gen_rank, width = hidden.shape[2], pre.shape[1], w_up.shape[1]
    shapes = ((hidden_size, gen_rank), (gen_rank,), (gen_rank, width), (width,))
    return [grad.new_empty(shape, dtype=torch.float32) for shape in shapes]


def _generator_backward(ctx, grad_prompt: Tensor) -> list[Tensor]:
    """The four parameter gradients, in the parameters' dtypes, from the prompt rows' gradient."""
    hidden, starts, ends, pre, arg_rows, w_up = ctx.saved_tensors
    grads = lpt_prompt_bwd_op(grad_prompt, hidden, starts, ends, pre, arg_rows, w_up, ctx.dropout_p, ctx.seed,
                              ctx.max_pool)  # fmt: skip
    return [g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True)]


def _save_generator(ctx, hidden, w_down, b_down, w_up, b_up, starts, ends, num_tokens, dropout_p, seed, max_pool, pre,
                    arg_rows) -> None:  # fmt: skip
    ctx.save_for_backward(hidden, starts, ends, pre, arg_rows, w_up)
    ctx.dtypes = [t.dtype for t in (w_down, b_down, w_up, b_up)]
    ctx.num_tokens, ctx.dropout_p, ctx.seed, ctx.max_pool = num_tokens, dropout_p, seed, max_pool


_NO_GRAD_ARGS = (None,) * 6  # starts, ends, num_tokens, dropout_p, seed, max_pool


def _setup_prompt(ctx, inputs, output):
    _save_generator(ctx, *inputs, *output[1:])


def _backward_prompt(ctx, grad, _grad_pre, _grad_arg_rows):
    return (None, *_generator_backward(ctx, grad), *_NO_GRAD_ARGS)  # no gradient to hidden


def _setup_insert(ctx, inputs, output):
    hidden, _mask, *generator = inputs
    _save_generator(ctx, hidden, *generator, *output[2:])


def _backward_insert(ctx, grad, _grad_mask, _grad_pre, _grad_arg_rows):
    grad_prompt = grad[:, : ctx.num_tokens]  # the rows below are the frozen hidden states: no gradient
    return (None, None, *_generator_backward(ctx, grad_prompt), *_NO_GRAD_ARGS)


lpt_prompt_fwd_op.register_autograd(_backward_prompt, setup_context=_setup_prompt)
lpt_insert_fwd_op.register_autograd(_backward_insert, setup_context=_setup_insert)


def _check_generator(hidden, w_down, b_down, w_up, b_up, num_tokens, mode) -> int:
    """Shapes of ``hidden`` and the generator, ``num_tokens`` (returned as an int) and ``mode``."""
    _, seq_len, hidden_size = hidden.shape
    if seq_len == 0 or hidden_size == 0:
        raise ValueError(
            f"hidden must have shape (B, L, d) with L, d >= 1 (each sample's prompt is generated from its rows), "
            f"got {tuple(hidden.shape)}"
        )
    num_tokens = check_int("num_tokens", num_tokens, 1)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    gen_rank = w_down.shape[1]
    if w_down.shape[0] != hidden_size or gen_rank == 0:
        raise ValueError(
            f"w_down must have shape (d, h) with d = hidden.shape[2] = {hidden_size} and h >= 1, "
            f"got {tuple(w_down.shape)}"
        )
    width = num_tokens * hidden_size if mode == "naive" else hidden_size
    expected = {"b_down": (b_down, (gen_rank,)), "w_up": (w_up, (gen_rank, width)), "b_up": (b_up, (width,))}
    for name, (value, shape) in expected.items():
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} for mode={mode!r}, num_tokens={num_tokens}, d={hidden_size} and "
                f"w_down (d, h) = {tuple(w_down.shape)}, got {tuple(value.shape)}"
            )
    return num_tokens


def check_rows(hidden: Tensor, mode: str, index: object, attention_mask: object, source_lengths: object) -> None:
    """``index``, ``attention_mask`` and ``source_lengths``: types, shapes, then values (a sync for each given).

    The pooling modes need each row's valid rows to be one contiguous block (padding on the left, the right or
    both): a zero between two valid rows (a hole) is refused, as right-padding-only masks refused it before. NPG
    reads its one row and copies any mask (holes included) into the insertion's mask, unless ``source_lengths``
    is given: the source is then the first ``source_lengths[b]`` rows of that block, and NPG's row must be in it.
    """
    batch, seq_len, _ = hidden.shape
    if index is not None:
        _check_index(index, batch, seq_len)
    check_mask("attention_mask", attention_mask, (batch, seq_len), "(B, L) like hidden")
    pooling = mode != "naive"
    check_mask_values("attention_mask", attention_mask, binary=pooling)
    if source_lengths is not None:
        check_row_vector("source_lengths", source_lengths, batch)
    if not batch or not (pooling or source_lengths is not None):
        return
    first, count = valid_blocks(attention_mask, batch, seq_len, hidden.device)
    if attention_mask is not None:
        _check_block(attention_mask, first, count, mode)
    if source_lengths is None:
        return
    source_lengths = source_lengths.to(count.device, torch.int64)
    _check_source_lengths(source_lengths, count)
    if mode == "naive" and index is not None:
        _check_index_in_source(index.to(first.device, torch.int64), first, first + source_lengths)


def _check_block(attention_mask: Tensor, first: Tensor, count: Tensor, mode: str) -> None:
    """Every row has a valid row (pooling modes) and its valid rows are one contiguous block."""
    if mode != "naive" and int(count.min()) < 1:
        b = int((count < 1).nonzero()[0, 0])
        raise ValueError(
            f"attention_mask has an all-padding row (row {b}): mode={mode!r} pools over at least one valid token"
        )
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    block = (columns[None, :] >= first[:, None]) & (columns[None, :] < (first + count)[:, None])
    holes = (block != (attention_mask != 0)).any(1)
    if bool(holes.any()):
        b = int(holes.nonzero()[0, 0])
        raise ValueError(
            f"attention_mask must mark one contiguous block of valid rows per row (padding on the left and/or the "
            f"right, no zeros between valid rows) in mode={mode!r} or with source_lengths; row {b} has a hole"
        )


def _check_index_in_source(rows: Tensor, first: Tensor, ends: Tensor) -> None:
    """NPG's row of each sample is one of its source rows ``[first, ends)``."""
    outside = (rows < first) | (rows >= ends)
    if bool(outside.any()):
        b = int(outside.nonzero()[0, 0])
        raise ValueError(
            f"index must point into each row's source rows when source_lengths is given (the first "
            f"source_lengths[b] valid rows): row {b} reads row {int(rows[b])}, outside its source rows "
            f"[{int(first[b])}, {int(ends[b])})"
        )


def _check_source_lengths(source_lengths: Tensor, count: Tensor) -> None:
    """``source_lengths[b]`` in ``[1, valid rows of row b]``."""
    empty = source_lengths == 0
    if bool(empty.any()):
        b = int(empty.nonzero()[0, 0])
        raise ValueError(
            f"source_lengths[{b}] = 0: row {b} has no source rows, so LPT has nothing to generate its prompt from "
            f"(the pooling modes pool the source, NPG reads a source row); every row needs at least one source row"
        )
    bad = (source_lengths < 1) | (source_lengths > count)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"source_lengths must be in [1, valid rows of the row] (the source is the first source_lengths[b] valid "
            f"rows of row b), got source_lengths[{b}] = {int(source_lengths[b])} for a row of {int(count[b])} valid "
            f"rows"
        )


def check_row_vector(name: str, value: object, batch: int) -> None:
    """A ``(B,)`` int64 or int32 tensor (NPG's ``index``, ``source_lengths``)."""
    check_tensor(name, value, 1, "(B,)")
    if value.dtype not in TOKEN_ID_DTYPES:
        raise TypeError(f"{name} must be an int64 or int32 tensor, got {value.dtype}")
    if value.shape[0] != batch:
        raise ValueError(f"{name} must have shape (B,) = ({batch},), got {tuple(value.shape)}")


def _check_index(index: object, batch: int, seq_len: int) -> None:
    """NPG's ``(B,)`` row index: int64 or int32, each in ``[0, L)``."""
    check_row_vector("index", index, batch)
    if index.numel():
        low, high = (int(x) for x in torch.aminmax(index))
        if low < 0 or high >= seq_len:
            raise ValueError(f"index must be in [0, {seq_len}) (rows of hidden), found {low if low < 0 else high}")


def check_sizes(hidden, num_tokens: int, attention_mask, insert: bool, dropout_p: float, backend: str) -> None:
    """The prompt ``(B, n, d)``, the slot windows and, for the insertion, its ``(B, n+L, d)`` buffer and mask fit
    in memory; the Triton dropout's int32 element index covers the prompt."""
    batch, seq_len, hidden_size = hidden.shape
    num_slots = batch * num_tokens
    sources = f"num_tokens = {num_tokens} and hidden (B, L, d) = {tuple(hidden.shape)}"
    outputs = {
        "the prompt (B, n, d)": ((batch, num_tokens, hidden_size), torch.float32),
        "the slot windows (2, B*n)": ((2, num_slots), torch.int64),
        "the window numbers (n,)": ((num_tokens,), torch.int64),  # built even for an empty batch
    }
    if insert:
        mask_dtype = attention_mask.dtype if isinstance(attention_mask, Tensor) else torch.int64
        outputs["the buffer (B, n+L, d)"] = ((batch, num_tokens + seq_len, hidden_size), hidden.dtype)
        outputs["the mask (B, n+L)"] = ((batch, num_tokens + seq_len), mask_dtype)
    check_output_sizes(sources, hidden.device, outputs)
    if backend == "triton" and dropout_p > 0.0:
        check_int32_index("B * n * d prompt elements", num_slots * hidden_size, sources)


_GENERATOR_ARGS = """``w_down (d, h)``, ``b_down (h,)`` and, for NPG (``mode="naive"``), ``w_up (h, n*d)``,
    ``b_up (n*d,)``, for APPG (``mode="pool"``) and MPPG (``mode="max"``) ``w_up (h, d)``, ``b_up (d,)``. NPG
    reads row ``index[b]`` (default: the row's first valid row, row 0 under right padding) of each sample; APPG
    and MPPG pool each sample's valid rows (non-zero ``attention_mask`` columns) wherever they are: the windows
    start at the row's first valid row, so a left-padded row pools exactly the rows it pools alone. The valid rows
    must then be one contiguous block (left and/or right padding); a hole (a zero between valid rows) is refused,
    as before. ``source_lengths (B,)`` (int64 or int32, each in ``[1, valid rows]``): APPG and MPPG pool only the
    first ``source_lengths[b]`` valid rows of row ``b`` (the source of a causal LM's source + target sequence, so
    that the prompt, which every position sees, carries no target token); NPG keeps its ``index``, which must then
    be a source row. Dropout on the prompt in training, keyed by ``seed`` as in :func:`prompt_ops.adept_embed`.
    Gradients reach the four generator tensors only: ``hidden`` comes from the frozen layers below ``k``. The four
    share one floating dtype (``hidden``'s may differ); ``hidden`` needs ``L, d >= 1`` (``B = 0`` gives empty
    outputs) and ``h >= 1``."""


def _prepare(hidden, w_down, b_down, w_up, b_up, num_tokens, index, attention_mask, source_lengths, mode, dropout_p,
             training, seed, backend, insert):  # fmt: skip
    """Validate a generator call; return ``(backend, hidden detached, num_tokens, starts, ends, dropout_p, seed)``."""
    check_tensor("hidden", hidden, 3, "(B, L, d)")
    params = {
        "w_down": (w_down, 2, "(d, h)"),
        "b_down": (b_down, 1, "(h,)"),
        "w_up": (w_up, 2, "(h, n*d) or (h, d)"),
        "b_up": (b_up, 1, "(n*d,) or (d,)"),
    }
    # rank and dtype checked with the generator
    extras = {"index": index, "attention_mask": attention_mask, "source_lengths": source_lengths}
    extras = {name: value for name, value in extras.items() if isinstance(value, Tensor)}
    backend = validate_params(params, backend, hidden=hidden, **extras)
    check_float("hidden", hidden, backend)  # hidden may differ in dtype from the generator's parameters
    num_tokens = _check_generator(hidden, w_down, b_down, w_up, b_up, num_tokens, mode)
    dropout_p, seed = check_dropout(dropout_p, training, seed)
    check_sizes(hidden, num_tokens, attention_mask, insert, dropout_p, backend)
    check_rows(hidden, mode, index, attention_mask, source_lengths)
    batch, seq_len, _ = hidden.shape
    starts, ends = slot_windows(batch, seq_len, num_tokens, mode, index, attention_mask, source_lengths)
    hidden = hidden.detach()
    return backend, hidden, num_tokens, starts.to(hidden.device), ends.to(hidden.device), dropout_p, seed


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
    source_lengths: Tensor | None = None,
    mode: str = "naive",
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | None = None,
    backend: str | None = None,
) -> Tensor:
    """LPT prompt ``(B, n, d)`` from layer-``k`` hidden states ``(B, L, d)``: fp32 on the Triton backend, in the
    generator's dtype on the torch backend (fp32 for fp32 parameters).

    {generator_args}
    """
    backend, hidden, num_tokens, starts, ends, dropout_p, seed = _prepare(
        hidden, w_down, b_down, w_up, b_up, num_tokens, index, attention_mask, source_lengths, mode, dropout_p,
        training, seed, backend, insert=False,
    )  # fmt: skip
    generator = (hidden, w_down, b_down, w_up, b_up, starts, ends)
    if backend == "triton":
        return lpt_prompt_fwd_op(*generator, num_tokens, dropout_p, seed, mode == "max")[0]
    return lpt_prompt_torch(*generator, num_tokens, dropout_p, seed, mode)


def lpt_insert(
    hidden: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    *,
    num_tokens: int,
    index: Tensor | None = None,
    attention_mask: Tensor | None = None,
    source_lengths: Tensor | None = None,
    mode: str = "naive",
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """LPT's insertion at layer ``k``: ``(X (B, n+L, d), mask (B, n+L))`` where ``X[:, :n]`` is the generated
    prompt (cast to ``hidden``'s dtype), ``X[:, n:] = hidden`` and ``mask = cat(ones(B, n), attention_mask)`` (in
    ``attention_mask``'s dtype; int64 ones when it is None).

    The official code builds the prompt, then ``torch.cat``s it and the mask. On the Triton backend both go into
    one preallocated buffer: the generator's up-projection writes rows ``0..n-1`` directly and one launch copies
    ``hidden`` and writes the mask (three launches in all); the backward is the generator's, on a view of the
    buffer's gradient. The eager torch backend keeps the ``torch.cat``, the cheapest eager formulation.

    {generator_args}
    """
    backend, hidden, num_tokens, starts, ends, dropout_p, seed = _prepare(
        hidden, w_down, b_down, w_up, b_up, num_tokens, index, attention_mask, source_lengths, mode, dropout_p,
        training, seed, backend, insert=True,
    )  # fmt: skip
    generator = (w_down, b_down, w_up, b_up, starts, ends)
    if backend == "triton":
        out, mask_out, _, _ = lpt_insert_fwd_op(
            hidden, attention_mask, *generator, num_tokens, dropout_p, seed, mode == "max"
        )
        return out, mask_out
    # eager: one torch.cat writes the buffer, and its backward is a view of the gradient (a copy into a preallocated
    # buffer would be two launches, and autograd would clone the whole gradient for it)
    prompt = lpt_prompt_torch(hidden, *generator, num_tokens, dropout_p, seed, mode)
    out = torch.cat([prompt.to(hidden.dtype), hidden], dim=1)
    mask_out = _mask_buffer(hidden, attention_mask, num_tokens)
    mask_out[:, :num_tokens] = 1
    mask_out[:, num_tokens:] = 1 if attention_mask is None else attention_mask
    return out, mask_out


lpt_prompt.__doc__ = lpt_prompt.__doc__.format(generator_args=_GENERATOR_ARGS)
lpt_insert.__doc__ = lpt_insert.__doc__.format(generator_args=_GENERATOR_ARGS)
