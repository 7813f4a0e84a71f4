"""``mixed_lpt_prompt``: LPT's prompt generators of many adapters in one batch, one adapter per row.

The ``N`` adapters' generators are stacked and zero-padded, ``w_down (N, d, h_max)``, ``b_down (N, h_max)``, ``w_up
(N, h_max, W_max)``, ``b_up (N, W_max)`` (adapter ``a``'s unpadded generator in the leading ``h_a`` rows/columns and
``W_a`` columns, ``W_a = n_a * d`` for NPG, ``d`` for the pooling generators), with ``num_tokens (N,)`` their prompt
lengths ``n_a``. One call runs one generator ``mode`` for every row: row ``b`` of adapter ``a = adapter_index[b]``
gets exactly :func:`~prompt_ops.ops.lpt.lpt_prompt` of adapter ``a``'s unpadded generator on row ``b`` alone,
right-aligned in ``n_max = max(num_tokens)`` columns (zeros in its first ``n_max - n_a``), and a row of ``-1`` gets
zeros. A batch whose adapters use several modes calls the op once per mode, with the other modes' rows at ``-1``
(:class:`~prompt_ops.models.mixed_late.LateAdapters` does). The pooling windows of a row are its own adapter's
(``n_a`` adaptive windows over its valid rows, or its first ``source_lengths[b]``), NPG reads its row ``index[b]``.

The padding adds exactly nothing and gets exactly zero gradient: the rows ``>= h_a`` of ``w_up`` are zero, so the
padded pre-activations are ``relu(0) = 0`` and their gradient is ``0``; the columns ``>= W_a`` are never read.
Each adapter's gradients are the sums over its own rows only, deterministically.

Triton backend: the custom ops ``prompt_ops::mixed_lpt_prompt_fwd/bwd`` (:mod:`prompt_ops.kernels.mixed_lpt`), two
launches forward and three backward whatever the number of adapters, each slot addressing its adapter's weights.
torch backend: a few eager ops (per-row gathers of the stacked weights and batched matmuls) that autograd
differentiates. Dropout: each row at its adapter's probability, reproducible from ``seed``; its masks differ from
those of the adapter alone (and between the backends), so a row equals its adapter alone with dropout off or in
eval only. No gradient reaches ``hidden``.
"""

from collections.abc import Sequence

import torch

from prompt_ops.ops.adept_embed import check_seed, check_training, resolve_seed
from prompt_ops.ops.backend import resolve_check_ids
from prompt_ops.ops.common import custom_op
from prompt_ops.ops.lpt import (
    MODES,
    adaptive_windows,
    check_row_vector,
    check_rows,
    check_sizes,
    pooled_rows_only,
    valid_blocks,
    window_max,
    window_mean,
)
from prompt_ops.ops.validation import (
    check_adapter_indices,
    check_float,
    check_int,
    check_mask,
    check_probability,
    check_tensor,
    validate_params,
)

Tensor = torch.Tensor


def mixed_slot_windows(
    adapter_index: Tensor,
    lengths: Tensor,
    num_slots: int,
    seq_len: int,
    mode: str,
    index: Tensor | None,
    attention_mask: Tensor | None,
    source_lengths: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(starts, ends, slot_adapter)``, flattened ``(S,)`` int64: each slot's row window and adapter (``-1``:
    inactive, window ``[0, 1)``). NPG: one slot per row, its row ``index[b]`` (default: its first valid row).
    Pooling: ``n_max = num_slots`` slots per row; slot ``i`` of a row with ``n_b = lengths[b]`` tokens is its
    window ``i - (n_max - n_b)`` of :func:`~prompt_ops.ops.lpt.slot_windows`'s ``n_b`` windows, when ``>= 0``."""
    batch = adapter_index.shape[0]
    adapter = adapter_index.to(torch.int64)
    active = adapter >= 0
    first, count = valid_blocks(attention_mask, batch, seq_len, adapter.device)
    if mode == "naive":
        starts = first if index is None else index.to(device=adapter.device, dtype=torch.int64)
        starts = torch.where(active, starts, 0).contiguous()
        return starts, starts + 1, adapter.contiguous()
    pooled = count if source_lengths is None else source_lengths.to(device=adapter.device, dtype=torch.int64)
    window = torch.arange(num_slots, device=adapter.device)[None, :] - (num_slots - lengths)[:, None]  # (B, n_max)
    live = active[:, None] & (window >= 0)
    starts, ends = adaptive_windows(first, pooled, window, lengths.clamp(min=1)[:, None])
    slot_adapter = torch.where(live, adapter[:, None], -1)
    return torch.where(live, starts, 0).reshape(-1), torch.where(live, ends, 1).reshape(-1), slot_adapter.reshape(-1)


