"""Fused DePT / prompt-tuning input embedding: Triton kernels and their launchers.

Notation: ``B`` batch, ``L`` input length, ``m`` prompt rows, ``d`` hidden size, ``r`` rank, ``T = m + L`` output
rows per sample, ``s`` the DePT scale.

Forward (one launch) writes the whole model input::

    out[b, p]     = prompt[p]                                   p < m
    out[b, m + t] = W[ids[b, t]] + s * (A[t] @ B)                t < L   (offset absent for plain prompt tuning)
    mask[b, p]    = 1 for p < m, else attention_mask[b, p - m] (1 when no mask is given)

Programs tile the ``(T, d)`` plane; each program computes its slice of the offset ``s * A[t] @ B`` once and reuses
it for every batch row it handles, so the ``(B, L, d)`` repeat of ``A @ B`` never exists.

Backward (two launches: the main kernel, then one that sums the per-tile partials): with ``dX`` the gradient of
``out``::

    G        = sum_b dX[b, m:, :]          (L, d)   batch reduced first, in registers, fp32
    dprompt  = sum_b dX[b, :m, :]          (m, d)
    dB       = s * A[:L]^T @ G             (r, d)   partial per row tile  -> (n_row_tiles, r, d), summed after
    dA[:L]   = s * G @ B^T                 (L, r)   partial per column tile -> (n_col_tiles, L, r), summed after

The derivation is the chain rule through ``out[b, m+t] = E[b, t] + s * sum_k A[t, k] B[k, :]``: the offset does not
depend on ``b``, so its gradient is the batch sum ``G``; then ``dA[t, k] = s * sum_j G[t, j] B[k, j]`` and
``dB[k, j] = s * sum_t A[t, k] G[t, j]``. The embedding table is frozen and gets no gradient.

Partials plus a sum keep the reduction deterministic (no atomics).

Row starts (``HAS_STARTS``; ``prompt_ops.ops.positions``): row ``b`` of the batch starts at position ``starts[b]``,
so its token column ``t`` gets ``s * A[starts[b] + t] @ B``, and nothing where ``starts[b] + t`` is outside
``[0, L_max)``. The forward is still one launch reading only the ``(B,)`` vector more: the offset slice now depends
on the row's start, so a program recomputes it for each of its batch rows whose start differs from the previous
row's (a batch without padding recomputes nothing). The offset is no longer batch-independent, but it is linear in
one A-row per token, so the chain rule gives, with ``j = starts[b] + t`` the A-row of column ``t``::

    dA[j, k] = s * sum_b sum_{t: starts[b] + t = j} sum_i dX[b, m+t, i] B[k, i] = s * (G' B^T)[j, k]
    dB[k, i] = s * sum_j A[j, k] G'[j, i]                                        = s * (A^T G')[k, i]
    G'[j]    = sum_b dX[b, m + j - starts[b]]     over the b with 0 <= j - starts[b] < L

The backward keeps its shape with ``G'`` in place of ``G``: the main launch tiles ``m + J`` rows (the prompt, then
one per A-row ``j < J``), gathers each batch row's shifted column for every ``j`` (a gather-sum, deterministic, no
scatter) and writes the same partials; ``J = L`` when no start is positive (then ``j <= t < L``), which the string
conventions guarantee, else ``J = L_max``. Rows of ``dA`` from ``J`` on are zero.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from prompt_ops.kernels.common import (
    REDUCE_BLOCK,
    gather_shifted_rows,
    head_token_tile,
    interpreting,
    launch_grid,
    load_tile,
    low_rank_tile,
    pooled_low_rank_tile,
    reduce_block,
    shifted_low_rank_tile,
    sum_slabs,
    token_embedding_tile,
)


@triton.jit
def _dept_embed_fwd_kernel(
    out_ptr,  # (B, T, d) contiguous, weight dtype
    mask_out_ptr,  # (B, T) contiguous, mask dtype
    ids_ptr,  # (B, L) int32 / int64, any strides
    weight_ptr,  # (V, d) any strides
    prompt_ptr,  # (m, d) any strides; LAMP: the left factor U (m * pool, r_p)
    q_ptr,  # LAMP: (r_p,) singular values, else unused
    v_ptr,  # LAMP: (r_p, d) right factor, else unused
    lora_a_ptr,  # (L_max, r)
    lora_b_ptr,  # (r, d)
    mask_ptr,  # (B, L) or unused
    starts_ptr,  # (B,) int64 row starts, or unused
    num_batch,
    num_prompt,
    seq_len,
    hidden,
    rank,
    prompt_rank,
    pool,
    vocab,
    max_length,  # L_max: rows of lora_a
    scale,
    batches_per_program,
    stride_ids_b,
    stride_ids_t,
    stride_w_v,
    stride_w_d,
    stride_p_m,
    stride_p_d,
    stride_q,
    stride_v_r,
    stride_v_d,
    stride_a_l,
    stride_a_r,
    stride_b_r,
    stride_b_d,
    stride_mask_b,
    stride_mask_t,
    HAS_OFFSET: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_STARTS: tl.constexpr,
    FACTORED_PROMPT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    pid_d = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2).to(tl.int64)
    total = num_prompt + seq_len
    # rows: output row p in [0, T); tok: the token position t of a token row
    rows, cols, col_ok, is_prompt, is_token, tok = head_token_tile(num_prompt, total, hidden, BLOCK_T, BLOCK_D)

    # Prompt rows: loaded (or, for LAMP, computed from the factors) once, stored for every batch row of this program.
    if FACTORED_PROMPT:
        prompt = pooled_low_rank_tile(
            prompt_ptr, q_ptr, v_ptr, rows, is_prompt, cols, col_ok, prompt_rank, pool, stride_p_m, stride_p_d,
            stride_q, stride_v_r, stride_v_d, True, BLOCK_T, BLOCK_D, BLOCK_R,
        )  # fmt: skip
    else:
        prompt = load_tile(prompt_ptr, rows, is_prompt, cols, col_ok, stride_p_m, stride_p_d)  # [BLOCK_T, BLOCK_D]

    # Offset slice s * A[rows] @ B[:, cols]; computed once, reused for every batch row.
    offset = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    if HAS_OFFSET and not HAS_STARTS:
        offset = scale * low_rank_tile(
            lora_a_ptr, lora_b_ptr, tok, is_token, cols, col_ok, rank, stride_a_l, stride_a_r, stride_b_r, stride_b_d,
            BLOCK_T, BLOCK_D, BLOCK_R,
        )  # fmt: skip

    out_ok = (rows < total)[:, None] & col_ok[None, :]  # [BLOCK_T, BLOCK_D]
    first = pid_b * batches_per_program
    count = tl.minimum(batches_per_program, num_batch - first)
    # Per-sample base pointers, advanced by one sample per iteration (64-bit pointer arithmetic).
    ids_base = ids_ptr + first * stride_ids_b
    mask_base = mask_ptr + first * stride_mask_b
    out_base = out_ptr + first * total * hidden
    mask_out_base = mask_out_ptr + first * total
    if HAS_OFFSET and HAS_STARTS:  # the shifted slice is computed for a row only when its start is new
        start_ptr = starts_ptr + first
        last_start = tl.load(start_ptr) + 1  # differs from the first row's start: its slice is computed
    for _ in range(0, count):
        if HAS_OFFSET and HAS_STARTS:
            start = tl.load(start_ptr)
            if start != last_start:
                offset = scale * shifted_low_rank_tile(
                    lora_a_ptr, lora_b_ptr, start, tok, is_token, max_length, cols, col_ok, rank, stride_a_l,
                    stride_a_r, stride_b_r, stride_b_d, BLOCK_T, BLOCK_D, BLOCK_R,
                )  # fmt: skip
                last_start = start
            start_ptr += 1
        emb = token_embedding_tile(
            weight_ptr, ids_base, tok, is_token, vocab, cols, col_ok, stride_ids_t, stride_w_v, stride_w_d
        )  # [BLOCK_T, BLOCK_D]
        emb = emb + offset
        value = tl.where(is_prompt[:, None], prompt, emb)  # [BLOCK_T, BLOCK_D]
        tl.store(out_base + rows[:, None] * hidden + cols[None, :], value.to(out_ptr.dtype.element_ty), mask=out_ok)
        if pid_d == 0:
            if HAS_MASK:
                given = tl.load(mask_base + tok * stride_mask_t, mask=is_token, other=1)
                keep = tl.where(is_prompt, 1.0, given.to(tl.float32))  # [BLOCK_T]
            else:
                keep = tl.full([BLOCK_T], 1.0, tl.float32)
            tl.store(mask_out_base + rows, keep.to(mask_out_ptr.dtype.element_ty), mask=rows < total)
        ids_base += stride_ids_b
        mask_base += stride_mask_b
        out_base += total * hidden
        mask_out_base += total


@triton.jit
def _dept_embed_bwd_kernel(
    grad_prompt_ptr,  # (m, d) fp32 contiguous
    grad_a_part_ptr,  # (n_col_tiles, num_rows, r) fp32 contiguous
    grad_b_part_ptr,  # (n_row_tiles, r, d) fp32 contiguous
    grad_out_ptr,  # (B, T, d) any strides
    lora_a_ptr,
    lora_b_ptr,
    starts_ptr,  # (B,) int64 row starts, or unused
    num_batch,
    num_prompt,
    seq_len,
    num_rows,  # A rows covered: L, or with starts J (L or L_max)
    hidden,
    rank,
    scale,
    stride_g_b,
    stride_g_t,
    stride_g_d,
    stride_a_l,
    stride_a_r,
    stride_b_r,
    stride_b_d,
    HAS_OFFSET: tl.constexpr,
    HAS_STARTS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    pid_t = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    total = num_prompt + num_rows  # program rows: the prompt's, then one per A row j (row m + j)
    # is_token: the rows of G (or G') in this tile; tok: their A row j
    rows, cols, col_ok, is_prompt, is_token, tok = head_token_tile(num_prompt, total, hidden, BLOCK_T, BLOCK_D)
    in_ok = (rows < total)[:, None] & col_ok[None, :]  # [BLOCK_T, BLOCK_D]

    # Batch reduction first, in fp32 registers.
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    if HAS_STARTS:  # G'[j] = sum_b dX[b, m + j - starts[b]], a gather of each row's shifted columns
        grad_base = grad_out_ptr + cols[None, :] * stride_g_d  # [1, BLOCK_D]
        start_ptr = starts_ptr
        for _ in range(0, num_batch):
            column = tok - tl.load(start_ptr).to(tl.int64)  # [BLOCK_T] token column at A row j
            acc += gather_shifted_rows(
                grad_base, is_prompt, rows, is_token, column, num_prompt, seq_len, col_ok, stride_g_t
            )  # [BLOCK_T, BLOCK_D]
            grad_base += stride_g_b
            start_ptr += 1
    else:
        grad_ptrs = grad_out_ptr + rows[:, None] * stride_g_t + cols[None, :] * stride_g_d  # [BLOCK_T, BLOCK_D]
        for _ in range(0, num_batch):
            acc += tl.load(grad_ptrs, mask=in_ok, other=0.0).to(tl.float32)
            grad_ptrs += stride_g_b

    tl.store(grad_prompt_ptr + rows[:, None] * hidden + cols[None, :], acc, mask=is_prompt[:, None] & col_ok[None, :])

    if HAS_OFFSET:
        g_tok = tl.where(is_token[:, None], acc, 0.0)  # [BLOCK_T, BLOCK_D]  rows of G in this tile
        for k0 in range(0, rank, BLOCK_R):
            r = k0 + tl.arange(0, BLOCK_R).to(tl.int64)  # [BLOCK_R]
            rank_ok = r < rank
            a = tl.load(
                lora_a_ptr + tok[:, None] * stride_a_l + r[None, :] * stride_a_r,
                mask=is_token[:, None] & rank_ok[None, :],
                other=0.0,
            ).to(tl.float32)  # [BLOCK_T, BLOCK_R]
            b_mat = tl.load(
                lora_b_ptr + r[:, None] * stride_b_r + cols[None, :] * stride_b_d,
                mask=rank_ok[:, None] & col_ok[None, :],
                other=0.0,
            ).to(tl.float32)  # [BLOCK_R, BLOCK_D]
            grad_b = tl.dot(tl.trans(a), g_tok, input_precision="ieee") * scale  # [BLOCK_R, BLOCK_D]
            tl.store(
                grad_b_part_ptr + (pid_t * rank + r[:, None]) * hidden + cols[None, :],
                grad_b,
                mask=rank_ok[:, None] & col_ok[None, :],
            )
            grad_a = tl.dot(g_tok, tl.trans(b_mat), input_precision="ieee") * scale  # [BLOCK_T, BLOCK_R]
            tl.store(
                grad_a_part_ptr + (pid_d * num_rows + tok[:, None]) * rank + r[None, :],
                grad_a,
                mask=is_token[:, None] & rank_ok[None, :],
            )


@triton.jit
def _dept_embed_bwd_reduce_kernel(
    grad_a_ptr,  # (L_max, r) fp32: rows >= L written as zeros
    grad_a_part_ptr,  # (n_col_tiles, L, r)
    grad_b_ptr,  # (r, d) fp32
    grad_b_part_ptr,  # (n_row_tiles, r, d)
    parts_a,
    numel_a_valid,  # L * r
    numel_a,  # L_max * r
    parts_b,
    numel_b,  # r * d
    blocks_a,
    BLOCK: tl.constexpr,
):
    """Second backward launch: the deterministic sums of both partial buffers (programs < ``blocks_a`` do
    ``d_lora_a``, the rest ``d_lora_b``)."""
    pid = tl.program_id(0).to(tl.int64)
    if pid < blocks_a:
        sum_slabs(grad_a_ptr, grad_a_part_ptr, parts_a, numel_a_valid, numel_a, pid, BLOCK)
    else:
        sum_slabs(grad_b_ptr, grad_b_part_ptr, parts_b, numel_b, numel_b, pid - blocks_a, BLOCK)


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------------------------

RANK_CHUNK = 16
"""``BLOCK_R``: rank columns per ``tl.dot`` step (the GPU needs K, N >= 16); any rank is covered by a loop."""

GPU_TARGET_PROGRAMS = 1024
"""Forward programs aimed for on a GPU (about 8 per SM on an H100) before batch rows are grouped per program."""


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """Tile sizes of one launch. ``batches_per_program=0`` means "choose from the grid" (forward only)."""

    block_t: int
    block_d: int
    num_warps: int = 4
    batches_per_program: int = 0


GPU_FWD_CONFIG = EmbedConfig(block_t=16, block_d=64, num_warps=4)
"""The shipped GPU forward tile, chosen from sm_90 compile stats (fp32 ``ieee`` dots, rank chunk 16): 117 registers
per thread, no spills; 32 x 128 at 4 warps spills. Small tiles give many programs for the memory-bound gather."""

GPU_SHIFTED_FWD_CONFIG = EmbedConfig(block_t=16, block_d=64, num_warps=8)
"""The shipped GPU forward tile with row starts: the offset slice is recomputed inside the batch loop, which at 4
warps needs 255 registers and spills; 8 warps hold the same tile in 154 registers per thread, no spills."""

GPU_BWD_CONFIG = EmbedConfig(block_t=64, block_d=64, num_warps=8)
"""The shipped GPU backward tile: 128 registers, no spills. Taller tiles mean fewer row tiles and so fewer
``(n_row_tiles, r, d)`` partials of ``d_lora_b`` to write and sum (5 tiles for m + L = 316 instead of 20 at 16 rows)."""


def default_config(
    num_rows: int, hidden: int, interpret: bool, backward: bool = False, shifted: bool = False
) -> EmbedConfig:
    """Heuristic tile choice (no autotuning, see DESIGN.md §3).

    On a GPU the shipped ``GPU_FWD_CONFIG`` (``GPU_SHIFTED_FWD_CONFIG`` with row starts) / ``GPU_BWD_CONFIG``.
    Under the interpreter the cost is per program and per op, not per element, so the tiles cover as much of the
    ``(T, d)`` plane as is sensible: up to 128 rows x 1024 columns.
    """
    if not interpret:
        return GPU_BWD_CONFIG if backward else (GPU_SHIFTED_FWD_CONFIG if shifted else GPU_FWD_CONFIG)
    return EmbedConfig(
        block_t=min(128, max(16, triton.next_power_of_2(max(num_rows, 1)))),
        block_d=min(1024, max(16, triton.next_power_of_2(hidden))),
    )


def _batches_per_program(config: EmbedConfig, num_batch: int, tiles: int, interpret: bool) -> int:
    if config.batches_per_program > 0:
        return config.batches_per_program
    if interpret:
        return max(num_batch, 1)
    groups = max(1, min(num_batch, triton.cdiv(GPU_TARGET_PROGRAMS, tiles)))
    return triton.cdiv(num_batch, groups)


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PromptFactors:
    """LAMP's prompt ``avgpool_pool((u * q) @ v)`` given by its factors: ``u (m * pool, r)``, ``q (r,)``,
    ``v (r, d)``. Pooling is linear, so the kernel pools ``u`` first and never builds the ``(m * pool, d)`` prompt."""

    u: torch.Tensor
    q: torch.Tensor
    v: torch.Tensor
    pool: int

    @property
    def num_rows(self) -> int:
        return self.u.shape[0] // self.pool


def dept_embed_fwd(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    prompt: torch.Tensor | PromptFactors,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    scale: float,
    config: EmbedConfig | None = None,
    starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused forward. Arguments are assumed validated (see ``prompt_ops.dept_embed``).

    ``prompt`` is a dense ``(m, d)`` tensor or LAMP's :class:`PromptFactors`. ``starts``: ``(B,)`` int64 row starts
    (column ``t`` of row ``b`` gets ``A[starts[b] + t]``, none outside ``[0, L_max)``), or None for all zero (the
    unshifted kernel). Returns ``inputs_embeds (B, m+L, d)`` in ``weight.dtype`` and the extended mask ``(B, m+L)``
    in the dtype of ``attention_mask`` (int64 when None).
    """
    factored = isinstance(prompt, PromptFactors)
    num_batch, seq_len = input_ids.shape
    num_prompt, hidden = (prompt.num_rows, prompt.v.shape[1]) if factored else prompt.shape
    total = num_prompt + seq_len
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    out = torch.empty((num_batch, total, hidden), dtype=weight.dtype, device=weight.device)
    mask_out = torch.empty((num_batch, total), dtype=mask_dtype, device=weight.device)
    if out.numel() == 0 and mask_out.numel() == 0:
        return out, mask_out

    has_offset = lora_a is not None
    shifted = has_offset and starts is not None
    rank = lora_a.shape[1] if has_offset else 0
    interpret = interpreting()
    config = config or default_config(total, hidden, interpret, shifted=shifted)
    tiles_t, tiles_d = triton.cdiv(total, config.block_t), triton.cdiv(hidden, config.block_d)
    per_program = _batches_per_program(config, num_batch, tiles_t * tiles_d, interpret)
    grid = launch_grid(tiles_t, tiles_d, triton.cdiv(num_batch, per_program), sizes=f"weight's width d = {hidden}")
    # Unused pointers get a valid tensor; the constexpr flags keep them untouched.
    dense = prompt.u if factored else prompt
    q, v = (prompt.q, prompt.v) if factored else (dense, dense)
    a, b = (lora_a, lora_b) if has_offset else (dense, dense)
    m = attention_mask if attention_mask is not None else input_ids
    _dept_embed_fwd_kernel[grid](
        out, mask_out, input_ids, weight, dense, q, v, a, b, m, starts if shifted else input_ids,
        num_batch, num_prompt, seq_len, hidden, rank, prompt.u.shape[1] if factored else 0,
        prompt.pool if factored else 1, weight.shape[0], a.shape[0], float(scale), per_program,
        input_ids.stride(0), input_ids.stride(1), weight.stride(0), weight.stride(1),
        dense.stride(0), dense.stride(1), q.stride(0), v.stride(0), v.stride(1),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), m.stride(0), m.stride(1),
        HAS_OFFSET=has_offset, HAS_MASK=attention_mask is not None, HAS_STARTS=shifted, FACTORED_PROMPT=factored,
        BLOCK_T=config.block_t, BLOCK_D=config.block_d, BLOCK_R=RANK_CHUNK, num_warps=config.num_warps,
    )  # fmt: skip
    return out, mask_out


