"""LPT's generators of a mixed-adapter batch (many stacked adapters, one per row): Triton kernels.

The adapters' generators are stacked and zero-padded, ``w_down (N, d, h_max)``, ``b_down (N, h_max)``, ``w_up (N,
h_max, W_max)``, ``b_up (N, W_max)``, and every row of the batch runs the generator of its adapter ``a_b`` (``-1``:
none, zeros). The computation is :mod:`prompt_ops.kernels.lpt`'s over slots, with each slot addressing its
adapter's weights (Punica's BGMV: a pointer offset ``adapter * stride``), so one launch set serves every adapter:

- the pooling generators (APPG, MPPG) have ``n_max`` slots per row; slot ``i`` of a row whose adapter has ``n_a``
  tokens is its adapter's window ``i - (n_max - n_a)`` when that is ``>= 0`` (the prompt right-aligned), else an
  inactive slot (adapter ``-1``, zeros); the output row of a slot is ``d`` wide;
- NPG has one slot per row, ``n_max * d`` wide: its adapter's ``n_a * d`` columns land in the last ``n_a * d``
  (column ``c`` reads the adapter's column ``c - (n_max - n_a) * d``), the others are zeros.

So an adapter ``a`` has a column ``width[a]`` and ``shift[a]`` (``n_a * d`` and ``(n_max - n_a) * d`` for NPG, ``d`` and
``0`` for the pooling generators). Forward, two launches as for one adapter: the slot pre-activations
(:mod:`prompt_ops.kernels.lpt`'s kernel with ``MIXED``: one program per slot, on its adapter's ``w_down``), then the
up-projection over tiles of slots that may mix adapters (a rank-1 update per ``h``, each slot reading its own adapter's
row of ``w_up``), with dropout at each slot's adapter's probability, keyed by ``(seed, slot * out_width + column)``.
Backward, three launches, with no atomics: the slots are sorted by adapter (a stable sort, so the order is fixed) and
each adapter's programs reduce ``d_w_up``/``d_b_up`` and (the single op's kernel with ``MIXED``)
``d_w_down``/``d_b_down`` over its own segment of slots, while ``d_pre`` is one program per slot on its adapter's
``w_up``. Adapters without rows get exact zeros, and so does the padding: columns past ``width[a]`` are never read, and
the rows ``>= h_a`` of ``w_up`` (and so ``d_pre``'s columns ``>= h_a``) are zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from prompt_ops.kernels.common import dropout_tile, launch_grid, load_tile
from prompt_ops.kernels.lpt import (
    MAX_PRE_BLOCK_D,
    NUM_WARPS,
    _lpt_down_bwd_kernel,
    _lpt_pre_kernel,
    down_grads,
    generator_blocks,
    prompt_grad_tile,
    slot_offsets,
    slot_pre,
    slot_strides,
    up_grad_step,
)

MIXED_UP_BWD_BLOCK_S = 16
"""Slots per step of the mixed ``d_w_up`` loop (gathered through the sorted order): at the single op's 32 it takes
252 of the 255 registers on sm_90 for h = 128 (no spill, but none to spare); at 16, 176."""


@triton.jit
def _slot_columns(adapter_ptr, widths_ptr, shifts_ptr, slots, slot_ok, cols, out_width):
    """Each slot's adapter (clamped to 0, ``[BLOCK_S]``), the weight column of each output column
    (``[BLOCK_S, BLOCK_C]``: ``cols - shift[a]``) and where it is one of the adapter's (``[BLOCK_S, BLOCK_C]``; never
    on inactive slots)."""
    adapter = tl.load(adapter_ptr + slots, mask=slot_ok, other=-1)  # [BLOCK_S]
    active = slot_ok & (adapter >= 0)
    adapter = tl.maximum(adapter, 0)
    width = tl.load(widths_ptr + adapter, mask=active, other=0)  # [BLOCK_S]
    shift = tl.load(shifts_ptr + adapter, mask=active, other=0)  # [BLOCK_S]
    src = cols[None, :] - shift[:, None]  # [BLOCK_S, BLOCK_C]
    inside = active[:, None] & (src >= 0) & (src < width[:, None]) & (cols < out_width)[None, :]
    return adapter, src, inside


@triton.jit
def _mixed_lpt_up_kernel(
    out_ptr,  # slot rows of (S, out_width), at sample stride ``stride_o_b`` and slot stride ``stride_o_s``
    pre_ptr,  # (S, h_max) fp32
    w_up_ptr,  # (N, h_max, W_max)
    b_up_ptr,  # (N, W_max)
    adapter_ptr,  # (S,) int64
    widths_ptr,  # (N,) int64
    shifts_ptr,  # (N,) int64
    dropout_ptr,  # (N,) fp32, read when HAS_DROPOUT
    num_slots,
    slots_per_sample,
    out_width,
    gen_rank,
    seed,
    stride_o_b,
    stride_o_s,
    stride_wu_a,
    stride_wu_h,
    stride_wu_c,
    stride_bu_a,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``out[s, c] = dropout(relu(pre[s]) @ w_up[a_s, :, c - shift] + b_up[a_s, c - shift])`` on a tile of slots
    whose adapters may differ: ``h`` rank-1 updates, each slot reading its own adapter's row of ``w_up`` (slots of
    one adapter read the same addresses); zeros outside each slot's adapter columns."""
    slots = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)  # [BLOCK_S]
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)  # [BLOCK_C]
    slot_ok = slots < num_slots
    adapter, src, inside = _slot_columns(adapter_ptr, widths_ptr, shifts_ptr, slots, slot_ok, cols, out_width)
    w_rows = w_up_ptr + adapter[:, None] * stride_wu_a + src * stride_wu_c  # [BLOCK_S, BLOCK_C]
    value = tl.load(b_up_ptr + adapter[:, None] * stride_bu_a + src, mask=inside, other=0.0).to(tl.float32)
    for k in range(0, gen_rank):
        act = tl.maximum(tl.load(pre_ptr + slots * gen_rank + k, mask=slot_ok, other=0.0), 0.0)  # [BLOCK_S]
        w_k = tl.load(w_rows + k * stride_wu_h, mask=inside, other=0.0).to(tl.float32)  # [BLOCK_S, BLOCK_C]
        value += act[:, None] * w_k
    if HAS_DROPOUT:
        p = tl.load(dropout_ptr + adapter, mask=slot_ok, other=0.0)  # [BLOCK_S]
        value = value * dropout_tile(seed, slots, cols, out_width, p[:, None])
    value = tl.where(inside, value, 0.0)  # [BLOCK_S, BLOCK_C]
    rows = slot_offsets(slots, slots_per_sample, stride_o_b, stride_o_s)  # [BLOCK_S]
    tl.store(out_ptr + rows[:, None] + cols[None, :], value, mask=slot_ok[:, None] & (cols < out_width)[None, :])