# ----------------------------------------------------------------------------------------------------------------
# torch backend
# ----------------------------------------------------------------------------------------------------------------


def mixed_lpt_prompt_torch(
    hidden, w_down, b_down, w_up, b_up, adapter_index, num_tokens, starts, ends, slot_adapter, n_max: int,
    fewest: int, mode: str, row_dropout: Tensor | None, seed: int,
) -> Tensor:  # fmt: skip
    """Eager generator: the rows' weights gathered per row (``w_down[a_b]``...) and batched matmuls. NPG picks each
    row's read row; the pooling modes project every row and pool each slot's window (:func:`window_mean`,
    :func:`window_max`, ``fewest`` the fewest tokens of an adapter). ``row_dropout (B,)`` each row's probability
    (None: no dropout). Only the rows the windows read enter the products (the others, ``-1`` rows and padding,
    as zeros), so a non-finite value there reaches no output nor gradient (``-1`` rows run adapter 0's weights)."""
    batch, seq_len, hidden_size = hidden.shape
    adapter = adapter_index.to(torch.int64)
    safe = adapter.clamp(min=0)
    lengths = torch.where(adapter >= 0, num_tokens[safe], 0)  # (B,) n_b
    rows = hidden.to(w_down.dtype)
    if mode == "naive":
        picked = rows[torch.arange(batch, device=hidden.device), starts]  # (B, d)
        picked = picked.masked_fill((adapter < 0)[:, None], 0.0).unsqueeze(1)  # (B, 1, d)
        pre = torch.baddbmm(b_down[safe].unsqueeze(1), picked, w_down[safe])  # (B, 1, h)
        values = torch.baddbmm(b_up[safe].unsqueeze(1), torch.relu(pre), w_up[safe]).squeeze(1)  # (B, W_max)
        src = (
            torch.arange(n_max * hidden_size, device=hidden.device)[None, :]
            - ((n_max - lengths) * hidden_size)[:, None]
        )
        inside = (adapter >= 0)[:, None] & (src >= 0) & (src < (lengths * hidden_size)[:, None])  # (B, n_max * d)
        picked_columns = values.gather(1, src.clamp(0, values.shape[1] - 1))
        out = torch.where(inside, picked_columns, 0.0).view(batch, n_max, hidden_size)
    else:
        live = (slot_adapter >= 0).view(batch, n_max)
        rows = pooled_rows_only(rows, starts.view(batch, n_max), ends.view(batch, n_max), live)
        projected = torch.baddbmm(b_down[safe].unsqueeze(1), rows, w_down[safe])  # (B, L, h)
        samples = torch.arange(slot_adapter.shape[0], device=hidden.device) // n_max
        if mode == "max":
            pooled = window_max(projected, samples, starts, ends, fewest)  # (S, h)
        else:
            pooled = window_mean(projected, samples, starts, ends)
        pooled = torch.relu(pooled).view(batch, n_max, w_down.shape[2])
        values = torch.baddbmm(b_up[safe, :hidden_size].unsqueeze(1), pooled, w_up[safe, :, :hidden_size])
        out = torch.where((slot_adapter >= 0).view(batch, n_max, 1), values, 0.0)  # (B, n_max, d)
    if row_dropout is not None:
        generator = torch.Generator(device=out.device).manual_seed(seed)
        keep = torch.rand(out.shape, generator=generator, device=out.device) >= row_dropout[:, None, None]
        out = out * keep.to(out.dtype) / (1.0 - row_dropout.to(out.dtype))[:, None, None]
    return out


