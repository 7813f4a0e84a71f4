"""LPT's prompt generator (Liu et al., Findings of EMNLP 2022; official code ``xyltt/LPT``): Triton kernels.

The paper's three generators are one computation over "slots". Each slot ``(b, i)`` reads a window of rows
``[start, end)`` of sample ``b``'s layer-``k`` hidden states::

    pre[b, i] = mean_{t in window} hidden[b, t] @ w_down + b_down      (h,)   pooling is linear: mean, then project
    pre[b, i] = max_{t in window} (hidden[b, t] @ w_down + b_down)     (h,)   MPPG: project, then max per column
    P[b, i]   = dropout(relu(pre[b, i]) @ w_up + b_up)                  (width,)

- NPG (``mode="naive"``, the official default): one slot per sample, the window is the single row ``index[b]``,
  and ``width = n * d`` (the output is viewed as ``(B, n, d)``).
- APPG (``mode="pool"``): ``n`` slots per sample. Slot ``i`` of a sample whose pooled rows are ``first ..
  first+len-1`` averages the adaptive-pooling window ``first + [floor(i*len/n), ceil((i+1)*len/n))``, and
  ``width = d``.
- MPPG (``mode="max"``): APPG's windows, max-pooled after the projection (max does not commute with it); the row
  of each column's maximum (the first one on a tie, ``torch.max``'s rule) is saved for the backward.

The windows are computed on the host (two small integer tensors). Forward, two launches: the slot
pre-activations ``(S, h)`` (MPPG: and their arg-max rows ``(S, h)``), then the up-projection tiles with the dropout
drawn from philox keyed by ``(seed, element)``. Backward, three launches, with no gradient to ``hidden`` (the frozen
layers below ``k``): ``d_w_up``/``d_b_up`` per column tile, ``d_pre = (dP * D) @ w_up^T * 1[pre > 0]`` per slot
tile, and ``d_w_down``/``d_b_down`` per d-tile, using ``d_w_down = sum_slots (sum_{t in window} hidden[b, t]) d_pre
/ |window|`` (MPPG: ``d_w_down[:, j] = sum_slots hidden[b, arg[s, j]] d_pre[s, j]``, each window's gradient routed
to its arg-max row). Every program owns its output tile, so the sums are deterministic (no atomics).

The pre-activation and ``d_w_down`` kernels take a stack of ``N`` generators (``N = 1`` here); with ``MIXED`` each
slot addresses its adapter's, and the mixed-adapter op (:mod:`prompt_ops.kernels.mixed_lpt`) launches them too. The
slot-tile helpers are shared with it as well.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from prompt_ops.kernels.common import dropout_tile, launch_grid, load_tile
from prompt_ops.kernels.runtime import interpreting


@triton.jit
def _window_sum(
    hidden_ptr, b, start, end, seq_len, cols, col_ok, stride_h_b, stride_h_t, stride_h_d,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """``sum_{t in [start, end)} hidden[b, t, cols]`` as ``[BLOCK_D]`` fp32. Rows are masked by both ends of the
    window and by ``[0, seq_len)``, so a window the host got wrong can never read outside the sample."""
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    low = tl.maximum(start, 0)
    high = tl.minimum(end, seq_len)
    for t0 in range(low, high, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        row_ok = (rows >= low) & (rows < high)
        tile = load_tile(hidden_ptr + b * stride_h_b, rows, row_ok, cols, col_ok, stride_h_t, stride_h_d)
        acc += tl.sum(tile, axis=0)
    return acc


@triton.jit
def slot_offsets(slots, slots_per_sample, stride_b, stride_s):
    """Element offsets of the rows of ``slots`` in a ``(B, slots_per_sample, width)``-shaped view."""
    return (slots // slots_per_sample) * stride_b + (slots % slots_per_sample) * stride_s


@triton.jit
def _load_slot_rows(ptr, slots, slot_ok, cols, col_ok, slots_per_sample, stride_b, stride_s, stride_c):
    """``[BLOCK_S, BLOCK_C]`` fp32 tile of slot rows from a ``(B, slots_per_sample, width)``-shaped view."""
    rows = slot_offsets(slots, slots_per_sample, stride_b, stride_s)
    tile = tl.load(ptr + rows[:, None] + cols[None, :] * stride_c, mask=slot_ok[:, None] & col_ok[None, :], other=0.0)
    return tile.to(tl.float32)


@triton.jit
def prompt_grad_tile(
    grad_ptr, slots, slot_ok, cols, col_ok, slots_per_sample, stride_b, stride_s, stride_c, width, dropout_p, seed,
    HAS_DROPOUT: tl.constexpr,
):  # fmt: skip
    """``dP * D``: the ``[BLOCK_S, BLOCK_C]`` gradient tile of the prompt with the forward's dropout multipliers, the
    gradient that reaches ``relu(pre) @ w_up + b_up``."""
    grad = _load_slot_rows(grad_ptr, slots, slot_ok, cols, col_ok, slots_per_sample, stride_b, stride_s, stride_c)
    if HAS_DROPOUT:
        grad = grad * dropout_tile(seed, slots, cols, width, dropout_p)
    return grad


@triton.jit
def _slot_mean_pre(
    pre_ptr, hidden_ptr, slot, b, start, end, w_down_ptr, b_down_ptr, seq_len, hidden_size, gen_rank, stride_h_b,
    stride_h_t, stride_h_d, stride_wd_d, stride_wd_h, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Store ``pre[slot] = mean_{t in [start, end)} hidden[b, t] @ w_down + b_down`` (``[BLOCK_H]``); ``w_down_ptr``
    and ``b_down_ptr`` point at the slot's generator (one adapter of a stack in the mixed op)."""
    h = tl.arange(0, BLOCK_H).to(tl.int64)
    h_ok = h < gen_rank
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for d0 in range(0, hidden_size, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        col_ok = cols < hidden_size
        summed = _window_sum(
            hidden_ptr, b, start, end, seq_len, cols, col_ok, stride_h_b, stride_h_t, stride_h_d, BLOCK_T, BLOCK_D
        )  # [BLOCK_D]
        w_down = load_tile(w_down_ptr, cols, col_ok, h, h_ok, stride_wd_d, stride_wd_h)  # [BLOCK_D, BLOCK_H]
        acc += tl.sum(summed[:, None] * w_down, axis=0)
    pre = acc / (end - start).to(tl.float32) + tl.load(b_down_ptr + h, mask=h_ok, other=0.0).to(tl.float32)
    tl.store(pre_ptr + slot * gen_rank + h, pre, mask=h_ok)


@triton.jit
def _slot_max_pre(
    pre_ptr, arg_ptr, hidden_ptr, slot, b, start, end, w_down_ptr, b_down_ptr, seq_len, hidden_size, gen_rank,
    stride_h_b, stride_h_t, stride_h_d, stride_wd_d, stride_wd_h, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
):  # fmt: skip
    """MPPG's pre-activation of one slot: ``max_{t in window} hidden[b, t] @ w_down + b_down`` per column, and the
    first row that reaches it (rows in increasing order, a later row replaces the kept one only when strictly
    greater, and ``tl.max`` breaks ties within a tile to the left: ``torch.max``'s rule). The window's rows are
    projected tile by tile (``[BLOCK_T, BLOCK_H]`` dots over ``d``); rows outside ``[start, end) & [0, L)`` are
    never read, and an empty window keeps ``-inf`` and row ``-1``."""
    low = tl.maximum(start, 0)
    high = tl.minimum(end, seq_len)
    h = tl.arange(0, BLOCK_H).to(tl.int64)
    h_ok = h < gen_rank
    bias = tl.load(b_down_ptr + h, mask=h_ok, other=0.0).to(tl.float32)
    best = tl.full([BLOCK_H], float("-inf"), tl.float32)
    best_row = tl.full([BLOCK_H], -1, tl.int64)
    for t0 in range(low, high, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        row_ok = rows < high
        z = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
        for d0 in range(0, hidden_size, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
            col_ok = cols < hidden_size
            tile = load_tile(hidden_ptr + b * stride_h_b, rows, row_ok, cols, col_ok, stride_h_t, stride_h_d)
            w_down = load_tile(w_down_ptr, cols, col_ok, h, h_ok, stride_wd_d, stride_wd_h)  # [BLOCK_D, BLOCK_H]
            z += tl.dot(tile, w_down, input_precision="ieee")
        z = tl.where(row_ok[:, None], z + bias[None, :], float("-inf"))
        tile_best, tile_arg = tl.max(z, axis=0, return_indices=True)  # ties: the first row of the tile
        better = tile_best > best
        best_row = tl.where(better, t0 + tile_arg.to(tl.int64), best_row)
        best = tl.where(better, tile_best, best)
    tl.store(pre_ptr + slot * gen_rank + h, best, mask=h_ok)
    tl.store(arg_ptr + slot * gen_rank + h, best_row, mask=h_ok)


@triton.jit
def _lpt_pre_kernel(
    pre_ptr,  # (S, h) fp32 out
    arg_ptr,  # (S, h) int64 out (MAX_POOL): the row of each maximum
    hidden_ptr,  # (B, L, d)
    starts_ptr,  # (S,) int64
    ends_ptr,  # (S,) int64
    adapter_ptr,  # (S,) int64 (MIXED): each slot's adapter, -1 on inactive slots
    w_down_ptr,  # (N, d, h): N = 1 for one generator
    b_down_ptr,  # (N, h)
    slots_per_sample,
    seq_len,
    hidden_size,
    gen_rank,
    stride_h_b,
    stride_h_t,
    stride_h_d,
    stride_wd_a,
    stride_wd_d,
    stride_wd_h,
    stride_bd_a,
    MAX_POOL: tl.constexpr,
    MIXED: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """One slot's ``pre`` (``[BLOCK_H]``): its window's mean projected (:func:`_slot_mean_pre`), or MPPG's maximum
    (:func:`_slot_max_pre`), on generator 0, or (``MIXED``, the stacked generators of a mixed-adapter batch) on its
    adapter's ``w_down``/``b_down`` (an inactive slot, adapter ``-1``, runs adapter 0's: its ``pre`` is never
    read)."""
    slot = tl.program_id(0).to(tl.int64)
    adapter = 0
    if MIXED:
        adapter = tl.maximum(tl.load(adapter_ptr + slot), 0)
    w_down = w_down_ptr + adapter * stride_wd_a
    b_down = b_down_ptr + adapter * stride_bd_a
    b = slot // slots_per_sample
    start = tl.load(starts_ptr + slot)
    end = tl.load(ends_ptr + slot)
    if MAX_POOL:
        _slot_max_pre(
            pre_ptr, arg_ptr, hidden_ptr, slot, b, start, end, w_down, b_down, seq_len, hidden_size, gen_rank,
            stride_h_b, stride_h_t, stride_h_d, stride_wd_d, stride_wd_h, BLOCK_T, BLOCK_D, BLOCK_H,
        )  # fmt: skip
    else:
        _slot_mean_pre(
            pre_ptr, hidden_ptr, slot, b, start, end, w_down, b_down, seq_len, hidden_size, gen_rank, stride_h_b,
            stride_h_t, stride_h_d, stride_wd_d, stride_wd_h, BLOCK_T, BLOCK_D, BLOCK_H,
        )  # fmt: skip


@triton.jit
def _lpt_up_kernel(
    out_ptr,  # slot rows of (S, width), at sample stride ``stride_o_b`` and slot stride ``stride_o_s``
    pre_ptr,  # (S, h)
    w_up_ptr,  # (h, width)
    b_up_ptr,  # (width,)
    num_slots,
    slots_per_sample,
    width,
    gen_rank,
    dropout_p,
    seed,
    stride_o_b,
    stride_o_s,
    stride_wu_h,
    stride_wu_c,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    slots = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    slot_ok, col_ok = slots < num_slots, cols < width
    h = tl.arange(0, BLOCK_H).to(tl.int64)
    h_ok = h < gen_rank
    act = tl.maximum(load_tile(pre_ptr, slots, slot_ok, h, h_ok, gen_rank, 1), 0.0)  # [BLOCK_S, BLOCK_H]
    w_up = load_tile(w_up_ptr, h, h_ok, cols, col_ok, stride_wu_h, stride_wu_c)  # [BLOCK_H, BLOCK_C]
    bias = tl.load(b_up_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    value = tl.dot(act, w_up, input_precision="ieee") + bias[None, :]  # [BLOCK_S, BLOCK_C]
    if HAS_DROPOUT:
        value = value * dropout_tile(seed, slots, cols, width, dropout_p)
    rows = slot_offsets(slots, slots_per_sample, stride_o_b, stride_o_s)  # [BLOCK_S]
    tl.store(out_ptr + rows[:, None] + cols[None, :], value, mask=slot_ok[:, None] & col_ok[None, :])


@triton.jit
def up_grad_step(
    acc_w, acc_b, grad_ptr, pre_ptr, slots, slot_ok, cols, col_ok, h, h_ok, gen_rank, slots_per_sample, stride_g_b,
    stride_g_s, stride_g_c, width, dropout_p, seed, HAS_DROPOUT: tl.constexpr,
):  # fmt: skip
    """``acc_w`` (``[BLOCK_H, BLOCK_C]``) and ``acc_b`` (``[BLOCK_C]``) plus the contribution of ``slots`` to
    ``d_w_up`` (``relu(pre)^T @ (dP * D)``, accumulated inside the dot) and to ``d_b_up``; ``cols`` are the prompt's
    columns (also the dropout's element columns)."""
    grad = prompt_grad_tile(
        grad_ptr, slots, slot_ok, cols, col_ok, slots_per_sample, stride_g_b, stride_g_s, stride_g_c, width,
        dropout_p, seed, HAS_DROPOUT,
    )  # [BLOCK_S, BLOCK_C]  # fmt: skip
    act = tl.maximum(load_tile(pre_ptr, slots, slot_ok, h, h_ok, gen_rank, 1), 0.0)  # [BLOCK_S, BLOCK_H]
    return tl.dot(tl.trans(act), grad, acc_w, input_precision="ieee"), acc_b + tl.sum(grad, axis=0)


@triton.jit
def _lpt_up_bwd_kernel(
    grad_w_up_ptr,  # (h, width) fp32
    grad_b_up_ptr,  # (width,) fp32
    grad_ptr,  # dP: slot rows at sample stride ``stride_g_b``, slot stride ``stride_g_s``, column stride ``stride_g_c``
    pre_ptr,
    num_slots,
    slots_per_sample,
    width,
    gen_rank,
    dropout_p,
    seed,
    stride_g_b,
    stride_g_s,
    stride_g_c,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    col_ok = cols < width
    h = tl.arange(0, BLOCK_H).to(tl.int64)
    h_ok = h < gen_rank
    acc_w = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_C], dtype=tl.float32)
    for s0 in range(0, num_slots, BLOCK_S):
        slots = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        slot_ok = slots < num_slots
        acc_w, acc_b = up_grad_step(
            acc_w, acc_b, grad_ptr, pre_ptr, slots, slot_ok, cols, col_ok, h, h_ok, gen_rank, slots_per_sample,
            stride_g_b, stride_g_s, stride_g_c, width, dropout_p, seed, HAS_DROPOUT,
        )  # fmt: skip
    tl.store(grad_w_up_ptr + h[:, None] * width + cols[None, :], acc_w, mask=h_ok[:, None] & col_ok[None, :])
    tl.store(grad_b_up_ptr + cols, acc_b, mask=col_ok)


@triton.jit
def _lpt_pre_bwd_kernel(
    grad_pre_ptr,  # (S, h) fp32 out: d_pre
    grad_ptr,
    pre_ptr,
    w_up_ptr,
    num_slots,
    slots_per_sample,
    width,
    gen_rank,
    dropout_p,
    seed,
    stride_g_b,
    stride_g_s,
    stride_g_c,
    stride_wu_h,
    stride_wu_c,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    slots = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    slot_ok = slots < num_slots
    h = tl.arange(0, BLOCK_H).to(tl.int64)
    h_ok = h < gen_rank
    acc = tl.zeros([BLOCK_S, BLOCK_H], dtype=tl.float32)
    for c0 in range(0, width, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        col_ok = cols < width
        grad = prompt_grad_tile(
            grad_ptr, slots, slot_ok, cols, col_ok, slots_per_sample, stride_g_b, stride_g_s, stride_g_c, width,
            dropout_p, seed, HAS_DROPOUT,
        )  # fmt: skip
        w_up = load_tile(w_up_ptr, h, h_ok, cols, col_ok, stride_wu_h, stride_wu_c)  # [BLOCK_H, BLOCK_C]
        acc += tl.dot(grad, tl.trans(w_up), input_precision="ieee")
    pre = load_tile(pre_ptr, slots, slot_ok, h, h_ok, gen_rank, 1)
    offsets = slots[:, None] * gen_rank + h[None, :]
    tl.store(grad_pre_ptr + offsets, tl.where(pre > 0.0, acc, 0.0), mask=slot_ok[:, None] & h_ok[None, :])


@triton.jit
def _mean_down_step(
    grad_pre_ptr, hidden_ptr, starts_ptr, ends_ptr, slot, slots_per_sample, seq_len, gen_rank, cols, col_ok, h, h_ok,
    stride_h_b, stride_h_t, stride_h_d, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Slot ``slot``'s share of ``d_w_down[cols]`` (``[BLOCK_D, BLOCK_H]``: its window's row sum times ``d_pre /
    |window|``) and its ``d_pre`` (``[BLOCK_H]``, its share of ``d_b_down``)."""
    start = tl.load(starts_ptr + slot)
    end = tl.load(ends_ptr + slot)
    summed = _window_sum(
        hidden_ptr, slot // slots_per_sample, start, end, seq_len, cols, col_ok, stride_h_b, stride_h_t, stride_h_d,
        BLOCK_T, BLOCK_D,
    )  # [BLOCK_D]  # fmt: skip
    grad_pre = tl.load(grad_pre_ptr + slot * gen_rank + h, mask=h_ok, other=0.0)  # [BLOCK_H]
    return summed[:, None] * (grad_pre / (end - start).to(tl.float32))[None, :], grad_pre


@triton.jit
def _max_down_step(
    grad_pre_ptr, arg_ptr, hidden_ptr, slot, slots_per_sample, seq_len, gen_rank, cols, col_ok, h, h_ok, stride_h_b,
    stride_h_t, stride_h_d,
):  # fmt: skip
    """MPPG: slot ``slot``'s share of ``d_w_down[cols]`` (``[BLOCK_D, BLOCK_H]``: column ``j`` is its arg-max row of
    column ``j`` times ``d_pre[j]``) and its ``d_pre`` (``[BLOCK_H]``)."""
    rows = tl.load(arg_ptr + slot * gen_rank + h, mask=h_ok, other=-1)  # [BLOCK_H]
    row_ok = (rows >= 0) & (rows < seq_len)
    base = hidden_ptr + (slot // slots_per_sample) * stride_h_b
    picked = load_tile(base, cols, col_ok, rows, row_ok, stride_h_d, stride_h_t)  # [BLOCK_D, BLOCK_H]
    grad_pre = tl.load(grad_pre_ptr + slot * gen_rank + h, mask=h_ok, other=0.0)  # [BLOCK_H]
    return picked * grad_pre[None, :], grad_pre


@triton.jit
def _lpt_down_bwd_kernel(
    grad_w_down_ptr,  # (N, d, h) fp32: N = 1 for one generator
    grad_b_down_ptr,  # (N, h) fp32
    grad_pre_ptr,  # (S, h)
    arg_ptr,  # (S, h) int64, read when MAX_POOL: the forward's arg-max rows
    hidden_ptr,  # (B, L, d)
    starts_ptr,  # (S,) int64
    ends_ptr,  # (S,) int64
    order_ptr,  # (S,) int64, read when MIXED: the slots sorted by adapter
    seg_ptr,  # (N + 1,) int64, read when MIXED: adapter a's slots are order[seg[a]:seg[a+1]]
    num_slots,
    slots_per_sample,
    seq_len,
    hidden_size,
    gen_rank,
    stride_h_b,
    stride_h_t,
    stride_h_d,
    MAX_POOL: tl.constexpr,
    MIXED: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Program ``(j, a)``: ``d_w_down[a][cols]`` (``[BLOCK_D, BLOCK_H]``) and, for ``j = 0``, ``d_b_down[a]``, over
    the slots in order (every slot for one generator; ``MIXED``: adapter ``a``'s segment of the sorted slots): each
    window's row sum times ``d_pre / |window|`` (:func:`_mean_down_step`), or MPPG's gradient routed to its
    arg-max rows (:func:`_max_down_step`). Deterministic, no atomics."""
    pid = tl.program_id(0).to(tl.int64)
    adapter = tl.program_id(1).to(tl.int64)
    cols = pid * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # [BLOCK_D]
    col_ok = cols < hidden_size
    h = tl.arange(0, BLOCK_H).to(tl.int64)
    h_ok = h < gen_rank
    acc_w = tl.zeros([BLOCK_D, BLOCK_H], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_H], dtype=tl.float32)
    lo = 0
    hi = num_slots
    if MIXED:
        lo = tl.load(seg_ptr + adapter)
        hi = tl.load(seg_ptr + adapter + 1)
    for index in range(lo, hi):
        slot = index
        if MIXED:
            slot = tl.load(order_ptr + index)
        if MAX_POOL:
            step_w, grad_pre = _max_down_step(
                grad_pre_ptr, arg_ptr, hidden_ptr, slot, slots_per_sample, seq_len, gen_rank, cols, col_ok, h, h_ok,
                stride_h_b, stride_h_t, stride_h_d,
            )  # fmt: skip
        else:
            step_w, grad_pre = _mean_down_step(
                grad_pre_ptr, hidden_ptr, starts_ptr, ends_ptr, slot, slots_per_sample, seq_len, gen_rank, cols,
                col_ok, h, h_ok, stride_h_b, stride_h_t, stride_h_d, BLOCK_T, BLOCK_D,
            )  # fmt: skip
        acc_w += step_w  # [BLOCK_D, BLOCK_H]
        acc_b += grad_pre  # [BLOCK_H]
    out = grad_w_down_ptr + adapter * hidden_size * gen_rank + cols[:, None] * gen_rank + h[None, :]
    tl.store(out, acc_w, mask=col_ok[:, None] & h_ok[None, :])
    if pid == 0:
        tl.store(grad_b_down_ptr + adapter * gen_rank + h, acc_b, mask=h_ok)


@triton.jit
def _lpt_shift_kernel(
    out_ptr,  # (B, n+L, d) contiguous: rows n.. receive hidden
    mask_out_ptr,  # (B, n+L) contiguous
    hidden_ptr,  # (B, L, d)
    mask_ptr,  # (B, L), read when HAS_MASK
    num_tokens,
    seq_len,
    hidden_size,
    stride_h_b,
    stride_h_t,
    stride_h_d,
    stride_m_b,
    stride_m_t,
    HAS_MASK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Rows ``t0 .. t0+BLOCK_T`` of sample ``b``: ``out[b, n+t] = hidden[b, t]``, ``mask_out[b, n+t] = mask[b, t]``;
    program 0 of each sample also writes the ones of the prompt rows of the mask."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)  # [BLOCK_T]
    row_ok = rows < seq_len
    total = num_tokens + seq_len
    out_rows = out_ptr + (b * total + num_tokens + rows) * hidden_size  # [BLOCK_T]
    for d0 in range(0, hidden_size, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        ok = row_ok[:, None] & (cols < hidden_size)[None, :]
        offsets = b * stride_h_b + rows[:, None] * stride_h_t + cols[None, :] * stride_h_d
        tile = tl.load(hidden_ptr + offsets, mask=ok, other=0.0)  # [BLOCK_T, BLOCK_D]
        tl.store(out_rows[:, None] + cols[None, :], tile.to(out_ptr.dtype.element_ty), mask=ok)
    if HAS_MASK:
        keep = tl.load(mask_ptr + b * stride_m_b + rows * stride_m_t, mask=row_ok, other=0)
    else:
        keep = tl.full([BLOCK_T], 1, tl.int32)
    tl.store(mask_out_ptr + b * total + num_tokens + rows, keep.to(mask_out_ptr.dtype.element_ty), mask=row_ok)
    if tl.program_id(1) == 0:
        for p0 in range(0, num_tokens, BLOCK_T):
            prompt_rows = p0 + tl.arange(0, BLOCK_T).to(tl.int64)
            ones = tl.full([BLOCK_T], 1, tl.int32).to(mask_out_ptr.dtype.element_ty)
            tl.store(mask_out_ptr + b * total + prompt_rows, ones, mask=prompt_rows < num_tokens)


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------


NUM_WARPS = 8
"""At 4 warps the up-projection and its backward spill on sm_90 for h = 128; at 8 none does."""

UP_BWD_BLOCK_S = 32
"""Slots per step of ``d_w_up``'s loop. At 16 it spills 40 bytes on sm_90 for h = 128 (255 registers); at 32 it
takes 157 registers and no spill."""


MAX_PRE_BLOCK_D = 32
"""The ``d`` step of MPPG's projection dots on a GPU. At 64 the ``[BLOCK_D, h]`` slice of ``w_down`` spills 216
bytes on sm_90 for h = 128 (255 registers); at 32 it takes 167 registers and no spill."""


def generator_blocks(gen_rank: int) -> dict[str, int]:
    """Tiles: GPU 16 slots x 64 columns; the interpreter takes wide column tiles. ``BLOCK_H`` is the generator's
    rank padded to a power of two >= 16 (``tl.dot``)."""
    wide = interpreting()
    return {
        "BLOCK_S": 16,
        "BLOCK_C": 512 if wide else 64,
        "BLOCK_H": max(16, triton.next_power_of_2(gen_rank)),
    }


def slot_strides(view: torch.Tensor, slots_per_sample: int) -> tuple[torch.Tensor, int, int, int]:
    """``(view, stride_b, stride_s, stride_c)`` addressing the slot rows of a ``(B, n, d)`` view: for APPG a slot
    is a row, for NPG (one slot per sample) a slot is the sample's ``n * d`` elements, which must then be packed
    (a non-packed NPG view is made contiguous)."""
    if slots_per_sample == 1 and view.shape[1] > 1 and view.stride(1) != view.shape[2] * view.stride(2):
        view = view.contiguous()
    return view, view.stride(0), view.stride(1), view.stride(2)


def slot_pre(hidden, starts, ends, slot_adapter, w_down, b_down, pre, arg_rows=None) -> None:
    """Launch :func:`_lpt_pre_kernel` over the ``S`` slots into ``pre (S, h)``: the generators ``w_down (N, d, h)``,
    ``b_down (N, h)`` (``N = 1`` for one generator), each slot on generator 0 or (given ``slot_adapter (S,)``) on
    its adapter's; MPPG given ``arg_rows (S, h)`` int64."""
    num_slots, batch = starts.numel(), hidden.shape[0]
    blocks = generator_blocks(pre.shape[1])
    max_pool, mixed = arg_rows is not None, slot_adapter is not None
    _lpt_pre_kernel[(num_slots,)](
        pre, arg_rows if max_pool else pre, hidden, starts, ends, slot_adapter if mixed else starts, w_down, b_down,
        num_slots // batch, hidden.shape[1], hidden.shape[2], pre.shape[1], *hidden.stride(), *w_down.stride(),
        b_down.stride(0), MAX_POOL=max_pool, MIXED=mixed, BLOCK_T=16,
        BLOCK_D=MAX_PRE_BLOCK_D if max_pool and not interpreting() else blocks["BLOCK_C"], BLOCK_H=blocks["BLOCK_H"],
        num_warps=NUM_WARPS,
    )  # fmt: skip


def lpt_generate_fwd(hidden, starts, ends, w_down, b_down, w_up, b_up, dropout_p: float, seed: int, out,
                     arg_rows=None):  # fmt: skip
    """Write the prompt into ``out`` (a ``(B, n, d)`` view with unit column stride, any dtype: a fresh tensor or
    rows ``0..n-1`` of the insertion buffer) for slot windows ``starts``/``ends`` ``(S,)``; return ``pre (S, h)``
    in fp32. Two launches. Windows are averaged (NPG, APPG), or, given ``arg_rows`` (an ``(S, h)`` int64 tensor),
    max-pooled after the projection (MPPG), the row of each maximum written to ``arg_rows`` for the backward."""
    num_slots = starts.numel()
    batch = hidden.shape[0]
    hidden_size, gen_rank = w_down.shape
    width = w_up.shape[1]
    b_down, b_up = b_down.contiguous(), b_up.contiguous()  # the kernels read the biases at unit stride
    blocks = generator_blocks(gen_rank)
    pre = torch.empty((num_slots, gen_rank), dtype=torch.float32, device=hidden.device)
    if num_slots == 0:
        return pre
    slots_per_sample = num_slots // batch
    slot_pre(hidden, starts, ends, None, w_down.unsqueeze(0), b_down.unsqueeze(0), pre, arg_rows)
    if out.stride(2) != 1 or (slots_per_sample == 1 and out.stride(1) != hidden_size):
        raise ValueError(f"out must have packed rows of width {width}, got strides {out.stride()}")
    grid = launch_grid(
        triton.cdiv(num_slots, blocks["BLOCK_S"]), triton.cdiv(width, blocks["BLOCK_C"]), sizes=f"w_up's width {width}"
    )
    _lpt_up_kernel[grid](
        out, pre, w_up, b_up, num_slots, slots_per_sample, width, gen_rank, float(dropout_p), int(seed),
        out.stride(0), out.stride(1), w_up.stride(0), w_up.stride(1), HAS_DROPOUT=dropout_p > 0.0,
        num_warps=NUM_WARPS, **blocks,
    )  # fmt: skip
    return pre


def lpt_shift_rows(hidden, attention_mask, out, mask_out, num_tokens: int) -> None:
    """``out[:, n:] = hidden`` and ``mask_out = cat(ones(B, n), attention_mask)`` in one launch."""
    batch, seq_len, hidden_size = hidden.shape
    if batch == 0:
        return
    block_t = 16
    has_mask = attention_mask is not None
    mask = attention_mask if has_mask else mask_out
    grid = launch_grid(batch, max(1, triton.cdiv(seq_len, block_t)), sizes=f"hidden's length L = {seq_len}")
    _lpt_shift_kernel[grid](
        out, mask_out, hidden, mask, num_tokens, seq_len, hidden_size, *hidden.stride(), mask.stride(0),
        mask.stride(1), HAS_MASK=has_mask, BLOCK_T=block_t, BLOCK_D=512 if interpreting() else 64,
    )  # fmt: skip


def lpt_insert_fwd(hidden, attention_mask, starts, ends, w_down, b_down, w_up, b_up, dropout_p: float, seed: int,
                   out, mask_out, arg_rows=None):  # fmt: skip
    """Fill the insertion buffer ``out (B, n+L, d)`` and ``mask_out (B, n+L)``; return ``pre (S, h)``. Three
    launches: the generator (:func:`lpt_generate_fwd`, MPPG given ``arg_rows``) writes rows ``0..n-1``, then
    :func:`lpt_shift_rows`."""
    num_tokens = out.shape[1] - hidden.shape[1]
    generator = (hidden, starts, ends, w_down, b_down, w_up, b_up, dropout_p, seed)
    pre = lpt_generate_fwd(*generator, out[:, :num_tokens], arg_rows)
    lpt_shift_rows(hidden, attention_mask, out, mask_out, num_tokens)
    return pre


def down_grads(grad_w_down, grad_b_down, grad_pre, hidden, starts, ends, arg_rows=None, segments=None) -> None:
    """Launch :func:`_lpt_down_bwd_kernel`: ``grad_w_down (N, d, h)`` and ``grad_b_down (N, h)`` from ``grad_pre
    (S, h)``, over every slot (``N = 1``) or (given ``segments``, ``(order, seg)``) each adapter's own slots; MPPG
    given the forward's ``arg_rows``."""
    num, hidden_size, gen_rank = grad_w_down.shape
    blocks = generator_blocks(gen_rank)
    max_pool, mixed = arg_rows is not None, segments is not None
    order, seg = segments if mixed else (starts, starts)
    _lpt_down_bwd_kernel[(triton.cdiv(hidden_size, blocks["BLOCK_C"]), num)](
        grad_w_down, grad_b_down, grad_pre, arg_rows if max_pool else starts, hidden, starts, ends, order, seg,
        starts.numel(), starts.numel() // hidden.shape[0], hidden.shape[1], hidden_size, gen_rank, *hidden.stride(),
        MAX_POOL=max_pool, MIXED=mixed, BLOCK_T=16, BLOCK_D=blocks["BLOCK_C"], BLOCK_H=blocks["BLOCK_H"],
        num_warps=NUM_WARPS,
    )  # fmt: skip


def lpt_generate_bwd(grad, hidden, starts, ends, pre, w_up, dropout_p: float, seed: int, arg_rows=None):
    """fp32 ``(d_w_down, d_b_down, d_w_up, d_b_up)`` from ``grad``, the prompt's gradient as a ``(B, n, d)`` view
    (any strides, e.g. rows ``0..n-1`` of the insertion buffer's gradient); three launches. Given the forward's
    ``arg_rows`` (MPPG), each window's gradient goes to its arg-max rows instead of spreading over the window."""
    num_slots = starts.numel()
    batch = hidden.shape[0]
    hidden_size = hidden.shape[2]
    gen_rank = pre.shape[1]
    width = w_up.shape[1]
    blocks = generator_blocks(gen_rank)
    device = grad.device

    def empty(*shape):
        return torch.empty(shape, dtype=torch.float32, device=device)

    grad_w_up, grad_b_up, grad_pre = empty(gen_rank, width), empty(width), empty(num_slots, gen_rank)
    grad_w_down, grad_b_down = empty(hidden_size, gen_rank), empty(gen_rank)
    if num_slots == 0:
        return grad_w_down.zero_(), grad_b_down.zero_(), grad_w_up.zero_(), grad_b_up.zero_()
    slots_per_sample = num_slots // batch
    grad, *grad_strides = slot_strides(grad, slots_per_sample)
    common = dict(HAS_DROPOUT=dropout_p > 0.0, num_warps=NUM_WARPS, **blocks)
    _lpt_up_bwd_kernel[(triton.cdiv(width, blocks["BLOCK_C"]),)](
        grad_w_up, grad_b_up, grad, pre, num_slots, slots_per_sample, width, gen_rank, float(dropout_p),
        int(seed), *grad_strides, **{**common, "BLOCK_S": UP_BWD_BLOCK_S},
    )  # fmt: skip
    _lpt_pre_bwd_kernel[(triton.cdiv(num_slots, blocks["BLOCK_S"]),)](
        grad_pre, grad, pre, w_up, num_slots, slots_per_sample, width, gen_rank, float(dropout_p), int(seed),
        *grad_strides, w_up.stride(0), w_up.stride(1), **common,
    )  # fmt: skip
    down_grads(grad_w_down[None], grad_b_down[None], grad_pre, hidden, starts, ends, arg_rows)
    return grad_w_down, grad_b_down, grad_w_up, grad_b_up


@triton.jit
def _dropout_kernel(out_ptr, rows, width, dropout_p, seed, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    scale = dropout_tile(seed, r, c, width, dropout_p)
    tl.store(out_ptr + r[:, None] * width + c[None, :], scale, mask=(r < rows)[:, None] & (c < width)[None, :])


def dropout_multipliers(rows: int, width: int, dropout_p: float, seed: int, device) -> torch.Tensor:
    """The ``(rows, width)`` multipliers the generator kernels use for ``seed`` (for tests and inspection)."""
    out = torch.empty((rows, width), dtype=torch.float32, device=device)
    grid = (triton.cdiv(rows, 16), triton.cdiv(width, 256))
    _dropout_kernel[grid](out, rows, width, float(dropout_p), int(seed), BLOCK_R=16, BLOCK_C=256)
    return out


def sm90_specs():
    """The generator kernels at the shipped GPU tiles, for h = 128 (the official default) and h = 16."""
    from prompt_ops.kernels.compile_check import KernelSpec

    specs = []
    for block_h in (16, 128):
        tiles = {"BLOCK_S": 16, "BLOCK_C": 64, "BLOCK_H": block_h}
        window = {"BLOCK_T": 16, "BLOCK_D": 64, "BLOCK_H": block_h}
        for label, kernel, constexprs in (
            ("lpt_pre", _lpt_pre_kernel, {**window, "MAX_POOL": False, "MIXED": False}),
            ("lpt_up", _lpt_up_kernel, {**tiles, "HAS_DROPOUT": True}),
            ("lpt_up_bwd", _lpt_up_bwd_kernel, {**tiles, "BLOCK_S": UP_BWD_BLOCK_S, "HAS_DROPOUT": True}),
            ("lpt_pre_bwd", _lpt_pre_bwd_kernel, {**tiles, "HAS_DROPOUT": True}),
            ("lpt_down_bwd", _lpt_down_bwd_kernel, {**window, "MAX_POOL": False, "MIXED": False}),
            ("lpt_max_pre", _lpt_pre_kernel, {**window, "BLOCK_D": MAX_PRE_BLOCK_D, "MAX_POOL": True, "MIXED": False}),
            ("lpt_max_down_bwd", _lpt_down_bwd_kernel, {**window, "MAX_POOL": True, "MIXED": False}),
        ):
            pointers = {name: "*fp32" for name in kernel.arg_names if name.endswith("_ptr")}
            for name in ("starts_ptr", "ends_ptr", "arg_ptr", "adapter_ptr", "order_ptr", "seg_ptr"):
                if name in pointers:
                    pointers[name] = "*i64"
            specs.append(KernelSpec(f"{label}[H{block_h}]", kernel, pointers, constexprs, NUM_WARPS))
    shift_pointers = {"out_ptr": "*fp32", "mask_out_ptr": "*i64", "hidden_ptr": "*fp32", "mask_ptr": "*i64"}
    shift_constexprs = {"HAS_MASK": True, "BLOCK_T": 16, "BLOCK_D": 64}
    specs.append(KernelSpec("lpt_shift", _lpt_shift_kernel, shift_pointers, shift_constexprs, 4))
    return specs
