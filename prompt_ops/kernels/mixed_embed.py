"""Mixed-adapter DePT / prompt-tuning input embedding (issue 14): Triton kernels and their launchers.

Notation: a bank of ``N`` adapters, ``B`` batch rows, ``L`` input length, ``S = m_max`` prompt slots, ``T = S + L``
output columns, ``d`` hidden size, ``J = L_max`` rows and ``R = r_max`` ranks of the zero-padded ``A``. Row ``b``
runs adapter ``a = adapter_index[b]`` (``-1``: the base model) with prompt length ``m_a``, ``A`` rows ``L_a``
(``max_lengths[a]``; ``J`` when not given), scale ``s_a`` and row start ``start_b`` (0 without starts).

Forward (one launch) writes the whole model input, with ``f_a`` the slot column of the prompt's row 0: ``S - m_a``
for the ``"front"`` layout (masked slots, then the prompt), ``0`` for ``"after_prompt"`` (the prompt, then the
masked slots; ``slots_front`` picks one, an int argument, so one compiled kernel serves both)::

    out[b, p]      = prompts[a, p - f_a]                       f_a <= p < f_a + m_a        mask 1
    out[b, p]      = 0                                         other p < S, or a = -1      mask 0
    out[b, S + t]  = W[ids[b, t]] + s_a * A[a, j] @ B[a]       j = start_b + t             mask attention_mask[b, t]

with no offset where ``a = -1`` or ``j`` is outside ``[0, L_a)``. Programs tile the ``(T, d)`` plane and walk a
group of batch rows; a program reloads its prompt tile only when the row's adapter differs from the previous row's,
and recomputes its offset slice only when the pair (adapter, start) differs, so a batch of one adapter without
padding computes each slice once per program, as ``dept_embed`` does. Every row of the batch is in this one launch.

Backward, with ``dX`` the gradient of ``out``. The slot column ``f_a + q`` of a row of adapter ``a`` is
``prompts[a, q]`` itself, and ``out[b, S + t, i]`` depends on ``A`` and ``B`` through ``s_a sum_k A[a, j, k]
B[a, k, i]`` with ``j = start_b + t`` inside ``[0, L_a)``, so the chain rule gives::

    d_prompts[a, q] = sum_{b: a_b = a} dX[b, f_a + q]                                        q < m_a
    G'[a, j]        = sum_{b: a_b = a} sum_{t: start_b + t = j, t < L} dX[b, S + t]           j < L_a
    d_A[a, j, k]    = s_a sum_i G'[a, j, i] B[a, k, i]       = s_a (G'[a] B[a]^T)[j, k]
    d_B[a, k, i]    = s_a sum_j A[a, j, k] G'[a, j, i]       = s_a (A[a]^T G'[a])[k, i]

One launch computes ``d_prompts`` and ``G'``: grid (tiles of the ``S + J`` rows: the slots, then one per ``A`` row
``j``; tiles of ``d``; adapters). Program ``(., ., a)`` walks the batch rows in order and adds the shifted columns
of those whose adapter is ``a`` (a gather-sum in a fixed order: deterministic, no atomics, ``dX`` read once in all).
Then ``d_A`` and ``d_B`` are two small batched matmuls over ``G' (N, J, d)``.

Padding gets an exact zero gradient: prompt rows ``q >= m_a`` and ``A`` rows ``j >= L_a`` are written as zeros
explicitly (tokens do reach rows ``j >= L_a`` of ``G'`` when the input is longer than ``L_a``, so this masking is
needed); ranks ``k >= r_a`` get ``s_a G' B[a, k]^T`` and ``s_a A[a, :, k]^T G'``, products with the zero padded row
of ``B`` and column of ``A``, which are exactly zero.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from prompt_ops.kernels.common import (
    bank_prompt_rows,
    gather_shifted_rows,
    head_token_tile,
    interpreting,
    launch_grid,
    load_tile,
    shifted_low_rank_tile,
    store_bank_mask,
    token_embedding_tile,
)
from prompt_ops.kernels.dept_embed import (
    GPU_BWD_CONFIG,
    RANK_CHUNK,
    EmbedConfig,
    _batches_per_program,
    default_config,
)


@triton.jit
def _mixed_embed_fwd_kernel(
    out_ptr,  # (B, T, d) contiguous, weight dtype
    mask_out_ptr,  # (B, T) contiguous, mask dtype
    ids_ptr,  # (B, L) int32 / int64, any strides
    weight_ptr,  # (V, d) any strides
    prompts_ptr,  # (N, S, d) any strides
    prompt_lengths_ptr,  # (N,) contiguous: m_a
    lora_a_ptr,  # (N, J, R) any strides, or unused
    lora_b_ptr,  # (N, R, d) any strides, or unused
    scales_ptr,  # (N,) contiguous fp32, or unused
    max_lengths_ptr,  # (N,) contiguous: L_a, or unused
    adapter_ptr,  # (B,) contiguous int32 / int64: a_b in [-1, N)
    mask_ptr,  # (B, L) any strides, or unused
    starts_ptr,  # (B,) contiguous row starts, or unused
    num_batch,
    num_adapters,
    num_slots,  # S = m_max
    seq_len,
    hidden,
    rank,  # R
    vocab,
    max_length,  # J: rows of lora_a
    slots_front,  # 1: slots in front of the prompt (f_a = S - m_a); 0: after it (f_a = 0)
    batches_per_program,
    stride_ids_b,
    stride_ids_t,
    stride_w_v,
    stride_w_d,
    stride_p_n,
    stride_p_m,
    stride_p_d,
    stride_a_n,
    stride_a_l,
    stride_a_r,
    stride_b_n,
    stride_b_r,
    stride_b_d,
    stride_mask_b,
    stride_mask_t,
    HAS_OFFSET: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_STARTS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    pid_t = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2).to(tl.int64)
    total = num_slots + seq_len
    # rows: output column p in [0, T); tok: the token column t of a token column
    rows, cols, col_ok, is_slot, is_token, tok = head_token_tile(num_slots, total, hidden, BLOCK_T, BLOCK_D)
    has_slots = pid_t * BLOCK_T < num_slots  # the tile holds prompt slots
    has_tokens = pid_t * BLOCK_T + BLOCK_T > num_slots  # the tile holds token columns

    out_ok = (rows < total)[:, None] & col_ok[None, :]  # [BLOCK_T, BLOCK_D]
    first = pid_b * batches_per_program
    count = tl.minimum(batches_per_program, num_batch - first)
    # Per-sample pointers, advanced by one sample per iteration (64-bit pointer arithmetic).
    adapter_row = adapter_ptr + first
    start_row = starts_ptr + first
    ids_base = ids_ptr + first * stride_ids_b
    mask_base = mask_ptr + first * stride_mask_b
    out_base = out_ptr + first * total * hidden
    mask_out_base = mask_out_ptr + first * total

    # The tiles of the previous row's adapter (and start); the first row differs from this "previous" key.
    last_adapter = tl.load(adapter_row).to(tl.int64) + 1
    last_start = last_adapter  # overwritten before any use when HAS_STARTS
    prompt = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    offset = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for _ in range(0, count):
        adapter = tl.load(adapter_row).to(tl.int64)
        has_adapter, index, slot_ok, prompt_row = bank_prompt_rows(
            adapter, num_adapters, prompt_lengths_ptr, rows, is_slot, num_slots, slots_front
        )
        if (adapter != last_adapter) & has_slots:  # prompt: [BLOCK_T, BLOCK_D]
            prompt = load_tile(
                prompts_ptr + index * stride_p_n, prompt_row, slot_ok, cols, col_ok, stride_p_m, stride_p_d
            )
        if HAS_OFFSET:
            changed = adapter != last_adapter
            start = 0
            if HAS_STARTS:
                start = tl.load(start_row).to(tl.int64)
                changed = changed | (start != last_start)
                last_start = start
            if changed & has_tokens:
                if HAS_LENGTHS:
                    length = tl.load(max_lengths_ptr + index).to(tl.int64)  # L_a
                else:
                    length = max_length
                # A base-model row has no A rows. (The interpreter mis-broadcasts a scalar bool into a block mask, so
                # has_adapter enters through the bound.)
                length = tl.where(has_adapter, length, 0)
                scale = tl.load(scales_ptr + index).to(tl.float32)  # s_a
                # offset: [BLOCK_T, BLOCK_D], from A row j = start + t of each token column t
                offset = scale * shifted_low_rank_tile(
                    lora_a_ptr + index * stride_a_n, lora_b_ptr + index * stride_b_n, start, tok, is_token, length,
                    cols, col_ok, rank, stride_a_l, stride_a_r, stride_b_r, stride_b_d, BLOCK_T, BLOCK_D, BLOCK_R,
                )  # fmt: skip
        last_adapter = adapter

        emb = token_embedding_tile(
            weight_ptr, ids_base, tok, is_token, vocab, cols, col_ok, stride_ids_t, stride_w_v, stride_w_d
        )  # [BLOCK_T, BLOCK_D]
        emb = emb + offset
        value = tl.where(is_slot[:, None], prompt, emb)  # [BLOCK_T, BLOCK_D]
        tl.store(out_base + rows[:, None] * hidden + cols[None, :], value.to(out_ptr.dtype.element_ty), mask=out_ok)
        if pid_d == 0:
            store_bank_mask(
                mask_out_base, mask_base, rows, total, is_slot, slot_ok, is_token, tok, stride_mask_t, HAS_MASK,
                BLOCK_T,
            )  # fmt: skip
        adapter_row += 1
        start_row += 1
        ids_base += stride_ids_b
        mask_base += stride_mask_b
        out_base += total * hidden
        mask_out_base += total


@triton.jit
def _mixed_embed_bwd_kernel(
    grad_prompts_ptr,  # (N, S, d) fp32 contiguous
    grad_rows_ptr,  # (N, J, d) fp32 contiguous: G', or unused (J = 0)
    grad_out_ptr,  # (B, T, d) any strides
    prompt_lengths_ptr,  # (N,) contiguous: m_a
    max_lengths_ptr,  # (N,) contiguous: L_a, or unused
    adapter_ptr,  # (B,) contiguous: a_b
    starts_ptr,  # (B,) contiguous row starts, or unused
    num_batch,
    num_slots,  # S
    seq_len,
    num_rows,  # J = L_max, or 0 without offsets
    hidden,
    slots_front,  # 1: slots in front of the prompt (f_a = S - m_a); 0: after it (f_a = 0)
    stride_g_b,
    stride_g_t,
    stride_g_d,
    HAS_LENGTHS: tl.constexpr,
    HAS_STARTS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    adapter = tl.program_id(2).to(tl.int64)
    total = num_slots + num_rows  # program rows: the slots (prompt row q), then one per A row j (row S + j)
    # is_slot: row q of d_prompts[a]; is_row: row j of G'[a]
    rows, cols, col_ok, is_slot, is_row, j = head_token_tile(num_slots, total, hidden, BLOCK_T, BLOCK_D)
    num_prompt = tl.load(prompt_lengths_ptr + adapter).to(tl.int64)  # m_a
    if HAS_LENGTHS:
        length = tl.load(max_lengths_ptr + adapter).to(tl.int64)  # L_a
    else:
        length = num_rows
    # Padding rows (q >= m_a, j >= L_a) gather nothing and are stored as zeros.
    prompt_ok = is_slot & (rows < num_prompt)  # [BLOCK_T]
    prompt_source = (num_slots - num_prompt) * slots_front + rows  # [BLOCK_T] slot column f_a + q of prompt row q
    row_ok = is_row & (j < length)  # [BLOCK_T]

    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    grad_base = grad_out_ptr + cols[None, :] * stride_g_d  # [1, BLOCK_D]
    adapter_row = adapter_ptr
    start_row = starts_ptr
    for _ in range(0, num_batch):  # batch rows in order: a fixed summation order
        if tl.load(adapter_row).to(tl.int64) == adapter:
            if HAS_STARTS:
                column = j - tl.load(start_row).to(tl.int64)  # [BLOCK_T] token column at A row j
            else:
                column = j
            acc += gather_shifted_rows(
                grad_base, prompt_ok, prompt_source, row_ok, column, num_slots, seq_len, col_ok, stride_g_t
            )  # [BLOCK_T, BLOCK_D]
        grad_base += stride_g_b
        adapter_row += 1
        start_row += 1

    tl.store(
        grad_prompts_ptr + (adapter * num_slots + rows[:, None]) * hidden + cols[None, :],
        acc,
        mask=is_slot[:, None] & col_ok[None, :],
    )
    tl.store(
        grad_rows_ptr + (adapter * num_rows + j[:, None]) * hidden + cols[None, :],
        acc,
        mask=is_row[:, None] & col_ok[None, :],
    )


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------------------------

GPU_FWD_CONFIG = EmbedConfig(block_t=16, block_d=64, num_warps=8)
"""The shipped GPU forward tile: ``dept_embed``'s tile with row starts (the prompt tile and the offset slice are
both kept across the rows of a program and recomputed inside the batch loop), at 8 warps like that variant."""


def _forward_config(total: int, hidden: int, interpret: bool) -> EmbedConfig:
    """Heuristic tile choice: :data:`GPU_FWD_CONFIG` on a GPU, ``dept_embed``'s interpreter tiles otherwise."""
    return GPU_FWD_CONFIG if not interpret else default_config(total, hidden, interpret)


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------