# ----------------------------------------------------------------------------------------------------------------
# custom ops (Triton backend)
# ----------------------------------------------------------------------------------------------------------------


def _fake_outputs(hidden: Tensor, starts: Tensor, w_down: Tensor, num_slots: int, max_pool: bool):
    """Uninitialised ``(P (B, n_max, d) fp32, pre (S, h_max) fp32, arg_rows)``: MPPG's ``(S, h_max)`` int64 arg-max
    rows, an empty ``(0, h_max)`` placeholder for the averaging generators."""
    batch, _, hidden_size = hidden.shape
    gen_rank = w_down.shape[2]
    out = hidden.new_empty((batch, num_slots, hidden_size), dtype=torch.float32)
    pre = hidden.new_empty((starts.shape[0], gen_rank), dtype=torch.float32)
    arg_rows = hidden.new_empty((starts.shape[0] if max_pool else 0, gen_rank), dtype=torch.int64)
    return out, pre, arg_rows


@custom_op("prompt_ops::mixed_lpt_prompt_fwd")
def mixed_lpt_prompt_fwd_op(
    hidden: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    starts: Tensor,
    ends: Tensor,
    slot_adapter: Tensor,
    num_tokens: Tensor,
    num_slots: int,
    dropout: Tensor | None,
    seed: int,
    max_pool: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton generator: ``(P (B, n_max, d) fp32, pre (S, h_max), arg_rows)`` for the slots of
    :func:`mixed_slot_windows`; ``num_tokens (N,)`` int64; ``dropout (N,)`` fp32 probabilities or None."""
    from prompt_ops.kernels.mixed_lpt import mixed_lpt_fwd

    out, _, arg_rows = _fake_outputs(hidden, starts, w_down, num_slots, max_pool)
    pre = mixed_lpt_fwd(hidden, starts, ends, slot_adapter, w_down, b_down, w_up, b_up, num_tokens, dropout, seed,
                        out, arg_rows if max_pool else None)  # fmt: skip
    return out, pre, arg_rows


@mixed_lpt_prompt_fwd_op.register_fake
def _mixed_lpt_prompt_fwd_fake(hidden, w_down, b_down, w_up, b_up, starts, ends, slot_adapter, num_tokens, num_slots,
                               dropout, seed, max_pool):  # fmt: skip
    return _fake_outputs(hidden, starts, w_down, num_slots, max_pool)


@custom_op("prompt_ops::mixed_lpt_prompt_bwd")
def mixed_lpt_prompt_bwd_op(
    grad: Tensor,
    hidden: Tensor,
    starts: Tensor,
    ends: Tensor,
    slot_adapter: Tensor,
    pre: Tensor,
    arg_rows: Tensor,
    w_up: Tensor,
    num_tokens: Tensor,
    dropout: Tensor | None,
    seed: int,
    max_pool: bool,
) -> list[Tensor]:
    """fp32 ``[d_w_down (N, d, h_max), d_b_down, d_w_up (N, h_max, W_max), d_b_up]`` from the prompt's gradient."""
    from prompt_ops.kernels.mixed_lpt import mixed_lpt_bwd

    generator = (grad, hidden, starts, ends, slot_adapter, pre, w_up, num_tokens, dropout, seed)
    return list(mixed_lpt_bwd(*generator, arg_rows if max_pool else None))


@mixed_lpt_prompt_bwd_op.register_fake
def _mixed_lpt_prompt_bwd_fake(grad, hidden, starts, ends, slot_adapter, pre, arg_rows, w_up, num_tokens, dropout,
                               seed, max_pool):  # fmt: skip
    num, gen_rank, width = w_up.shape
    shapes = ((num, hidden.shape[2], gen_rank), (num, gen_rank), (num, gen_rank, width), (num, width))
    return [grad.new_empty(shape, dtype=torch.float32) for shape in shapes]


def _setup_context(ctx, inputs, output):
    hidden, w_down, b_down, w_up, b_up, starts, ends, slot_adapter, num_tokens, _, dropout, seed, max_pool = inputs
    ctx.save_for_backward(hidden, starts, ends, slot_adapter, output[1], output[2], w_up, num_tokens, dropout)
    ctx.dtypes = [t.dtype for t in (w_down, b_down, w_up, b_up)]
    ctx.seed, ctx.max_pool = seed, max_pool


def _backward(ctx, grad, _grad_pre, _grad_arg_rows):
    hidden, starts, ends, slot_adapter, pre, arg_rows, w_up, num_tokens, dropout = ctx.saved_tensors
    grads = mixed_lpt_prompt_bwd_op(grad, hidden, starts, ends, slot_adapter, pre, arg_rows, w_up, num_tokens,
                                    dropout, ctx.seed, ctx.max_pool)  # fmt: skip
    grads = [g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True)]
    return None, *grads, *(None,) * 8  # no gradient to hidden nor to the slot data


