"""Triton pieces shared by the op families: prompt-row tiles, partial sums, dropout, block-size helpers."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from prompt_ops.kernels.runtime import interpreting

REDUCE_BLOCK = 1024
"""Elements per program of a partial-sum launch on a GPU (4 warps, 8 fp32 per thread)."""

REDUCE_BLOCK_INTERPRET = 16384
"""The same under the interpreter, where fewer, larger programs are cheaper."""

MAX_GRID = (2**31 - 1, 65535, 65535)
"""CUDA's limit on the programs along each axis of one launch."""


def launch_grid(*dims: int, sizes: str) -> tuple[int, ...]:
    """``dims`` as a launch grid, or a ``ValueError`` naming ``sizes`` (the arguments that set the grid) when an axis
    exceeds CUDA's limit (:data:`MAX_GRID`): a clear error instead of a failed launch on the GPU. The interpreter
    has no such limit but is held to it too (with its own, larger tiles, so it refuses only larger sizes)."""
    for axis, (count, limit) in enumerate(zip(dims, MAX_GRID, strict=False)):
        if count > limit:
            raise ValueError(
                f"{sizes} is too large for one launch: it needs {count:,} programs along grid axis {axis}, above "
                f"CUDA's limit of {limit:,}"
            )
    return dims


@triton.jit
def load_tile(ptr, rows, row_ok, cols, col_ok, stride_r, stride_c):
    """The ``[len(rows), len(cols)]`` tile ``ptr[rows, cols]`` as fp32, zero where a row or column is masked."""
    return tl.load(
        ptr + rows[:, None] * stride_r + cols[None, :] * stride_c, mask=row_ok[:, None] & col_ok[None, :], other=0.0
    ).to(tl.float32)


@triton.jit
def head_token_rows(pid_t, num_head, total, BLOCK_T: tl.constexpr):
    """Row tile ``pid_t`` of a ``(total, *)`` plane whose first ``num_head`` rows are a head (the prompt rows or
    slots) and the rest one row per token column (or ``A`` row): ``rows`` (int64), ``is_head``
    (``rows < num_head``), ``is_token`` (``num_head <= rows < total``) and ``tok`` (``rows - num_head`` on token
    rows, else 0), each ``[BLOCK_T]``."""
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)  # [BLOCK_T]
    is_head = rows < num_head  # [BLOCK_T]
    is_token = (rows >= num_head) & (rows < total)  # [BLOCK_T]
    tok = tl.where(is_token, rows - num_head, 0)  # [BLOCK_T]
    return rows, is_head, is_token, tok