@triton.jit
def _segment(seg_ptr, adapter):
    """``[lo, hi)``: adapter ``adapter``'s positions in the slot order sorted by adapter."""
    return tl.load(seg_ptr + adapter), tl.load(seg_ptr + adapter + 1)


@triton.jit
def _mixed_lpt_up_bwd_kernel(
    grad_w_up_ptr,  # (N, h_max, W_max) fp32
    grad_b_up_ptr,  # (N, W_max) fp32
    grad_ptr,  # dP: slot rows at sample stride ``stride_g_b``, slot stride ``stride_g_s``, column stride ``stride_g_c``
    pre_ptr,  # (S, h_max) fp32
    order_ptr,  # (S,) int64: the slots sorted by adapter
    seg_ptr,  # (N + 1,) int64: adapter a's slots are order[seg[a]:seg[a+1]]
    widths_ptr,
    shifts_ptr,
    dropout_ptr,
    slots_per_sample,
    out_width,
    w_width,
    gen_rank,
    seed,
    stride_g_b,
    stride_g_s,
    stride_g_c,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Program ``(a, j)``: ``d_w_up[a][:, cols]`` and ``d_b_up[a][cols]`` over adapter ``a``'s slots, in order."""
    adapter = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)  # [BLOCK_C] w_up columns
    width = tl.load(widths_ptr + adapter)
    shift = tl.load(shifts_ptr + adapter)
    col_ok = cols < width
    p = 0.0
    if HAS_DROPOUT:
        p = tl.load(dropout_ptr + adapter)
    h = tl.arange(0, BLOCK_H).to(tl.int64)
    h_ok = h < gen_rank
    lo, hi = _segment(seg_ptr, adapter)
    acc_w = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_C], dtype=tl.float32)
    for s0 in range(lo, hi, BLOCK_S):
        index = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        slot_ok = index < hi
        slots = tl.load(order_ptr + index, mask=slot_ok, other=0)  # [BLOCK_S]
        acc_w, acc_b = up_grad_step(
            acc_w, acc_b, grad_ptr, pre_ptr, slots, slot_ok, cols + shift, col_ok, h, h_ok, gen_rank,
            slots_per_sample, stride_g_b, stride_g_s, stride_g_c, out_width, p, seed, HAS_DROPOUT,
        )  # [BLOCK_H, BLOCK_C], [BLOCK_C]  # fmt: skip
    stored = cols < w_width
    base = grad_w_up_ptr + adapter * gen_rank * w_width
    tl.store(base + h[:, None] * w_width + cols[None, :], acc_w, mask=h_ok[:, None] & stored[None, :])
    tl.store(grad_b_up_ptr + adapter * w_width + cols, acc_b, mask=stored)