def _slots_front(slots: str) -> int:
    """The kernels' ``slots_front`` argument: 1 for the ``"front"`` layout, 0 for ``"after_prompt"``."""
    if slots not in ("front", "after_prompt"):
        raise ValueError(f"slots must be 'front' or 'after_prompt', got {slots!r}")
    return int(slots == "front")


def _vector(values: torch.Tensor | None) -> torch.Tensor | None:
    """A ``(N,)`` / ``(B,)`` argument as the contiguous vector the kernels index with unit stride."""
    return None if values is None else values.contiguous()


def mixed_embed_fwd_triton(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    prompts: torch.Tensor,
    prompt_lengths: torch.Tensor,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    scales: torch.Tensor,
    adapter_index: torch.Tensor,
    attention_mask: torch.Tensor | None,
    starts: torch.Tensor | None,
    max_lengths: torch.Tensor | None = None,
    config: EmbedConfig | None = None,
    slots: str = "front",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused mixed-adapter forward (one launch). Arguments are assumed validated (see
    ``prompt_ops.ops.mixed_embed``).

    ``prompts (N, S, d)``, ``prompt_lengths (N,)``, ``lora_a (N, J, R)`` and ``lora_b (N, R, d)`` (both None: no
    offsets in the bank), ``scales (N,)`` fp32, ``adapter_index (B,)`` in ``[-1, N)``; ``starts (B,)`` int64 row
    starts or None for all zero; ``max_lengths (N,)`` the ``A`` rows ``L_a`` of each adapter (None: every adapter
    spans all ``J`` rows; padded rows are zero, so this only saves reads); ``slots`` the layout, ``"front"`` or
    ``"after_prompt"`` (the module docstring). Returns ``inputs_embeds (B, S + L, d)``
    in ``weight.dtype`` and the mask ``(B, S + L)`` in the dtype of ``attention_mask`` (int64 when None).
    """
    num_batch, seq_len = input_ids.shape
    num_adapters, num_slots, hidden = prompts.shape
    total = num_slots + seq_len
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    out = torch.empty((num_batch, total, hidden), dtype=weight.dtype, device=weight.device)
    mask_out = torch.empty((num_batch, total), dtype=mask_dtype, device=weight.device)
    if out.numel() == 0 and mask_out.numel() == 0:
        return out, mask_out

    has_offset = lora_a is not None
    shifted = has_offset and starts is not None
    interpret = interpreting()
    config = config or _forward_config(total, hidden, interpret)
    tiles_t, tiles_d = triton.cdiv(total, config.block_t), triton.cdiv(hidden, config.block_d)
    per_program = _batches_per_program(config, num_batch, tiles_t * tiles_d, interpret)
    grid = launch_grid(tiles_t, tiles_d, triton.cdiv(num_batch, per_program), sizes=f"weight's width d = {hidden}")
    adapter_index, prompt_lengths, scales = _vector(adapter_index), _vector(prompt_lengths), _vector(scales)
    # Unused pointers get a valid tensor; the constexpr flags keep them untouched.
    a, b = (lora_a, lora_b) if has_offset else (prompts, prompts)
    has_lengths = has_offset and max_lengths is not None
    lengths = _vector(max_lengths) if has_lengths else prompt_lengths
    m = attention_mask if attention_mask is not None else input_ids
    _mixed_embed_fwd_kernel[grid](
        out, mask_out, input_ids, weight, prompts, prompt_lengths, a, b, scales, lengths, adapter_index, m,
        _vector(starts) if shifted else adapter_index,
        num_batch, num_adapters, num_slots, seq_len, hidden, a.shape[2], weight.shape[0], a.shape[1],
        _slots_front(slots), per_program,
        input_ids.stride(0), input_ids.stride(1), weight.stride(0), weight.stride(1),
        prompts.stride(0), prompts.stride(1), prompts.stride(2), a.stride(0), a.stride(1), a.stride(2),
        b.stride(0), b.stride(1), b.stride(2), m.stride(0), m.stride(1),
        HAS_OFFSET=has_offset, HAS_LENGTHS=has_lengths, HAS_MASK=attention_mask is not None,
        HAS_STARTS=shifted, BLOCK_T=config.block_t, BLOCK_D=config.block_d, BLOCK_R=RANK_CHUNK,
        num_warps=config.num_warps,
    )  # fmt: skip
    return out, mask_out


def mixed_embed_bwd_triton(
    grad_out: torch.Tensor,
    prompt_lengths: torch.Tensor,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    scales: torch.Tensor,
    adapter_index: torch.Tensor,
    starts: torch.Tensor | None,
    num_slots: int,
    max_lengths: torch.Tensor | None = None,
    config: EmbedConfig | None = None,
    slots: str = "front",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the deterministic mixed-adapter backward. Returns fp32 ``d_prompts (N, S, d)``, ``d_lora_a (N, J,
    R)`` and ``d_lora_b (N, R, d)`` (both None without offsets), zero on the bank's padding.

    ``num_slots`` is ``S = m_max``; the other arguments (``slots`` included) as in :func:`mixed_embed_fwd_triton`.
    Without ``max_lengths`` the rows ``[L_a, J)`` of ``d_lora_a`` are not masked (the gradient of the padded ``A``
    as the plain formula gives it); pass them for a bank whose adapters differ in ``L_a``.
    One Triton launch (``d_prompts`` and ``G'``), then ``d_A = s G' B^T`` and ``d_B = s A^T G'`` as two ``bmm``.
    """
    num_batch, total, hidden = grad_out.shape
    seq_len = total - num_slots
    num_adapters = prompt_lengths.shape[0]
    has_offset = lora_a is not None
    num_rows = lora_a.shape[1] if has_offset else 0
    device = grad_out.device
    if grad_out.numel() == 0 or num_adapters == 0:  # nothing flows back: zero gradients, no launch
        grad_prompts = torch.zeros((num_adapters, num_slots, hidden), dtype=torch.float32, device=device)
        if not has_offset:
            return grad_prompts, None, None
        return (
            grad_prompts,
            torch.zeros(lora_a.shape, dtype=torch.float32, device=device),
            torch.zeros(lora_b.shape, dtype=torch.float32, device=device),
        )

    rows = num_slots + num_rows
    config = config or default_config(rows, hidden, interpreting(), backward=True)
    tiles_t, tiles_d = triton.cdiv(rows, config.block_t), triton.cdiv(hidden, config.block_d)
    grad_prompts = torch.empty((num_adapters, num_slots, hidden), dtype=torch.float32, device=device)
    grad_rows = torch.empty((num_adapters, num_rows, hidden), dtype=torch.float32, device=device)
    adapter_index, prompt_lengths = _vector(adapter_index), _vector(prompt_lengths)
    shifted = has_offset and starts is not None
    has_lengths = has_offset and max_lengths is not None
    lengths = _vector(max_lengths) if has_lengths else prompt_lengths
    grid = launch_grid(tiles_t, tiles_d, num_adapters, sizes=f"d = {hidden} with N = {num_adapters} adapters")
    _mixed_embed_bwd_kernel[grid](
        grad_prompts, grad_rows if has_offset else grad_prompts, grad_out, prompt_lengths, lengths, adapter_index,
        _vector(starts) if shifted else adapter_index,
        num_batch, num_slots, seq_len, num_rows, hidden, _slots_front(slots), grad_out.stride(0), grad_out.stride(1),
        grad_out.stride(2),
        HAS_LENGTHS=has_lengths, HAS_STARTS=shifted, BLOCK_T=config.block_t,
        BLOCK_D=config.block_d, num_warps=config.num_warps,
    )  # fmt: skip
    if not has_offset:
        return grad_prompts, None, None
    scale = scales.to(device=device, dtype=torch.float32).view(-1, 1, 1)
    grad_a = torch.bmm(grad_rows, lora_b.float().transpose(1, 2)).mul_(scale)  # (N, J, R)
    grad_b = torch.bmm(lora_a.float().transpose(1, 2), grad_rows).mul_(scale)  # (N, R, d)
    return grad_prompts, grad_a, grad_b


def sm90_specs():
    """The shipped GPU configs of both kernels, for ``prompt_ops.kernels.compile_check``."""
    from prompt_ops.kernels.compile_check import KernelSpec

    specs = []
    for dtype in ("fp32", "fp16", "bf16"):
        for name, has_offset in (("dept", True), ("prompt", False)):
            forward_pointers = {
                "out_ptr": f"*{dtype}",
                "mask_out_ptr": "*i64",
                "ids_ptr": "*i64",
                "weight_ptr": f"*{dtype}",
                "prompts_ptr": "*fp32",
                "prompt_lengths_ptr": "*i64",
                "lora_a_ptr": "*fp32",
                "lora_b_ptr": "*fp32",
                "scales_ptr": "*fp32",
                "max_lengths_ptr": "*i64",
                "adapter_ptr": "*i64",
                "mask_ptr": "*i64",
                "starts_ptr": "*i64",
            }
            specs.append(
                KernelSpec(
                    f"mixed_embed_fwd[{name},{dtype}]",
                    _mixed_embed_fwd_kernel,
                    forward_pointers,
                    {
                        "HAS_OFFSET": has_offset,
                        "HAS_LENGTHS": has_offset,
                        "HAS_MASK": True,
                        "HAS_STARTS": has_offset,
                        "BLOCK_T": GPU_FWD_CONFIG.block_t,
                        "BLOCK_D": GPU_FWD_CONFIG.block_d,
                        "BLOCK_R": RANK_CHUNK,
                    },
                    GPU_FWD_CONFIG.num_warps,
                )
            )
        backward_pointers = {
            "grad_prompts_ptr": "*fp32",
            "grad_rows_ptr": "*fp32",
            "grad_out_ptr": f"*{dtype}",
            "prompt_lengths_ptr": "*i64",
            "max_lengths_ptr": "*i64",
            "adapter_ptr": "*i64",
            "starts_ptr": "*i64",
        }
        specs.append(
            KernelSpec(
                f"mixed_embed_bwd[{dtype}]",
                _mixed_embed_bwd_kernel,
                backward_pointers,
                {
                    "HAS_LENGTHS": True,
                    "HAS_STARTS": True,
                    "BLOCK_T": GPU_BWD_CONFIG.block_t,
                    "BLOCK_D": GPU_BWD_CONFIG.block_d,
                },
                GPU_BWD_CONFIG.num_warps,
            )
        )
    return specs


__all__ = ["GPU_FWD_CONFIG", "mixed_embed_bwd_triton", "mixed_embed_fwd_triton", "sm90_specs"]