@triton.jit
def head_token_tile(num_head, total, hidden, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's tile of a ``(total, d)`` plane (:func:`head_token_rows`): grid axes 0 and 1 pick the row and
    column tile.

    Returns ``rows`` and ``cols`` (int64), ``col_ok`` (``cols < d``), ``is_head``, ``is_token`` and ``tok`` as
    :func:`head_token_rows` gives them."""
    pid_t = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    rows, is_head, is_token, tok = head_token_rows(pid_t, num_head, total, BLOCK_T)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # [BLOCK_D]
    col_ok = cols < hidden  # [BLOCK_D]
    return rows, cols, col_ok, is_head, is_token, tok


@triton.jit
def bank_prompt_rows(adapter, num_adapters, prompt_lengths_ptr, rows, is_slot, num_slots, slots_front):
    """A bank row's prompt slots: ``adapter`` its index ``a`` (int64), ``rows``/``is_slot`` its output columns
    (:func:`head_token_rows` over ``S = num_slots`` slots), ``slots_front`` 1 when the ``S - m_a`` masked slots
    stand in front of the prompt (``f_a = S - m_a``), 0 when after it (``f_a = 0``).

    Returns ``has_adapter`` (``a`` in ``[0, N)``; any other index, possible only when the host check is off, reads
    nothing, as the base model), ``index`` (``a``, or 0 without an adapter: a safe address), ``slot_ok`` (the
    ``[BLOCK_T]`` columns holding prompt rows ``[f_a, f_a + m_a)``) and ``prompt_row`` (their prompt row, else 0)."""
    has_adapter = (adapter >= 0) & (adapter < num_adapters)
    index = tl.where(has_adapter, adapter, 0)
    num_prompt = tl.where(has_adapter, tl.load(prompt_lengths_ptr + index).to(tl.int64), 0)  # m_a (0 for -1)
    first_slot = (num_slots - num_prompt) * slots_front  # f_a
    slot_ok = is_slot & (rows >= first_slot) & (rows < first_slot + num_prompt)  # [BLOCK_T] the prompt rows
    return has_adapter, index, slot_ok, tl.where(slot_ok, rows - first_slot, 0)


@triton.jit
def store_bank_mask(
    mask_out_row_ptr, mask_row_ptr, rows, total, is_slot, slot_ok, is_token, tok, stride_mask_t,
    HAS_MASK: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """One row's extended mask over the ``[BLOCK_T]`` output columns ``rows`` of ``total``: 1 on its prompt slots
    (``slot_ok``), 0 on the other slots, then the given mask row (``mask_row_ptr``, when ``HAS_MASK``) or ones on
    its token columns ``tok``, rounded to the dtype of ``mask_out_row_ptr`` (the row's first output entry)."""
    if HAS_MASK:
        given = tl.load(mask_row_ptr + tok * stride_mask_t, mask=is_token, other=1).to(tl.float32)  # [BLOCK_T]
    else:
        given = tl.full([BLOCK_T], 1.0, tl.float32)
    keep = tl.where(is_slot, tl.where(slot_ok, 1.0, 0.0), given)  # [BLOCK_T]
    tl.store(mask_out_row_ptr + rows, keep.to(mask_out_row_ptr.dtype.element_ty), mask=rows < total)


@triton.jit
def token_embedding_tile(
    weight_ptr, ids_row_ptr, tok, is_token, vocab, cols, col_ok, stride_ids_t, stride_w_v, stride_w_d
):  # fmt: skip
    """``W[ids[tok], cols]`` of one batch row as ``[BLOCK_T, BLOCK_D]`` fp32 (``ids_row_ptr`` points at the row's
    ids); zeros on rows that are not tokens and for ids outside ``[0, vocab)`` (possible only when the host check is
    switched off: they read nothing)."""
    ids = tl.load(ids_row_ptr + tok * stride_ids_t, mask=is_token, other=0).to(tl.int64)  # [BLOCK_T]
    id_ok = is_token & (ids >= 0) & (ids < vocab)  # [BLOCK_T]
    return load_tile(weight_ptr, ids, id_ok, cols, col_ok, stride_w_v, stride_w_d)


@triton.jit
def gather_shifted_rows(grad_row_ptr, head_ok, head_source, row_ok, column, num_head, seq_len, col_ok, stride_g_t):
    """One batch row's contribution to a gather-sum over ``dX[b] (num_head + L, d)``, as ``[BLOCK_T, BLOCK_D]``
    fp32: column ``head_source`` where ``head_ok``, token column ``column`` (at ``num_head + column``) where
    ``row_ok`` and ``0 <= column < L``, zeros elsewhere. ``grad_row_ptr`` already points at the row and the tile's
    columns (``[1, BLOCK_D]``)."""
    token_ok = row_ok & (column >= 0) & (column < seq_len)  # [BLOCK_T]
    source = tl.where(head_ok, head_source, num_head + tl.where(token_ok, column, 0))  # [BLOCK_T]
    return tl.load(
        grad_row_ptr + source[:, None] * stride_g_t, mask=(head_ok | token_ok)[:, None] & col_ok[None, :], other=0.0
    ).to(tl.float32)


@triton.jit
def broadcast_prompt_tile(
    out_ptr,  # (B, m+L, d) contiguous
    mask_out_ptr,  # (B, m+L) contiguous
    prompt_ptr,  # (m, d)
    tile,
    num_batch,
    num_prompt,
    seq_len,
    hidden,
    stride_p_m,
    stride_p_d,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Write prompt rows ``tile`` (row-major over ``(m / BLOCK_T, d / BLOCK_D)`` tiles) for every sample, and the
    mask's ones over the prompt. The prompt tile is loaded once and stored ``B`` times."""
    tiles_d = tl.cdiv(hidden, BLOCK_D)
    pid_t = tile // tiles_d
    pid_d = tile % tiles_d
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)  # [BLOCK_T]
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # [BLOCK_D]
    row_ok = rows < num_prompt
    ok = row_ok[:, None] & (cols < hidden)[None, :]  # [BLOCK_T, BLOCK_D]
    prompt = tl.load(prompt_ptr + rows[:, None] * stride_p_m + cols[None, :] * stride_p_d, mask=ok, other=0.0)
    prompt = prompt.to(tl.float32).to(out_ptr.dtype.element_ty)  # [BLOCK_T, BLOCK_D]
    total = num_prompt + seq_len
    ones = tl.full([BLOCK_T], 1.0, tl.float32).to(mask_out_ptr.dtype.element_ty)  # [BLOCK_T]
    out_base = out_ptr + rows[:, None] * hidden + cols[None, :]
    mask_base = mask_out_ptr + rows
    for _ in range(0, num_batch):
        tl.store(out_base, prompt, mask=ok)
        if pid_d == 0:
            tl.store(mask_base, ones, mask=row_ok)
        out_base += total * hidden
        mask_base += total


@triton.jit
def sum_prompt_grad_tile(
    grad_prompt_ptr,  # (m, d) fp32 contiguous
    grad_out_ptr,  # (B, m+L, d) any strides
    tile,
    num_batch,
    num_prompt,
    hidden,
    stride_g_b,
    stride_g_t,
    stride_g_d,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``d_prompt[tile] = sum_b dX[b, tile]`` in fp32 registers (deterministic: one program per tile)."""
    tiles_d = tl.cdiv(hidden, BLOCK_D)
    rows = (tile // tiles_d) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)  # [BLOCK_T]
    cols = (tile % tiles_d) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # [BLOCK_D]
    ok = (rows < num_prompt)[:, None] & (cols < hidden)[None, :]
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    ptrs = grad_out_ptr + rows[:, None] * stride_g_t + cols[None, :] * stride_g_d
    for _ in range(0, num_batch):
        acc += tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)
        ptrs += stride_g_b
    tl.store(grad_prompt_ptr + rows[:, None] * hidden + cols[None, :], acc, mask=ok)


@triton.jit
def dropout_tile(seed, rows, cols, width, dropout_p):
    """Inverted-dropout multipliers ``[len(rows), len(cols)]`` of a ``(*, width)`` tensor: ``1/(1-p)`` where kept,
    else 0. Counter-based (philox via ``tl.rand``) and keyed by ``seed`` and the element index
    ``row * width + col``, so a backward regenerates exactly the forward's mask instead of storing it."""
    offsets = (rows[:, None] * width + cols[None, :]).to(tl.int32)
    keep = tl.rand(seed, offsets) >= dropout_p
    return tl.where(keep, 1.0 / (1.0 - dropout_p), 0.0)


@triton.jit
def dropout_scale(seed, row, rank, dropout_p, BLOCK_R: tl.constexpr):
    """:func:`dropout_tile` over the first ``BLOCK_R`` columns of a ``(*, rank)`` tensor: ``[len(row), BLOCK_R]``."""
    return dropout_tile(seed, row, tl.arange(0, BLOCK_R).to(tl.int64), rank, dropout_p)


@triton.jit
def sum_slabs(out_ptr, part_ptr, num_parts, slab_numel, out_numel, block_id, BLOCK: tl.constexpr):
    """``out[i] = sum_p part[p, i]`` for ``i < slab_numel``, zero for ``slab_numel <= i < out_numel``."""
    offsets = block_id * BLOCK + tl.arange(0, BLOCK).to(tl.int64)  # [BLOCK]
    valid = offsets < slab_numel
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    ptrs = part_ptr + offsets
    for _ in range(0, num_parts):
        acc += tl.load(ptrs, mask=valid, other=0.0)
        ptrs += slab_numel
    tl.store(out_ptr + offsets, acc, mask=offsets < out_numel)


@triton.jit
def _sum_partials_kernel(out_ptr, part_ptr, num_parts, slab_numel, BLOCK: tl.constexpr):
    sum_slabs(out_ptr, part_ptr, num_parts, slab_numel, slab_numel, tl.program_id(0).to(tl.int64), BLOCK)


def reduce_block() -> int:
    return REDUCE_BLOCK_INTERPRET if interpreting() else REDUCE_BLOCK


def sum_partials(parts: torch.Tensor) -> torch.Tensor:
    """Deterministic ``parts.sum(0)`` of a contiguous fp32 ``(P, n)`` buffer in one launch."""
    num_parts, numel = parts.shape
    out = torch.empty(numel, dtype=torch.float32, device=parts.device)
    block = reduce_block()
    _sum_partials_kernel[(triton.cdiv(numel, block),)](out, parts, num_parts, numel, BLOCK=block, num_warps=4)
    return out


@triton.jit
def pooled_low_rank_tile(
    a_ptr,  # (rows * pool, r) left factor
    col_scale_ptr,  # (r,) or unused
    b_ptr,  # (r, d) right factor
    rows,  # [BLOCK_T] int64 output rows (indices into the pooled left factor)
    row_ok,  # [BLOCK_T]
    cols,  # [BLOCK_D] int64
    col_ok,  # [BLOCK_D]
    rank,
    pool,
    stride_a_l,
    stride_a_r,
    stride_s,
    stride_b_r,
    stride_b_d,
    HAS_COL_SCALE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """``(avgpool_pool(A)[rows] * s) @ B[:, cols]`` as ``[BLOCK_T, BLOCK_D]`` fp32.

    Row ``j`` of the pooled factor is the mean of rows ``j*pool .. j*pool+pool-1`` of ``A``; ``s`` scales its
    columns when ``HAS_COL_SCALE``. With ``pool = 1`` and no scale this is DePT's ``A[rows] @ B``; LAMP's prompt is
    ``(avgpool_k(U) * q) @ V``. The rank is covered in chunks of ``BLOCK_R`` (>= 16 for ``tl.dot``), so registers
    do not grow with it.
    """
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for k0 in range(0, rank, BLOCK_R):
        r = k0 + tl.arange(0, BLOCK_R).to(tl.int64)  # [BLOCK_R]
        r_ok = r < rank
        left = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
        for i in range(0, pool):
            left += load_tile(a_ptr, rows * pool + i, row_ok, r, r_ok, stride_a_l, stride_a_r)  # [BLOCK_T, BLOCK_R]
        left = left / pool
        if HAS_COL_SCALE:
            left = left * tl.load(col_scale_ptr + r * stride_s, mask=r_ok, other=0.0).to(tl.float32)[None, :]
        right = load_tile(b_ptr, r, r_ok, cols, col_ok, stride_b_r, stride_b_d)  # [BLOCK_R, BLOCK_D]
        acc += tl.dot(left, right, input_precision="ieee")
    return acc


@triton.jit
def low_rank_tile(
    a_ptr, b_ptr, rows, row_ok, cols, col_ok, rank, stride_a_l, stride_a_r, stride_b_r, stride_b_d,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """``A[rows] @ B[:, cols]`` as ``[BLOCK_T, BLOCK_D]`` fp32 (DePT's offset and EPT's ``Q``, unscaled)."""
    return pooled_low_rank_tile(
        a_ptr, a_ptr, b_ptr, rows, row_ok, cols, col_ok, rank, 1, stride_a_l, stride_a_r, 0, stride_b_r, stride_b_d,
        False, BLOCK_T, BLOCK_D, BLOCK_R,
    )  # fmt: skip


@triton.jit
def shifted_low_rank_tile(
    lora_a_ptr, lora_b_ptr, start, tok, is_token, max_length, cols, col_ok, rank, stride_a_l, stride_a_r,
    stride_b_r, stride_b_d, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """``A[start + tok] @ B[:, cols]`` as ``[BLOCK_T, BLOCK_D]`` fp32: token column ``tok`` (int64) of a row starting
    at ``start`` reads row ``start + tok`` of ``A``, and zeros where that row is outside ``[0, max_length)`` (DePT's
    shifted offset; a mixed bank passes one adapter's factors and its own ``L_a``)."""
    position = start + tok  # [BLOCK_T] int64
    inside = is_token & (position >= 0) & (position < max_length)  # [BLOCK_T]
    return low_rank_tile(
        lora_a_ptr, lora_b_ptr, tl.where(inside, position, 0), inside, cols, col_ok, rank, stride_a_l, stride_a_r,
        stride_b_r, stride_b_d, BLOCK_T, BLOCK_D, BLOCK_R,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# ADePT's token-shared FFN offset (the single-adapter and the mixed-adapter kernels)
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def ffn_hidden_tile(
    ids,  # [BLOCK_N] int64 token ids (masked rows: any)
    id_ok,  # [BLOCK_N]
    n,  # [BLOCK_N] flattened token index, keys the dropout stream
    weight_ptr,
    w_down_ptr,  # (d, r) of the adapter
    b_down_ptr,  # (r,) of the adapter, unit stride
    hidden,
    rank,
    dropout_p,
    seed,
    stride_w_v,
    stride_w_d,
    stride_wd_d,
    stride_wd_r,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """``(Hd, D)``: ``Hd = (W[ids] @ w_down + b_down) * D`` as ``[BLOCK_N, BLOCK_R]`` fp32, accumulated over
    d-chunks, and the dropout multipliers ``D`` (ones without dropout), keyed by ``seed`` and ``n * rank + k``."""
    r = tl.arange(0, BLOCK_R).to(tl.int64)
    r_ok = r < rank
    acc = tl.zeros([BLOCK_N, BLOCK_R], dtype=tl.float32)
    for d0 in range(0, hidden, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)  # [BLOCK_D]
        col_ok = cols < hidden
        emb = load_tile(weight_ptr, ids, id_ok, cols, col_ok, stride_w_v, stride_w_d)  # [BLOCK_N, BLOCK_D]
        w_down = load_tile(w_down_ptr, cols, col_ok, r, r_ok, stride_wd_d, stride_wd_r)  # [BLOCK_D, BLOCK_R]
        acc += tl.dot(emb, w_down, input_precision="ieee")
    bias = tl.load(b_down_ptr + r, mask=r_ok, other=0.0).to(tl.float32)  # [BLOCK_R]
    scale = tl.full([BLOCK_N, BLOCK_R], 1.0, tl.float32)
    if HAS_DROPOUT:
        scale = dropout_scale(seed, n, rank, dropout_p, BLOCK_R)
    return (acc + bias[None, :]) * scale, scale


@triton.jit
def ffn_offset_tile(act, w_up_ptr, b_up_ptr, rank, cols, col_ok, stride_wu_r, stride_wu_d, BLOCK_R: tl.constexpr):
    """The offset ``relu(Hd) @ w_up[:, cols] + b_up[cols]`` as ``[BLOCK_N, BLOCK_D]`` fp32, from ``act = relu(Hd)``
    ``[BLOCK_N, BLOCK_R]`` (``b_up`` at unit stride)."""
    r = tl.arange(0, BLOCK_R).to(tl.int64)
    w_up = load_tile(w_up_ptr, r, r < rank, cols, col_ok, stride_wu_r, stride_wu_d)  # [BLOCK_R, BLOCK_D]
    b_up = tl.load(b_up_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)  # [BLOCK_D]
    return tl.dot(act, w_up, input_precision="ieee") + b_up[None, :]


@triton.jit
def ffn_hidden_grad_tile(
    grad_rows,  # [BLOCK_N] pointers to the tokens' rows of dX
    n_ok,  # [BLOCK_N]
    w_up_ptr,  # (r, d) of the adapter
    hidden,
    rank,
    stride_g_d,
    stride_wu_r,
    stride_wu_d,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """``dY @ w_up^T`` as ``[BLOCK_N, BLOCK_R]`` fp32, accumulated over d-chunks (the gradient of ``relu(Hd)``)."""
    r = tl.arange(0, BLOCK_R).to(tl.int64)
    r_ok = r < rank
    grad_act = tl.zeros([BLOCK_N, BLOCK_R], dtype=tl.float32)
    for d0 in range(0, hidden, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        col_ok = cols < hidden
        grad_y = tl.load(
            grad_rows[:, None] + cols[None, :] * stride_g_d, mask=n_ok[:, None] & col_ok[None, :], other=0.0
        ).to(tl.float32)  # [BLOCK_N, BLOCK_D]
        w_up = load_tile(w_up_ptr, r, r_ok, cols, col_ok, stride_wu_r, stride_wu_d)  # [BLOCK_R, BLOCK_D]
        grad_act += tl.dot(grad_y, tl.trans(w_up), input_precision="ieee")  # [BLOCK_N, BLOCK_R]
    return grad_act


@triton.jit
def add_ffn_weight_grads(
    acc_w_down,  # [BLOCK_D, BLOCK_R] fp32 running sums
    acc_b_down,  # [BLOCK_R]
    acc_w_up,  # [BLOCK_R, BLOCK_D]
    acc_b_up,  # [BLOCK_D]
    n,  # [BLOCK_N] flattened token index: row of the (N, r) act / dH buffers
    n_ok,  # [BLOCK_N]
    ids,  # [BLOCK_N] int64
    id_ok,  # [BLOCK_N]
    grad_rows,  # [BLOCK_N] pointers to the tokens' rows of dX
    act_ptr,  # (N, r) fp32: relu(Hd)
    grad_h_ptr,  # (N, r) fp32: dH
    weight_ptr,
    cols,  # [BLOCK_D] int64
    col_ok,  # [BLOCK_D]
    rank,
    stride_g_d,
    stride_w_v,
    stride_w_d,
    BLOCK_R: tl.constexpr,
):
    """The four running sums of the FFN's weight gradients over columns ``cols`` plus one token chunk's terms:
    ``E^T dH`` ``[BLOCK_D, BLOCK_R]``, ``sum dH`` ``[BLOCK_R]``, ``relu(Hd)^T dY`` ``[BLOCK_R, BLOCK_D]`` and ``sum
    dY`` ``[BLOCK_D]``."""
    r = tl.arange(0, BLOCK_R).to(tl.int64)  # [BLOCK_R]
    grad_y = tl.load(
        grad_rows[:, None] + cols[None, :] * stride_g_d, mask=n_ok[:, None] & col_ok[None, :], other=0.0
    ).to(tl.float32)  # [BLOCK_N, BLOCK_D]
    emb = load_tile(weight_ptr, ids, id_ok, cols, col_ok, stride_w_v, stride_w_d)  # [BLOCK_N, BLOCK_D]
    small = n[:, None] * rank + r[None, :]
    small_ok = n_ok[:, None] & (r < rank)[None, :]
    act = tl.load(act_ptr + small, mask=small_ok, other=0.0)  # [BLOCK_N, BLOCK_R]
    grad_h = tl.load(grad_h_ptr + small, mask=small_ok, other=0.0)  # [BLOCK_N, BLOCK_R]
    acc_w_down += tl.dot(tl.trans(emb), grad_h, input_precision="ieee")
    acc_b_down += tl.sum(grad_h, axis=0)
    acc_w_up += tl.dot(tl.trans(act), grad_y, input_precision="ieee")
    acc_b_up += tl.sum(grad_y, axis=0)
    return acc_w_down, acc_b_down, acc_w_up, acc_b_up


@triton.jit
def store_ffn_grads(
    w_down_ptr, b_down_ptr, w_up_ptr, b_up_ptr, acc_w_down, acc_b_down, acc_w_up, acc_b_up, cols, col_ok, hidden,
    rank, with_b_down, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Store one column tile's FFN gradient sums (:func:`add_ffn_weight_grads`) into contiguous fp32 planes: ``w_down
    (d, r)``, ``b_down (r,)`` (only when ``with_b_down``: one column tile writes it), ``w_up (r, d)``, ``b_up
    (d,)``."""
    r = tl.arange(0, BLOCK_R).to(tl.int64)  # [BLOCK_R]
    r_ok = r < rank
    tl.store(w_down_ptr + cols[:, None] * rank + r[None, :], acc_w_down, mask=col_ok[:, None] & r_ok[None, :])
    if with_b_down:
        tl.store(b_down_ptr + r, acc_b_down, mask=r_ok)
    tl.store(w_up_ptr + r[:, None] * hidden + cols[None, :], acc_w_up, mask=r_ok[:, None] & col_ok[None, :])
    tl.store(b_up_ptr + cols, acc_b_up, mask=col_ok)