mixed_lpt_prompt_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------------
# public entry
# ----------------------------------------------------------------------------------------------------------------


def _check_stack(hidden: Tensor, w_down: Tensor, b_down: Tensor, w_up: Tensor, b_up: Tensor) -> None:
    """The shapes of ``hidden (B, L, d)`` (``L, d >= 1``) and of the stacked generator."""
    if hidden.shape[1] == 0 or hidden.shape[2] == 0:
        raise ValueError(
            f"hidden must have shape (B, L, d) with L, d >= 1 (each row's prompt is generated from its rows), "
            f"got {tuple(hidden.shape)}"
        )
    num, hidden_size, gen_rank = w_down.shape
    if hidden_size != hidden.shape[2] or gen_rank == 0 or num == 0:
        raise ValueError(
            f"w_down must have shape (N, d, h_max) with N >= 1, d = hidden.shape[2] = {hidden.shape[2]} and "
            f"h_max >= 1, got {tuple(w_down.shape)}"
        )
    width = w_up.shape[2]
    if width < hidden_size:
        raise ValueError(
            f"w_up must have shape (N, h_max, W_max) with W_max >= d = {hidden_size} (every generator is at least d "
            f"wide), got {tuple(w_up.shape)}"
        )
    expected = {
        "b_down": (b_down, (num, gen_rank)),
        "w_up": (w_up, (num, gen_rank, width)),
        "b_up": (b_up, (num, width)),
    }
    for name, (value, shape) in expected.items():
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} for w_down (N, d, h_max) = {tuple(w_down.shape)} and w_up "
                f"(N, h_max, W_max) = {tuple(w_up.shape)}, got {tuple(value.shape)}"
            )


