"""EPT's prompt builder (DESIGN.md §7) as Triton kernels: fusion attention, multi-space projection, gate.

Notation: ``Ps (s, d)`` the short prompt, ``A (L_max, r)``, ``B (r, d)``, ``c`` the scale, ``Q = c A B``,
``tau = 1 / sqrt(d)``, ``K`` subspaces of rank ``h`` concatenated as ``Wd_cat (d, K*h)`` (column ``k*h + j`` is
``w_down[k, :, j]``) and ``Wu_cat (K*h, d)`` (row ``k*h + j`` is ``w_up[k, j]``)::

    S  = tau Ps Q^T            Pa = softmax_rows(S)          Pf = Ps + Pa Q
    g  = softmax(mean_rows(Pf) Wg + bg)                      Z  = Pf Wd_cat        Zs = Z * g[col // h]
    P  = Pf + Zs Wu_cat

``Q`` is never stored: every kernel that needs a tile of it recomputes ``c A[rows] @ B[:, cols]``
(``pooled_low_rank_tile``), since ``r`` is small.

Forward, three launches: (1) ``Pa`` per row tile, two passes over ``Q``'s rows (softmax statistics, then normalised
probabilities); (2) ``Pf`` per (row, column) tile; (3) per row tile, the gate from the column means of ``Pf``
(computed directly in the expanded ``K*h`` space, where each ``g_k`` repeats ``h`` times) and ``P``. ``Pa``, ``Pf``
and ``g`` are returned for the backward.

Backward from ``dP`` (chain rule through the lines above)::

    dZs = dP Wu_cat^T     dZ = dZs * g_exp     dg_k = sum over block k of (dZs * Z)
    dWu_cat = Zs^T dP     dWd_cat = Pf^T dZ    dlogit = g * (dg - <g, dg>)   dWg = mean(Pf) dlogit^T   dbg = dlogit
    dPf = dP + dZ Wd_cat^T + (Wg dlogit) / s                          (the gate reads the mean of Pf's rows)
    dPa = dPf Q^T         dS = Pa * (dPa - rowsum(dPa * Pa))           dPs = dPf + tau dS Q
    dQ  = Pa^T dPf + tau dS^T Ps                 dA = c dQ B^T          dB = c A^T dQ

in seven launches: projection (``dZ``, ``Zs``, ``dg`` partials, ``dPf`` without the gate term); gate (one program);
subspace weights and the gate term of ``dPf`` per column tile; ``dS`` per row tile; ``dPs`` (the forward's fusion
kernel again, with ``tau dS`` for ``Pa`` and ``dPf`` for ``Ps``); ``dQ`` tiles reduced into per-tile partials of
``dA`` and ``dB``; and DePT's partial-sum kernel. All reductions are deterministic.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import triton
import triton.language as tl

from prompt_ops.kernels.common import launch_grid, load_tile, low_rank_tile, reduce_block
from prompt_ops.kernels.dept_embed import _dept_embed_bwd_reduce_kernel
from prompt_ops.kernels.runtime import interpreting

MAX_SUBSPACE_WIDTH = 64
"""``K * h`` (padded) is held in registers as ``[BLOCK_S, BLOCK_KH]`` tiles."""


@triton.jit
def _scores_tile(
    left_ptr,  # (s, d): Ps, or dPf in the backward
    a_ptr,
    b_ptr,
    rows,
    row_ok,
    keys,  # [BLOCK_L] rows of Q
    key_ok,
    hidden,
    rank,
    factor,  # c * tau, or c
    stride_l_s,
    stride_l_d,
    stride_a_l,
    stride_a_r,
    stride_b_r,
    stride_b_d,
    BLOCK_S: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """``factor * left[rows] @ (A[keys] @ B)^T`` as ``[BLOCK_S, BLOCK_L]`` fp32, over d-chunks."""
    acc = tl.zeros([BLOCK_S, BLOCK_L], dtype=tl.float32)
    for d0 in range(0, hidden, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        col_ok = cols < hidden
        left = tl.load(
            left_ptr + rows[:, None] * stride_l_s + cols[None, :] * stride_l_d,
            mask=row_ok[:, None] & col_ok[None, :],
            other=0.0,
        ).to(tl.float32)  # [BLOCK_S, BLOCK_D]
        knowledge = low_rank_tile(
            a_ptr, b_ptr, keys, key_ok, cols, col_ok, rank, stride_a_l, stride_a_r, stride_b_r, stride_b_d,
            BLOCK_L, BLOCK_D, BLOCK_R,
        )  # fmt: skip
        acc += tl.dot(left, tl.trans(knowledge), input_precision="ieee")
    return acc * factor


@triton.jit
def _ept_attention_kernel(
    probs_ptr,  # (s, L_max) fp32 out
    prompt_ptr,
    a_ptr,
    b_ptr,
    num_rows,
    num_keys,
    hidden,
    rank,
    factor,
    stride_p_s,
    stride_p_d,
    stride_a_l,
    stride_a_r,
    stride_b_r,
    stride_b_d,
    BLOCK_S: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    row_ok = rows < num_rows
    row_max = tl.full([BLOCK_S], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_S], dtype=tl.float32)
    for l0 in range(0, num_keys, BLOCK_L):  # softmax statistics, online
        keys = l0 + tl.arange(0, BLOCK_L).to(tl.int64)
        key_ok = keys < num_keys
        scores = _scores_tile(
            prompt_ptr, a_ptr, b_ptr, rows, row_ok, keys, key_ok, hidden, rank, factor, stride_p_s, stride_p_d,
            stride_a_l, stride_a_r, stride_b_r, stride_b_d, BLOCK_S, BLOCK_L, BLOCK_D, BLOCK_R,
        )  # fmt: skip
        scores = tl.where(key_ok[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(scores - new_max[:, None]), axis=1)
        row_max = new_max
    for l0 in range(0, num_keys, BLOCK_L):  # normalised probabilities
        keys = l0 + tl.arange(0, BLOCK_L).to(tl.int64)
        key_ok = keys < num_keys
        scores = _scores_tile(
            prompt_ptr, a_ptr, b_ptr, rows, row_ok, keys, key_ok, hidden, rank, factor, stride_p_s, stride_p_d,
            stride_a_l, stride_a_r, stride_b_r, stride_b_d, BLOCK_S, BLOCK_L, BLOCK_D, BLOCK_R,
        )  # fmt: skip
        probs = tl.exp(scores - row_max[:, None]) / row_sum[:, None]
        tl.store(probs_ptr + rows[:, None] * num_keys + keys[None, :], probs, mask=row_ok[:, None] & key_ok[None, :])


@triton.jit
def _ept_mix_kernel(
    out_ptr,  # (s, d) fp32: base + weight_scale * M @ Q
    base_ptr,  # (s, d)
    mix_ptr,  # (s, L_max) fp32 contiguous
    a_ptr,
    b_ptr,
    num_rows,
    num_keys,
    hidden,
    rank,
    factor,  # c, times tau in the backward
    stride_base_s,
    stride_base_d,
    stride_a_l,
    stride_a_r,
    stride_b_r,
    stride_b_d,
    BLOCK_S: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Forward: ``Pf = Ps + Pa @ Q``. Backward: ``dPs = dPf + tau dS @ Q``."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    row_ok = rows < num_rows
    col_ok = cols < hidden
    tile_ok = row_ok[:, None] & col_ok[None, :]
    acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    for l0 in range(0, num_keys, BLOCK_L):
        keys = l0 + tl.arange(0, BLOCK_L).to(tl.int64)
        key_ok = keys < num_keys
        mix = tl.load(
            mix_ptr + rows[:, None] * num_keys + keys[None, :], mask=row_ok[:, None] & key_ok[None, :], other=0.0
        )  # [BLOCK_S, BLOCK_L]
        knowledge = low_rank_tile(
            a_ptr, b_ptr, keys, key_ok, cols, col_ok, rank, stride_a_l, stride_a_r, stride_b_r, stride_b_d,
            BLOCK_L, BLOCK_D, BLOCK_R,
        )  # fmt: skip
        acc += tl.dot(mix, knowledge, input_precision="ieee")
    base = tl.load(
        base_ptr + rows[:, None] * stride_base_s + cols[None, :] * stride_base_d, mask=tile_ok, other=0.0
    ).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * hidden + cols[None, :], base + factor * acc, mask=tile_ok)


@triton.jit
def _down_tile(w_down_ptr, dims, dim_ok, kh, kh_ok, sub_rank, stride_0, stride_1, stride_2):
    """``Wd_cat[dims, kh]`` ``[BLOCK_D, BLOCK_KH]``: column ``k*h + j`` is ``w_down[k, :, j]``."""
    k, j = kh // sub_rank, kh % sub_rank
    return tl.load(
        w_down_ptr + k[None, :] * stride_0 + dims[:, None] * stride_1 + j[None, :] * stride_2,
        mask=dim_ok[:, None] & kh_ok[None, :],
        other=0.0,
    ).to(tl.float32)


@triton.jit
def _up_tile(w_up_ptr, kh, kh_ok, cols, col_ok, sub_rank, stride_0, stride_1, stride_2):
    """``Wu_cat[kh, cols]`` ``[BLOCK_KH, BLOCK_D]``: row ``k*h + j`` is ``w_up[k, j]``."""
    k, j = kh // sub_rank, kh % sub_rank
    return tl.load(
        w_up_ptr + k[:, None] * stride_0 + j[:, None] * stride_1 + cols[None, :] * stride_2,
        mask=kh_ok[:, None] & col_ok[None, :],
        other=0.0,
    ).to(tl.float32)


@triton.jit
def _ept_project_kernel(
    out_ptr,  # (s, d) fp32: P
    gate_ptr,  # (K,) fp32 out
    fused_ptr,  # (s, d) fp32 contiguous: Pf
    w_down_ptr,
    w_up_ptr,
    w_gate_ptr,
    b_gate_ptr,
    num_rows,
    hidden,
    num_subspaces,
    sub_rank,
    stride_wd_0,
    stride_wd_1,
    stride_wd_2,
    stride_wu_0,
    stride_wu_1,
    stride_wu_2,
    stride_wg_d,
    stride_wg_k,
    stride_bg,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_KH: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    row_ok = rows < num_rows
    kh = tl.arange(0, BLOCK_KH).to(tl.int64)  # expanded subspace columns k*h + j
    kh_ok = kh < num_subspaces * sub_rank
    k_of = kh // sub_rank

    # Gate logits in the expanded space (each g_k repeats h times), from the column means of Pf.
    logits = tl.zeros([BLOCK_KH], dtype=tl.float32)
    for d0 in range(0, hidden, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        col_ok = cols < hidden
        col_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
        for s0 in range(0, num_rows, BLOCK_S):
            all_rows = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
            col_sum += tl.sum(load_tile(fused_ptr, all_rows, all_rows < num_rows, cols, col_ok, hidden, 1), axis=0)
        w_gate = tl.load(
            w_gate_ptr + cols[:, None] * stride_wg_d + k_of[None, :] * stride_wg_k,
            mask=col_ok[:, None] & kh_ok[None, :],
            other=0.0,
        ).to(tl.float32)  # [BLOCK_D, BLOCK_KH]
        logits += tl.sum(col_sum[:, None] * w_gate, axis=0) / num_rows
    logits += tl.load(b_gate_ptr + k_of * stride_bg, mask=kh_ok, other=0.0).to(tl.float32)
    logits = tl.where(kh_ok, logits, float("-inf"))
    weights = tl.exp(logits - tl.max(logits, axis=0))
    gate = weights / (tl.sum(weights, axis=0) / sub_rank)  # [BLOCK_KH] g_k at every column of block k
    if pid == 0:
        tl.store(gate_ptr + k_of, gate, mask=kh_ok & (kh % sub_rank == 0))

    projected = tl.zeros([BLOCK_S, BLOCK_KH], dtype=tl.float32)
    for d0 in range(0, hidden, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        dim_ok = dims < hidden
        fused = load_tile(fused_ptr, rows, row_ok, dims, dim_ok, hidden, 1)  # [BLOCK_S, BLOCK_D]
        down = _down_tile(w_down_ptr, dims, dim_ok, kh, kh_ok, sub_rank, stride_wd_0, stride_wd_1, stride_wd_2)
        projected += tl.dot(fused, down, input_precision="ieee")  # Z
    projected = projected * gate[None, :]  # Zs
    for d0 in range(0, hidden, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        col_ok = cols < hidden
        fused = load_tile(fused_ptr, rows, row_ok, cols, col_ok, hidden, 1)
        up = _up_tile(w_up_ptr, kh, kh_ok, cols, col_ok, sub_rank, stride_wu_0, stride_wu_1, stride_wu_2)
        value = fused + tl.dot(projected, up, input_precision="ieee")
        tl.store(out_ptr + rows[:, None] * hidden + cols[None, :], value, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _ept_project_bwd_kernel(
    grad_z_ptr,  # (s, K*h) fp32 out: dZ
    scaled_z_ptr,  # (s, K*h) fp32 out: Zs
    grad_gate_part_ptr,  # (row tiles, K*h) fp32 out: column sums of dZs * Z
    grad_fused_ptr,  # (s, d) fp32 out: dP + dZ Wd_cat^T (the gate term is added later)
    grad_ptr,  # (s, d) dP, any strides
    fused_ptr,  # (s, d) fp32 Pf
    gate_ptr,  # (K,)
    w_down_ptr,
    w_up_ptr,
    num_rows,
    hidden,
    num_subspaces,
    sub_rank,
    stride_g_s,
    stride_g_d,
    stride_wd_0,
    stride_wd_1,
    stride_wd_2,
    stride_wu_0,
    stride_wu_1,
    stride_wu_2,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_KH: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    row_ok = rows < num_rows
    width = num_subspaces * sub_rank
    kh = tl.arange(0, BLOCK_KH).to(tl.int64)
    kh_ok = kh < width
    gate = tl.load(gate_ptr + kh // sub_rank, mask=kh_ok, other=0.0)  # [BLOCK_KH]

    projected = tl.zeros([BLOCK_S, BLOCK_KH], dtype=tl.float32)  # Z
    grad_scaled = tl.zeros([BLOCK_S, BLOCK_KH], dtype=tl.float32)  # dZs
    for d0 in range(0, hidden, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        dim_ok = dims < hidden
        fused = load_tile(fused_ptr, rows, row_ok, dims, dim_ok, hidden, 1)
        grad = load_tile(grad_ptr, rows, row_ok, dims, dim_ok, stride_g_s, stride_g_d)
        down = _down_tile(w_down_ptr, dims, dim_ok, kh, kh_ok, sub_rank, stride_wd_0, stride_wd_1, stride_wd_2)
        up = _up_tile(w_up_ptr, kh, kh_ok, dims, dim_ok, sub_rank, stride_wu_0, stride_wu_1, stride_wu_2)
        projected += tl.dot(fused, down, input_precision="ieee")
        grad_scaled += tl.dot(grad, tl.trans(up), input_precision="ieee")
    grad_z = grad_scaled * gate[None, :]
    small = rows[:, None] * width + kh[None, :]
    small_ok = row_ok[:, None] & kh_ok[None, :]
    tl.store(grad_z_ptr + small, grad_z, mask=small_ok)
    tl.store(scaled_z_ptr + small, projected * gate[None, :], mask=small_ok)
    tl.store(grad_gate_part_ptr + pid * width + kh, tl.sum(grad_scaled * projected, axis=0), mask=kh_ok)
    for d0 in range(0, hidden, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        dim_ok = dims < hidden
        grad = load_tile(grad_ptr, rows, row_ok, dims, dim_ok, stride_g_s, stride_g_d)
        down = _down_tile(w_down_ptr, dims, dim_ok, kh, kh_ok, sub_rank, stride_wd_0, stride_wd_1, stride_wd_2)
        value = grad + tl.dot(grad_z, tl.trans(down), input_precision="ieee")
        tl.store(grad_fused_ptr + rows[:, None] * hidden + dims[None, :], value, mask=row_ok[:, None] & dim_ok[None, :])


@triton.jit
def _ept_gate_bwd_kernel(
    grad_w_gate_ptr,  # (d, K) fp32 out
    grad_b_gate_ptr,  # (K,) fp32 out
    grad_mean_ptr,  # (d,) fp32 out: Wg dlogit
    grad_gate_part_ptr,  # (row tiles, K*h)
    fused_ptr,
    gate_ptr,
    w_gate_ptr,
    num_parts,
    num_rows,
    hidden,
    num_subspaces,
    sub_rank,
    stride_wg_d,
    stride_wg_k,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_KH: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    width = num_subspaces * sub_rank
    kh = tl.arange(0, BLOCK_KH).to(tl.int64)
    kh_ok = kh < width
    k = tl.arange(0, BLOCK_K).to(tl.int64)
    k_ok = k < num_subspaces
    expanded = tl.zeros([BLOCK_KH], dtype=tl.float32)
    for part in range(0, num_parts):
        expanded += tl.load(grad_gate_part_ptr + part * width + kh, mask=kh_ok, other=0.0)
    owner = ((kh[None, :] // sub_rank) == k[:, None]) & kh_ok[None, :]  # [BLOCK_K, BLOCK_KH]
    grad_gate = tl.sum(tl.where(owner, expanded[None, :], 0.0), axis=1)  # [BLOCK_K] dg
    gate = tl.load(gate_ptr + k, mask=k_ok, other=0.0)
    grad_logit = gate * (grad_gate - tl.sum(gate * grad_gate, axis=0))  # softmax backward
    tl.store(grad_b_gate_ptr + k, grad_logit, mask=k_ok)
    for d0 in range(0, hidden, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        col_ok = cols < hidden
        col_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
        for s0 in range(0, num_rows, BLOCK_S):
            rows = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
            col_sum += tl.sum(load_tile(fused_ptr, rows, rows < num_rows, cols, col_ok, hidden, 1), axis=0)
        mean = col_sum / num_rows
        both = col_ok[:, None] & k_ok[None, :]
        tl.store(grad_w_gate_ptr + cols[:, None] * num_subspaces + k[None, :], mean[:, None] * grad_logit[None, :],
                 mask=both)  # fmt: skip
        w_gate = tl.load(w_gate_ptr + cols[:, None] * stride_wg_d + k[None, :] * stride_wg_k, mask=both, other=0.0).to(
            tl.float32
        )
        tl.store(grad_mean_ptr + cols, tl.sum(w_gate * grad_logit[None, :], axis=1), mask=col_ok)


@triton.jit
def _ept_subspace_bwd_kernel(
    grad_w_down_ptr,  # (K, d, h) fp32 out
    grad_w_up_ptr,  # (K, h, d) fp32 out
    grad_fused_ptr,  # (s, d) fp32, in place: += grad_mean / s
    grad_ptr,  # (s, d) dP
    fused_ptr,
    grad_z_ptr,
    scaled_z_ptr,
    grad_mean_ptr,
    num_rows,
    hidden,
    num_subspaces,
    sub_rank,
    stride_g_s,
    stride_g_d,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_KH: tl.constexpr,
):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_ok = cols < hidden
    width = num_subspaces * sub_rank
    kh = tl.arange(0, BLOCK_KH).to(tl.int64)
    kh_ok = kh < width
    grad_mean = tl.load(grad_mean_ptr + cols, mask=col_ok, other=0.0) / num_rows  # [BLOCK_D]
    acc_up = tl.zeros([BLOCK_KH, BLOCK_D], dtype=tl.float32)
    acc_down = tl.zeros([BLOCK_D, BLOCK_KH], dtype=tl.float32)
    for s0 in range(0, num_rows, BLOCK_S):
        rows = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        row_ok = rows < num_rows
        scaled_z = load_tile(scaled_z_ptr, rows, row_ok, kh, kh_ok, width, 1)  # [BLOCK_S, BLOCK_KH]
        grad_z = load_tile(grad_z_ptr, rows, row_ok, kh, kh_ok, width, 1)
        grad = load_tile(grad_ptr, rows, row_ok, cols, col_ok, stride_g_s, stride_g_d)  # [BLOCK_S, BLOCK_D]
        fused = load_tile(fused_ptr, rows, row_ok, cols, col_ok, hidden, 1)
        acc_up += tl.dot(tl.trans(scaled_z), grad, input_precision="ieee")
        acc_down += tl.dot(tl.trans(fused), grad_z, input_precision="ieee")
        tile = grad_fused_ptr + rows[:, None] * hidden + cols[None, :]
        tile_ok = row_ok[:, None] & col_ok[None, :]
        tl.store(tile, tl.load(tile, mask=tile_ok, other=0.0) + grad_mean[None, :], mask=tile_ok)
    k, j = kh // sub_rank, kh % sub_rank
    tl.store(grad_w_up_ptr + kh[:, None] * hidden + cols[None, :], acc_up, mask=kh_ok[:, None] & col_ok[None, :])
    tl.store(grad_w_down_ptr + (k[None, :] * hidden + cols[:, None]) * sub_rank + j[None, :], acc_down,
             mask=col_ok[:, None] & kh_ok[None, :])  # fmt: skip


@triton.jit
def _ept_attention_bwd_kernel(
    grad_scores_ptr,  # (s, L_max) fp32 out: dS
    grad_fused_ptr,  # (s, d) fp32 dPf
    probs_ptr,  # (s, L_max) Pa
    a_ptr,
    b_ptr,
    num_rows,
    num_keys,
    hidden,
    rank,
    scale,
    stride_a_l,
    stride_a_r,
    stride_b_r,
    stride_b_d,
    BLOCK_S: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    row_ok = rows < num_rows
    row_dot = tl.zeros([BLOCK_S], dtype=tl.float32)  # rowsum(dPa * Pa)
    for l0 in range(0, num_keys, BLOCK_L):
        keys = l0 + tl.arange(0, BLOCK_L).to(tl.int64)
        key_ok = keys < num_keys
        grad_probs = _scores_tile(
            grad_fused_ptr,
            a_ptr,
            b_ptr,
            rows,
            row_ok,
            keys,
            key_ok,
            hidden,
            rank,
            scale,
            hidden,
            1,
            stride_a_l,
            stride_a_r,
            stride_b_r,
            stride_b_d,
            BLOCK_S,
            BLOCK_L,
            BLOCK_D,
            BLOCK_R,
        )  # fmt: skip  dPa = dPf Q^T
        probs = load_tile(probs_ptr, rows, row_ok, keys, key_ok, num_keys, 1)
        row_dot += tl.sum(grad_probs * probs, axis=1)
    for l0 in range(0, num_keys, BLOCK_L):
        keys = l0 + tl.arange(0, BLOCK_L).to(tl.int64)
        key_ok = keys < num_keys
        grad_probs = _scores_tile(
            grad_fused_ptr, a_ptr, b_ptr, rows, row_ok, keys, key_ok, hidden, rank, scale, hidden, 1,
            stride_a_l, stride_a_r, stride_b_r, stride_b_d, BLOCK_S, BLOCK_L, BLOCK_D, BLOCK_R,
        )  # fmt: skip
        probs = load_tile(probs_ptr, rows, row_ok, keys, key_ok, num_keys, 1)
        grad_scores = probs * (grad_probs - row_dot[:, None])  # softmax backward
        tl.store(
            grad_scores_ptr + rows[:, None] * num_keys + keys[None, :],
            grad_scores,
            mask=row_ok[:, None] & key_ok[None, :],
        )


@triton.jit
def _ept_knowledge_bwd_kernel(
    grad_a_part_ptr,  # (column tiles, L_max, r) fp32
    grad_b_part_ptr,  # (key tiles, r, d) fp32
    probs_ptr,
    grad_fused_ptr,
    grad_scores_ptr,
    prompt_ptr,
    a_ptr,
    b_ptr,
    num_rows,
    num_keys,
    hidden,
    rank,
    scale,
    inv_sqrt_d,
    stride_p_s,
    stride_p_d,
    stride_a_l,
    stride_a_r,
    stride_b_r,
    stride_b_d,
    BLOCK_S: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    pid_l = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    keys = pid_l * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    key_ok = keys < num_keys
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_ok = cols < hidden
    grad_q = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)  # dQ = Pa^T dPf + tau dS^T Ps
    for s0 in range(0, num_rows, BLOCK_S):
        rows = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        row_ok = rows < num_rows
        probs = load_tile(probs_ptr, rows, row_ok, keys, key_ok, num_keys, 1)  # [BLOCK_S, BLOCK_L]
        grad_scores = load_tile(grad_scores_ptr, rows, row_ok, keys, key_ok, num_keys, 1)
        grad_fused = load_tile(grad_fused_ptr, rows, row_ok, cols, col_ok, hidden, 1)  # [BLOCK_S, BLOCK_D]
        prompt = load_tile(prompt_ptr, rows, row_ok, cols, col_ok, stride_p_s, stride_p_d)
        grad_q += tl.dot(tl.trans(probs), grad_fused, input_precision="ieee")
        grad_q += inv_sqrt_d * tl.dot(tl.trans(grad_scores), prompt, input_precision="ieee")
    for k0 in range(0, rank, BLOCK_R):  # Q = c A B: dA = c dQ B^T, dB = c A^T dQ, per-tile partials
        r = k0 + tl.arange(0, BLOCK_R).to(tl.int64)
        r_ok = r < rank
        b = load_tile(b_ptr, r, r_ok, cols, col_ok, stride_b_r, stride_b_d)  # [BLOCK_R, BLOCK_D]
        a = load_tile(a_ptr, keys, key_ok, r, r_ok, stride_a_l, stride_a_r)  # [BLOCK_L, BLOCK_R]
        grad_a = scale * tl.dot(grad_q, tl.trans(b), input_precision="ieee")  # [BLOCK_L, BLOCK_R]
        grad_b = scale * tl.dot(tl.trans(a), grad_q, input_precision="ieee")  # [BLOCK_R, BLOCK_D]
        a_offsets = (pid_d * num_keys + keys[:, None]) * rank + r[None, :]
        tl.store(grad_a_part_ptr + a_offsets, grad_a, mask=key_ok[:, None] & r_ok[None, :])
        b_offsets = (pid_l * rank + r[:, None]) * hidden + cols[None, :]
        tl.store(grad_b_part_ptr + b_offsets, grad_b, mask=r_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration and launchers
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BuilderConfig:
    block_s: int  # prompt rows
    block_l: int  # rows of Q
    block_d: int  # columns
    num_warps: int = 4


GPU_CONFIG = BuilderConfig(block_s=16, block_l=32, block_d=32, num_warps=8)
"""The shipped GPU tiles: 16 prompt rows x 32 rows of Q x 32 columns, 8 warps. From sm_90 compile stats: every
builder kernel at most 174 registers and no spills for K*h up to 64; 64 columns at 4 warps spilled in three."""

RANK_CHUNK = 16


def default_config(num_rows: int, num_keys: int, hidden: int) -> BuilderConfig:
    if not interpreting():
        return GPU_CONFIG
    return BuilderConfig(
        block_s=min(64, max(16, triton.next_power_of_2(num_rows))),
        block_l=min(256, max(16, triton.next_power_of_2(num_keys))),
        block_d=min(256, max(16, triton.next_power_of_2(hidden))),
    )


def block_width(num_subspaces: int, sub_rank: int) -> int:
    """``BLOCK_KH``: ``K * h`` padded to a power of two >= 16; refuses what does not fit the registers."""
    width = num_subspaces * sub_rank
    if width > MAX_SUBSPACE_WIDTH:
        raise ValueError(
            f"w_down (K, d, h): the Triton EPT builder takes num_subspaces * subspace_rank <= {MAX_SUBSPACE_WIDTH}, "
            f"got {num_subspaces} * {sub_rank} = {width}; use backend='torch'"
        )
    return max(16, triton.next_power_of_2(width))


def ept_prompt_fwd(prompt, lora_a, lora_b, w_down, w_up, w_gate, b_gate, scale: float, config=None):
    """Three launches. Returns fp32 ``(P (s, d), Pf (s, d), Pa (s, L_max), g (K,))``."""
    num_rows, hidden = prompt.shape
    num_keys, rank = lora_a.shape
    num_subspaces, _, sub_rank = w_down.shape
    device = prompt.device
    config = config or default_config(num_rows, num_keys, hidden)
    block = {"BLOCK_S": config.block_s, "BLOCK_L": config.block_l, "BLOCK_D": config.block_d, "BLOCK_R": RANK_CHUNK}
    tiles_s = triton.cdiv(num_rows, config.block_s)
    probs = torch.empty((num_rows, num_keys), dtype=torch.float32, device=device)
    fused = torch.empty((num_rows, hidden), dtype=torch.float32, device=device)
    out = torch.empty((num_rows, hidden), dtype=torch.float32, device=device)
    gate = torch.empty((num_subspaces,), dtype=torch.float32, device=device)
    low_rank = (lora_a.stride(0), lora_a.stride(1), lora_b.stride(0), lora_b.stride(1))
    _ept_attention_kernel[(tiles_s,)](
        probs, prompt, lora_a, lora_b, num_rows, num_keys, hidden, rank, scale / math.sqrt(hidden),
        prompt.stride(0), prompt.stride(1), *low_rank, num_warps=config.num_warps, **block,
    )  # fmt: skip
    _ept_mix_kernel[launch_grid(tiles_s, triton.cdiv(hidden, config.block_d), sizes=f"prompt's width d = {hidden}")](
        fused, prompt, probs, lora_a, lora_b, num_rows, num_keys, hidden, rank, scale,
        prompt.stride(0), prompt.stride(1), *low_rank, num_warps=config.num_warps, **block,
    )  # fmt: skip
    _ept_project_kernel[(tiles_s,)](
        out, gate, fused, w_down, w_up, w_gate, b_gate, num_rows, hidden, num_subspaces, sub_rank,
        *w_down.stride(), *w_up.stride(), w_gate.stride(0), w_gate.stride(1), b_gate.stride(0),
        BLOCK_S=config.block_s, BLOCK_D=config.block_d, BLOCK_KH=block_width(num_subspaces, sub_rank),
        num_warps=config.num_warps,
    )  # fmt: skip
    return out, fused, probs, gate


def ept_prompt_bwd(grad, prompt, lora_a, lora_b, w_down, w_up, w_gate, fused, probs, gate, scale: float, config=None):
    """Seven launches. Returns fp32 gradients of ``(prompt, lora_a, lora_b, w_down, w_up, w_gate, b_gate)``."""
    num_rows, hidden = prompt.shape
    num_keys, rank = lora_a.shape
    num_subspaces, _, sub_rank = w_down.shape
    width = num_subspaces * sub_rank
    device = prompt.device
    config = config or default_config(num_rows, num_keys, hidden)
    block = {"BLOCK_S": config.block_s, "BLOCK_L": config.block_l, "BLOCK_D": config.block_d, "BLOCK_R": RANK_CHUNK}
    block_kh = block_width(num_subspaces, sub_rank)
    tiles_s, tiles_d = triton.cdiv(num_rows, config.block_s), triton.cdiv(hidden, config.block_d)
    tiles_l = triton.cdiv(num_keys, config.block_l)
    low_rank = (lora_a.stride(0), lora_a.stride(1), lora_b.stride(0), lora_b.stride(1))

    def empty(*shape):
        return torch.empty(shape, dtype=torch.float32, device=device)

    grad_z, scaled_z, gate_parts, grad_fused = empty(num_rows, width), empty(num_rows, width), empty(tiles_s, width), (
        empty(num_rows, hidden)
    )  # fmt: skip
    _ept_project_bwd_kernel[(tiles_s,)](
        grad_z, scaled_z, gate_parts, grad_fused, grad, fused, gate, w_down, w_up, num_rows, hidden,
        num_subspaces, sub_rank, grad.stride(0), grad.stride(1), *w_down.stride(), *w_up.stride(),
        BLOCK_S=config.block_s, BLOCK_D=config.block_d, BLOCK_KH=block_kh, num_warps=config.num_warps,
    )  # fmt: skip
    grad_w_gate, grad_b_gate, grad_mean = empty(hidden, num_subspaces), empty(num_subspaces), empty(hidden)
    _ept_gate_bwd_kernel[(1,)](
        grad_w_gate, grad_b_gate, grad_mean, gate_parts, fused, gate, w_gate, tiles_s, num_rows, hidden,
        num_subspaces, sub_rank, w_gate.stride(0), w_gate.stride(1), BLOCK_S=config.block_s,
        BLOCK_D=config.block_d, BLOCK_KH=block_kh, BLOCK_K=triton.next_power_of_2(num_subspaces),
        num_warps=config.num_warps,
    )  # fmt: skip
    grad_w_down, grad_w_up = empty(num_subspaces, hidden, sub_rank), empty(num_subspaces, sub_rank, hidden)
    _ept_subspace_bwd_kernel[(tiles_d,)](
        grad_w_down, grad_w_up, grad_fused, grad, fused, grad_z, scaled_z, grad_mean, num_rows, hidden,
        num_subspaces, sub_rank, grad.stride(0), grad.stride(1), BLOCK_S=config.block_s, BLOCK_D=config.block_d,
        BLOCK_KH=block_kh, num_warps=config.num_warps,
    )  # fmt: skip
    grad_scores = empty(num_rows, num_keys)
    _ept_attention_bwd_kernel[(tiles_s,)](
        grad_scores, grad_fused, probs, lora_a, lora_b, num_rows, num_keys, hidden, rank, scale, *low_rank,
        num_warps=config.num_warps, **block,
    )  # fmt: skip
    grad_prompt = empty(num_rows, hidden)
    _ept_mix_kernel[(tiles_s, tiles_d)](
        grad_prompt, grad_fused, grad_scores, lora_a, lora_b, num_rows, num_keys, hidden, rank,
        scale / math.sqrt(hidden), hidden, 1, *low_rank, num_warps=config.num_warps, **block,
    )  # fmt: skip
    grad_a_part, grad_b_part = empty(tiles_d, num_keys, rank), empty(tiles_l, rank, hidden)
    _ept_knowledge_bwd_kernel[(tiles_l, tiles_d)](
        grad_a_part, grad_b_part, probs, grad_fused, grad_scores, prompt, lora_a, lora_b, num_rows, num_keys,
        hidden, rank, scale, 1.0 / math.sqrt(hidden), prompt.stride(0), prompt.stride(1), *low_rank,
        num_warps=config.num_warps, **block,
    )  # fmt: skip
    grad_a, grad_b = empty(num_keys, rank), empty(rank, hidden)
    reduce = reduce_block()
    blocks_a = triton.cdiv(grad_a.numel(), reduce)
    _dept_embed_bwd_reduce_kernel[(blocks_a + triton.cdiv(grad_b.numel(), reduce),)](
        grad_a, grad_a_part, grad_b, grad_b_part, tiles_d, grad_a.numel(), grad_a.numel(), tiles_l,
        grad_b.numel(), blocks_a, BLOCK=reduce, num_warps=4,
    )  # fmt: skip
    return grad_prompt, grad_a, grad_b, grad_w_down, grad_w_up, grad_w_gate, grad_b_gate


def sm90_specs():
    """Every EPT builder kernel at the shipped tiles, for ``K*h`` = 32 (the default 4 x 8) and 64 (the largest)."""
    from prompt_ops.kernels.compile_check import KernelSpec

    config = GPU_CONFIG
    attention = {"BLOCK_S": config.block_s, "BLOCK_L": config.block_l, "BLOCK_D": config.block_d, "BLOCK_R": 16}
    kernels = [
        ("ept_attention", _ept_attention_kernel, attention),
        ("ept_mix", _ept_mix_kernel, attention),
        ("ept_attention_bwd", _ept_attention_bwd_kernel, attention),
        ("ept_knowledge_bwd", _ept_knowledge_bwd_kernel, attention),
    ]
    for width in (32, 64):
        projection = {"BLOCK_S": config.block_s, "BLOCK_D": config.block_d, "BLOCK_KH": width}
        kernels += [
            (f"ept_project[KH{width}]", _ept_project_kernel, projection),
            (f"ept_project_bwd[KH{width}]", _ept_project_bwd_kernel, projection),
            (f"ept_gate_bwd[KH{width}]", _ept_gate_bwd_kernel, {**projection, "BLOCK_K": 4}),
            (f"ept_subspace_bwd[KH{width}]", _ept_subspace_bwd_kernel, projection),
        ]
    specs = []
    for label, kernel, constexprs in kernels:
        pointers = {name: "*fp32" for name in kernel.arg_names if name.endswith("_ptr")}
        specs.append(KernelSpec(label, kernel, pointers, constexprs, config.num_warps))
    return specs