@triton.jit
def _mixed_lpt_pre_bwd_kernel(
    grad_pre_ptr,  # (S, h_max) fp32 out: d_pre
    grad_ptr,
    pre_ptr,
    w_up_ptr,  # (N, h_max, W_max)
    adapter_ptr,
    widths_ptr,
    shifts_ptr,
    dropout_ptr,
    slots_per_sample,
    out_width,
    gen_rank,
    seed,
    stride_g_b,
    stride_g_s,
    stride_g_c,
    stride_wu_a,
    stride_wu_h,
    stride_wu_c,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """One slot (BGMV): ``d_pre = (dP * D) @ w_up[a]^T * 1[pre > 0]`` over its adapter's columns; inactive slots
    get zeros (and are never read)."""
    slot = tl.program_id(0).to(tl.int64)
    slots = tl.full([1], 0, tl.int64) + slot  # [1]: a one-slot tile for the shared tile helpers
    adapter = tl.load(adapter_ptr + slot)
    active = (adapter >= 0).to(tl.int64)
    adapter = tl.maximum(adapter, 0)
    width = tl.load(widths_ptr + adapter) * active  # an inactive slot has no columns
    shift = tl.load(shifts_ptr + adapter)
    p = 0.0
    if HAS_DROPOUT:
        p = tl.load(dropout_ptr + adapter)
    h = tl.arange(0, BLOCK_H).to(tl.int64)
    h_ok = h < gen_rank
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for c0 in range(0, out_width, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C).to(tl.int64)  # [BLOCK_C] prompt columns
        src = cols - shift  # [BLOCK_C] the adapter's columns
        inside = (src >= 0) & (src < width) & (cols < out_width)
        grad = prompt_grad_tile(
            grad_ptr, slots, slots >= 0, cols, inside, slots_per_sample, stride_g_b, stride_g_s, stride_g_c,
            out_width, p, seed, HAS_DROPOUT,
        )  # [1, BLOCK_C]  # fmt: skip
        w_up = load_tile(w_up_ptr + adapter * stride_wu_a, h, h_ok, src, inside, stride_wu_h, stride_wu_c)
        acc += tl.sum(w_up * grad, axis=1)  # [BLOCK_H, BLOCK_C] -> [BLOCK_H]
    pre = tl.load(pre_ptr + slot * gen_rank + h, mask=h_ok, other=0.0)  # [BLOCK_H]
    tl.store(grad_pre_ptr + slot * gen_rank + h, tl.where(pre > 0.0, acc, 0.0), mask=h_ok)


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------


def adapter_columns(num_tokens: torch.Tensor, num_slots: int, hidden_size: int, naive: bool, w_width: int):
    """``(widths, shifts, out_width)``: each adapter's ``(N,)`` int64 column width and shift in a slot row, and the
    row's width (module docstring). A width never exceeds ``w_up``'s ``w_width`` columns, so the kernels stay inside
    ``w_up`` even for an NPG adapter too wide for it (refused by the op's data checks, unchecked without them)."""
    if naive:
        widths = (num_tokens * hidden_size).clamp_(max=w_width)
        return widths, (num_slots - num_tokens) * hidden_size, num_slots * hidden_size
    return torch.full_like(num_tokens, hidden_size), torch.zeros_like(num_tokens), hidden_size


def mixed_lpt_fwd(hidden, starts, ends, slot_adapter, w_down, b_down, w_up, b_up, num_tokens, dropout, seed: int, out,
                  arg_rows=None):  # fmt: skip
    """Write every row's prompt into ``out (B, n_max, d)`` (fp32, contiguous) for the slot windows ``starts``,
    ``ends`` and adapters ``slot_adapter`` ``(S,)`` (``S = B`` for NPG, ``B * n_max`` otherwise); ``num_tokens (N,)``
    int64; ``dropout (N,)`` fp32 probabilities or None. Return ``pre (S, h_max)`` fp32. Two launches; MPPG given
    ``arg_rows (S, h_max)`` int64."""
    num_slots, batch = starts.numel(), hidden.shape[0]
    hidden_size, gen_rank = w_down.shape[1:]
    b_down, b_up = b_down.contiguous(), b_up.contiguous()  # the kernels read the biases at unit column stride
    blocks = generator_blocks(gen_rank)
    pre = torch.empty((num_slots, gen_rank), dtype=torch.float32, device=hidden.device)
    if num_slots == 0:
        return pre
    slots_per_sample = num_slots // batch
    slot_pre(hidden, starts, ends, slot_adapter, w_down, b_down, pre, arg_rows)
    widths, shifts, out_width = adapter_columns(
        num_tokens, out.shape[1], hidden_size, slots_per_sample == 1, w_up.shape[2]
    )
    grid = launch_grid(
        triton.cdiv(num_slots, blocks["BLOCK_S"]), triton.cdiv(out_width, blocks["BLOCK_C"]),
        sizes=f"the prompt row's width {out_width}",
    )  # fmt: skip
    _mixed_lpt_up_kernel[grid](
        out, pre, w_up, b_up, slot_adapter, widths, shifts, dropout if dropout is not None else pre, num_slots,
        slots_per_sample, out_width, gen_rank, int(seed), out.stride(0), out.stride(1),
        *w_up.stride(), b_up.stride(0), HAS_DROPOUT=dropout is not None, BLOCK_S=blocks["BLOCK_S"],
        BLOCK_C=blocks["BLOCK_C"], num_warps=NUM_WARPS,
    )  # fmt: skip
    return pre


def adapter_segments(slot_adapter: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, seg)``: the slots sorted by adapter (stable; inactive slots last) and ``(N + 1,)`` offsets, adapter
    ``a``'s slots being ``order[seg[a]:seg[a+1]]`` (no device sync)."""
    key = torch.where(slot_adapter >= 0, slot_adapter, num)
    ordered, order = torch.sort(key, stable=True)
    seg = torch.searchsorted(ordered, torch.arange(num + 1, device=key.device, dtype=key.dtype))
    return order, seg


def mixed_lpt_bwd(grad, hidden, starts, ends, slot_adapter, pre, w_up, num_tokens, dropout, seed: int,
                  arg_rows=None):  # fmt: skip
    """fp32 ``(d_w_down (N, d, h_max), d_b_down, d_w_up (N, h_max, W_max), d_b_up)`` from the prompt's gradient
    ``grad (B, n_max, d)``; three launches, each adapter's sums over its own slots in a fixed order."""
    num_slots, batch, hidden_size = starts.numel(), hidden.shape[0], hidden.shape[2]
    num, gen_rank, w_width = w_up.shape
    blocks = generator_blocks(gen_rank)

    def empty(*shape):
        return torch.empty(shape, dtype=torch.float32, device=grad.device)

    grads = empty(num, hidden_size, gen_rank), empty(num, gen_rank), empty(num, gen_rank, w_width), empty(num, w_width)
    if num_slots == 0 or num == 0:
        return tuple(g.zero_() for g in grads)
    grad_w_down, grad_b_down, grad_w_up, grad_b_up = grads  # every element written by the kernels below
    slots_per_sample = num_slots // batch
    grad, *grad_strides = slot_strides(grad, slots_per_sample)
    widths, shifts, out_width = adapter_columns(num_tokens, grad.shape[1], hidden_size, slots_per_sample == 1, w_width)
    order, seg = adapter_segments(slot_adapter, num)
    has_dropout = dropout is not None
    probabilities = dropout if has_dropout else pre
    _mixed_lpt_up_bwd_kernel[(num, triton.cdiv(w_width, blocks["BLOCK_C"]))](
        grad_w_up, grad_b_up, grad, pre, order, seg, widths, shifts, probabilities, slots_per_sample, out_width,
        w_width, gen_rank, int(seed), *grad_strides, HAS_DROPOUT=has_dropout, BLOCK_S=MIXED_UP_BWD_BLOCK_S,
        BLOCK_C=blocks["BLOCK_C"], BLOCK_H=blocks["BLOCK_H"], num_warps=NUM_WARPS,
    )  # fmt: skip
    grad_pre = torch.empty((num_slots, gen_rank), dtype=torch.float32, device=grad.device)
    _mixed_lpt_pre_bwd_kernel[(num_slots,)](
        grad_pre, grad, pre, w_up, slot_adapter, widths, shifts, probabilities, slots_per_sample, out_width, gen_rank,
        int(seed), *grad_strides, *w_up.stride(), HAS_DROPOUT=has_dropout, BLOCK_C=blocks["BLOCK_C"],
        BLOCK_H=blocks["BLOCK_H"], num_warps=NUM_WARPS,
    )  # fmt: skip
    down_grads(grad_w_down, grad_b_down, grad_pre, hidden, starts, ends, arg_rows, (order, seg))
    return grad_w_down, grad_b_down, grad_w_up, grad_b_up


def sm90_specs():
    """The mixed generator kernels at the shipped GPU tiles, for ``h_max`` = 128 and 16, each pooling variant."""
    from prompt_ops.kernels.compile_check import KernelSpec

    int_pointers = ("starts_ptr", "ends_ptr", "arg_ptr", "adapter_ptr", "widths_ptr", "shifts_ptr", "order_ptr",
                    "seg_ptr")  # fmt: skip
    specs = []
    for block_h in (16, 128):
        window = {"BLOCK_T": 16, "BLOCK_D": 64, "BLOCK_H": block_h}
        for label, kernel, constexprs in (
            ("mixed_lpt_pre", _lpt_pre_kernel, {**window, "MAX_POOL": False, "MIXED": True}),
            ("mixed_lpt_max_pre", _lpt_pre_kernel,
             {**window, "BLOCK_D": MAX_PRE_BLOCK_D, "MAX_POOL": True, "MIXED": True}),
            ("mixed_lpt_up", _mixed_lpt_up_kernel, {"BLOCK_S": 16, "BLOCK_C": 64, "HAS_DROPOUT": True}),
            ("mixed_lpt_up_bwd", _mixed_lpt_up_bwd_kernel,
             {"BLOCK_S": MIXED_UP_BWD_BLOCK_S, "BLOCK_C": 64, "BLOCK_H": block_h, "HAS_DROPOUT": True}),
            ("mixed_lpt_pre_bwd", _mixed_lpt_pre_bwd_kernel, {"BLOCK_C": 64, "BLOCK_H": block_h, "HAS_DROPOUT": True}),
            ("mixed_lpt_down_bwd", _lpt_down_bwd_kernel, {**window, "MAX_POOL": False, "MIXED": True}),
            ("mixed_lpt_max_down_bwd", _lpt_down_bwd_kernel, {**window, "MAX_POOL": True, "MIXED": True}),
        ):  # fmt: skip
            if label == "mixed_lpt_up" and block_h == 16:
                continue  # no BLOCK_H: one config
            pointers = {name: "*fp32" for name in kernel.arg_names if name.endswith("_ptr")}
            pointers.update({name: "*i64" for name in int_pointers if name in pointers})
            specs.append(KernelSpec(f"{label}[H{block_h}]", kernel, pointers, constexprs, NUM_WARPS))
    return specs