def _per_adapter(name: str, values: object, num: int, check) -> list:
    """``values`` (a tensor or a sequence of ``num`` entries, or for floats one number for every adapter) as a list,
    each entry through ``check(label, value)``."""
    if isinstance(values, Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be a (N,) tensor with N = {num} adapters, got shape {tuple(values.shape)}")
        values = values.tolist()
    elif not isinstance(values, Sequence) or isinstance(values, str):
        if check is check_probability:
            return [check(name, values)] * num
        raise TypeError(f"{name} must be a (N,) tensor or a sequence of N = {num} ints, got {type(values).__name__}")
    if len(values) != num:
        raise ValueError(f"{name} must hold one value per adapter, N = {num} (w_down.shape[0]), got {len(values)}")
    return [check(f"{name}[{a}]", value) for a, value in enumerate(values)]


def _check_widths(tokens: list[int], present: list[int], mode: str, hidden_size: int, width: int) -> None:
    """Each adapter of a row fits ``w_up``'s ``W_max`` columns (``n_a * d`` for NPG, ``d`` for the pooling modes)."""
    for a in present:
        need = tokens[a] * hidden_size if mode == "naive" else hidden_size
        if need > width:
            raise ValueError(
                f"w_up must have at least W_a = {need} columns for adapter {a} (num_tokens[{a}] = {tokens[a]}, "
                f"d = {hidden_size}, mode={mode!r}), got W_max = {width} (w_up (N, h_max, W_max) = (..., {width}))"
            )


def _check_row_data(hidden, adapter_index, mode, index, attention_mask, source_lengths, check_data: bool):
    """Types and shapes of the per-row arguments, then (``check_data``) their values on the rows of an adapter. The
    other rows' entries are not read: replaced by a full row, row 0 and ``L`` (before
    :func:`~prompt_ops.ops.lpt.check_rows`). Returns them so replaced."""
    batch, seq_len, _ = hidden.shape
    for name, value in (("index", index), ("source_lengths", source_lengths)):
        if value is not None:
            check_row_vector(name, value, batch)
    check_mask("attention_mask", attention_mask, (batch, seq_len), "(B, L) like hidden")
    idle = adapter_index.to(hidden.device) < 0
    if index is not None:
        index = index.masked_fill(idle, 0)
    if attention_mask is not None:
        attention_mask = attention_mask.masked_fill(idle[:, None], 1)
    if source_lengths is not None:
        source_lengths = source_lengths.masked_fill(idle, seq_len)
    if check_data:
        check_rows(hidden, mode, index, attention_mask, source_lengths)
    return index, attention_mask, source_lengths


def _prepare(hidden, w_down, b_down, w_up, b_up, adapter_index, num_tokens, index, attention_mask, source_lengths,
             mode, dropout_p, training, seed, backend, check_ids):  # fmt: skip
    """Validate a call; return the resolved backend, ``num_tokens`` as a list and an ``(N,)`` int64 tensor, the row
    data (as :func:`_check_row_data` returns it), the dropout probabilities (None when none acts) and the seed. The
    data checks (``check_ids``) sync with the device."""
    check_tensor("hidden", hidden, 3, "(B, L, d)")
    params = {
        "w_down": (w_down, 3, "(N, d, h_max)"),
        "b_down": (b_down, 2, "(N, h_max)"),
        "w_up": (w_up, 3, "(N, h_max, W_max)"),
        "b_up": (b_up, 2, "(N, W_max)"),
    }
    check_tensor("adapter_index", adapter_index, 1, "(B,)")
    extras = {"index": index, "attention_mask": attention_mask, "source_lengths": source_lengths}
    extras = {name: value for name, value in extras.items() if isinstance(value, Tensor)}
    backend = validate_params(params, backend, hidden=hidden, adapter_index=adapter_index, **extras)
    check_float("hidden", hidden, backend)
    _check_stack(hidden, w_down, b_down, w_up, b_up)
    check_row_vector("adapter_index", adapter_index, hidden.shape[0])
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    num = w_down.shape[0]
    tokens = _per_adapter("num_tokens", num_tokens, num, lambda name, value: check_int(name, value, 1))
    probabilities = _per_adapter("dropout_p", dropout_p, num, check_probability)
    active = check_training(training) and any(p > 0.0 for p in probabilities)
    seed = resolve_seed(check_seed(seed), active)
    check_data = resolve_check_ids(check_ids)
    if check_data:
        check_adapter_indices(adapter_index, num)
        present = sorted(set(adapter_index.tolist()) - {-1})
        _check_widths(tokens, present, mode, hidden.shape[2], w_up.shape[2])
    n_max = max(tokens)
    # the prompt fits, and the Triton dropout keys its B * n_max * d elements in int32 (both layouts)
    check_sizes(hidden, n_max, None, False, max(probabilities, default=0.0) if active else 0.0, backend)
    rows = _check_row_data(hidden, adapter_index, mode, index, attention_mask, source_lengths, check_data)
    lengths = torch.tensor(tokens, dtype=torch.int64, device=hidden.device)
    dropout = torch.tensor(probabilities, dtype=torch.float32, device=hidden.device) if active else None
    return backend, tokens, lengths, rows, dropout, seed


def mixed_lpt_prompt(
    hidden: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    adapter_index: Tensor,
    num_tokens: Tensor | Sequence[int],
    *,
    index: Tensor | None = None,
    attention_mask: Tensor | None = None,
    source_lengths: Tensor | None = None,
    mode: str = "naive",
    dropout_p: float | Sequence[float] | Tensor = 0.0,
    training: bool = False,
    seed: int | None = None,
    backend: str | None = None,
    check_ids: bool | None = None,
) -> Tensor:
    """LPT prompts ``(B, n_max, d)`` of a mixed-adapter batch, one stacked generator per row (module docstring).

    Args:
        hidden: ``(B, L, d)`` layer-``k`` hidden states (any floating dtype; no gradient reaches them).
        w_down: ``(N, d, h_max)`` the adapters' down projections, zero in columns ``>= h_a``.
        b_down: ``(N, h_max)`` their biases, zero past ``h_a``.
        w_up: ``(N, h_max, W_max)`` their up projections, zero in rows ``>= h_a`` and columns ``>= W_a``.
        b_up: ``(N, W_max)`` their biases, zero past ``W_a``. The four share one floating dtype.
        adapter_index: ``(B,)`` int64 or int32, each row's adapter in ``[-1, N)`` (``-1``: zeros, nothing read).
        num_tokens: ``(N,)`` int tensor or sequence, each adapter's ``n_a >= 1``; ``n_max = max(num_tokens)``.
        index: optional ``(B,)`` NPG read row of each row, in ``[0, L)`` (default: its first valid row).
        attention_mask: optional ``(B, L)`` mask; a pooled row's valid rows are one contiguous block.
        source_lengths: optional ``(B,)``: pool (NPG: read) only the first ``source_lengths[b]`` valid rows.
        mode: ``"naive"`` (NPG), ``"pool"`` (APPG) or ``"max"`` (MPPG), every row's generator.
        dropout_p: one probability in ``[0, 1)`` per adapter (a sequence or ``(N,)`` tensor), or one for all.
        training: whether dropout acts.
        seed: the dropout seed (None draws one when dropout acts).
        backend: ``"auto"`` (default, or ``$PROMPT_OPS_BACKEND``), ``"triton"`` or ``"torch"``.
        check_ids: validate the data (default, or ``$PROMPT_OPS_CHECK_IDS``): ``adapter_index`` in ``[-1, N)``,
            each row's adapter fits ``W_max``, and :func:`~prompt_ops.lpt_prompt`'s checks of ``index``,
            ``attention_mask`` and ``source_lengths`` on the adapters' rows. Device syncs; pass ``False`` under
            ``torch.compile(fullgraph=True)`` or CUDA graphs (with ``num_tokens`` a sequence of ints), where bad
            data is then undefined behaviour.

    Returns:
        ``(B, n_max, d)``, fp32 on the Triton backend and in the generator's dtype on the torch backend (as
        :func:`~prompt_ops.lpt_prompt`'s backends return it): row ``b``'s prompt in its last ``n_a`` columns, zeros
        before them and on ``-1`` rows. The entries of ``index``, ``attention_mask`` and ``source_lengths`` of ``-1``
        rows are neither checked nor read.
    """
    backend, tokens, lengths, rows, dropout, seed = _prepare(
        hidden, w_down, b_down, w_up, b_up, adapter_index, num_tokens, index, attention_mask, source_lengths, mode,
        dropout_p, training, seed, backend, check_ids,
    )  # fmt: skip
    index, attention_mask, source_lengths = rows
    hidden = hidden.detach()
    batch, seq_len, _ = hidden.shape
    adapter = adapter_index.to(device=hidden.device, dtype=torch.int64)
    row_tokens = torch.where(adapter >= 0, lengths[adapter.clamp(min=0)], 0)
    n_max = max(tokens)
    starts, ends, slot_adapter = mixed_slot_windows(
        adapter, row_tokens, n_max, seq_len, mode, index, attention_mask, source_lengths
    )
    if backend == "triton":
        return mixed_lpt_prompt_fwd_op(hidden, w_down, b_down, w_up, b_up, starts, ends, slot_adapter, lengths, n_max,
                                       dropout, seed, mode == "max")[0]  # fmt: skip
    row_dropout = None if dropout is None else torch.where(adapter >= 0, dropout[adapter.clamp(min=0)], 0.0)
    return mixed_lpt_prompt_torch(hidden, w_down, b_down, w_up, b_up, adapter, lengths, starts, ends, slot_adapter,
                                  n_max, min(tokens), mode, row_dropout, seed)  # fmt: skip