def dept_embed_bwd(
    grad_out: torch.Tensor,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    num_prompt: int,
    scale: float,
    config: EmbedConfig | None = None,
    starts: torch.Tensor | None = None,
    offset_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the fused backward. Returns fp32 ``(d_prompt (m, d), d_lora_a (L_max, r), d_lora_b (r, d))``.

    ``d_lora_a`` and ``d_lora_b`` are None without an offset. ``starts`` as in :func:`dept_embed_fwd`; with them
    the batch sum is the shifted gather-sum over the first ``offset_rows`` rows of ``A`` (default all ``L_max``;
    ``L`` suffices when no start is positive). Rows of ``d_lora_a`` no token reaches are zero.
    """
    num_batch, total, hidden = grad_out.shape
    seq_len = total - num_prompt
    has_offset = lora_a is not None
    shifted = has_offset and starts is not None
    rank = lora_a.shape[1] if has_offset else 0
    num_rows = (lora_a.shape[0] if offset_rows is None else offset_rows) if shifted else seq_len
    device = grad_out.device
    interpret = interpreting()
    rows = num_prompt + num_rows if has_offset else num_prompt
    config = config or default_config(rows, hidden, interpret, backward=True)
    tiles_t, tiles_d = triton.cdiv(rows, config.block_t), triton.cdiv(hidden, config.block_d)

    if grad_out.numel() == 0 or rows == 0:  # nothing flows back: zero gradients, no launch
        grad_prompt = torch.zeros((num_prompt, hidden), dtype=torch.float32, device=device)
        if not has_offset:
            return grad_prompt, None, None
        return (
            grad_prompt,
            lora_a.new_zeros(lora_a.shape, dtype=torch.float32),
            lora_b.new_zeros(lora_b.shape, dtype=torch.float32),
        )

    grad_prompt = torch.empty((num_prompt, hidden), dtype=torch.float32, device=device)
    grad_a_part = torch.empty((tiles_d, num_rows, rank), dtype=torch.float32, device=device)
    grad_b_part = torch.empty((tiles_t, rank, hidden), dtype=torch.float32, device=device)
    a = lora_a if has_offset else grad_prompt
    b = lora_b if has_offset else grad_prompt
    _dept_embed_bwd_kernel[launch_grid(tiles_t, tiles_d, sizes=f"the width d = {hidden}")](
        grad_prompt,
        grad_a_part,
        grad_b_part,
        grad_out,
        a,
        b,
        starts if shifted else grad_prompt,
        num_batch,
        num_prompt,
        seq_len,
        num_rows,
        hidden,
        rank,
        float(scale),
        grad_out.stride(0),
        grad_out.stride(1),
        grad_out.stride(2),
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        HAS_OFFSET=has_offset,
        HAS_STARTS=shifted,
        BLOCK_T=config.block_t,
        BLOCK_D=config.block_d,
        BLOCK_R=RANK_CHUNK,
        num_warps=config.num_warps,
    )
    if not has_offset:
        return grad_prompt, None, None

    grad_a = torch.empty(lora_a.shape, dtype=torch.float32, device=device)
    grad_b = torch.empty(lora_b.shape, dtype=torch.float32, device=device)
    block = reduce_block()
    blocks_a = triton.cdiv(grad_a.numel(), block)
    _dept_embed_bwd_reduce_kernel[(blocks_a + triton.cdiv(grad_b.numel(), block),)](
        grad_a,
        grad_a_part,
        grad_b,
        grad_b_part,
        tiles_d,
        num_rows * rank,
        grad_a.numel(),
        tiles_t,
        grad_b.numel(),
        blocks_a,
        BLOCK=block,
        num_warps=4,
    )
    return grad_prompt, grad_a, grad_b


def sm90_specs():
    """The shipped GPU configs of both kernels, for ``prompt_ops.kernels.compile_check``."""
    from prompt_ops.kernels.compile_check import KernelSpec

    specs = []
    variants = {"dept": (True, False), "prompt": (False, False), "dept-shifted": (True, True)}
    for dtype in ("fp32", "fp16", "bf16"):
        for name, (has_offset, has_starts) in variants.items():
            forward_config = GPU_SHIFTED_FWD_CONFIG if has_starts else GPU_FWD_CONFIG
            forward_tile = {"BLOCK_T": forward_config.block_t, "BLOCK_D": forward_config.block_d}
            backward_tile = {"BLOCK_T": GPU_BWD_CONFIG.block_t, "BLOCK_D": GPU_BWD_CONFIG.block_d}
            forward_pointers = {
                "out_ptr": f"*{dtype}",
                "mask_out_ptr": "*i64",
                "ids_ptr": "*i64",
                "weight_ptr": f"*{dtype}",
                "prompt_ptr": "*fp32",
                "q_ptr": "*fp32",
                "v_ptr": "*fp32",
                "lora_a_ptr": "*fp32",
                "lora_b_ptr": "*fp32",
                "mask_ptr": "*i64",
                "starts_ptr": "*i64",
            }
            specs.append(
                KernelSpec(
                    f"dept_embed_fwd[{name},{dtype}]",
                    _dept_embed_fwd_kernel,
                    forward_pointers,
                    {
                        "HAS_OFFSET": has_offset,
                        "HAS_MASK": True,
                        "HAS_STARTS": has_starts,
                        "FACTORED_PROMPT": False,
                        "BLOCK_R": RANK_CHUNK,
                        **forward_tile,
                    },  # fmt: skip
                    forward_config.num_warps,
                )
            )
            backward_pointers = {
                "grad_prompt_ptr": "*fp32",
                "grad_a_part_ptr": "*fp32",
                "grad_b_part_ptr": "*fp32",
                "grad_out_ptr": f"*{dtype}",
                "lora_a_ptr": "*fp32",
                "lora_b_ptr": "*fp32",
                "starts_ptr": "*i64",
            }
            specs.append(
                KernelSpec(
                    f"dept_embed_bwd[{name},{dtype}]",
                    _dept_embed_bwd_kernel,
                    backward_pointers,
                    {"HAS_OFFSET": has_offset, "HAS_STARTS": has_starts, "BLOCK_R": RANK_CHUNK, **backward_tile},
                    GPU_BWD_CONFIG.num_warps,
                )
            )
    for dtype in ("fp32", "bf16"):  # LAMP: the prompt computed from its factors, no offset
        lamp_pointers = {**forward_pointers, "out_ptr": f"*{dtype}", "weight_ptr": f"*{dtype}"}
        specs.append(
            KernelSpec(
                f"dept_embed_fwd[lamp,{dtype}]",
                _dept_embed_fwd_kernel,
                lamp_pointers,
                {
                    "HAS_OFFSET": False,
                    "HAS_MASK": True,
                    "HAS_STARTS": False,
                    "FACTORED_PROMPT": True,
                    "BLOCK_R": RANK_CHUNK,
                    "BLOCK_T": GPU_FWD_CONFIG.block_t,
                    "BLOCK_D": GPU_FWD_CONFIG.block_d,
                },  # fmt: skip
                GPU_FWD_CONFIG.num_warps,
            )
        )
    reduce_pointers = {name: "*fp32" for name in ("grad_a_ptr", "grad_a_part_ptr", "grad_b_ptr", "grad_b_part_ptr")}
    specs.append(
        KernelSpec("dept_embed_bwd_reduce", _dept_embed_bwd_reduce_kernel, reduce_pointers, {"BLOCK": REDUCE_BLOCK}, 4)
    )
    return specs
