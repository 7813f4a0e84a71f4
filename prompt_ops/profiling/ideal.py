"""Ideal byte counts: every input the op needs read once, every output written once (DESIGN.md §5).

Gathers count the gathered rows, not the whole table. These are the floors the fused kernels are held to.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def dept_embed_forward_bytes(
    batch: int,
    seq_len: int,
    num_prompt: int,
    hidden: int,
    rank: int,
    weight_dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    mask_dtype: torch.dtype | None = torch.int64,
    param_dtype: torch.dtype = torch.float32,
    row_starts: bool = False,
) -> int:
    """Forward of ``prompt_embed`` (``rank=0``) or ``dept_embed``: ids, gathered rows, prompt, ``A[:L]``, ``B``,
    the input mask (``mask_dtype=None``: no input mask) and, with ``row_starts``, the ``(B,)`` int64 starts in; the
    embeddings and the extended mask out."""
    total = num_prompt + seq_len
    out_mask = _size(mask_dtype) if mask_dtype is not None else _size(torch.int64)
    read = (
        batch * seq_len * _size(ids_dtype)
        + batch * seq_len * hidden * _size(weight_dtype)
        + num_prompt * hidden * _size(param_dtype)
        + (seq_len * rank + rank * hidden) * _size(param_dtype)
        + (batch * seq_len * _size(mask_dtype) if mask_dtype is not None else 0)
        + (batch * _size(torch.int64) if row_starts else 0)
    )
    write = batch * total * hidden * _size(weight_dtype) + batch * total * out_mask
    return read + write


def dept_embed_backward_bytes(
    batch: int,
    seq_len: int,
    num_prompt: int,
    hidden: int,
    rank: int,
    max_length: int,
    grad_dtype: torch.dtype = torch.float32,
    param_dtype: torch.dtype = torch.float32,
    row_starts: bool = False,
) -> int:
    """Backward: the output gradient (prompt rows, and token rows when ``rank > 0``), ``A[:L]``, ``B`` and, with
    ``row_starts``, the ``(B,)`` int64 starts in; ``d_prompt``, ``d_lora_a`` (all ``max_length`` rows) and
    ``d_lora_b`` out."""
    rows = num_prompt + (seq_len if rank else 0)
    read = batch * rows * hidden * _size(grad_dtype) + (seq_len * rank + rank * hidden) * _size(param_dtype)
    read += batch * _size(torch.int64) if row_starts else 0
    write = (num_prompt * hidden + max_length * rank + rank * hidden) * _size(param_dtype)
    return read + write


def mixed_dept_embed_forward_bytes(
    batch: int,
    seq_len: int,
    num_slots: int,
    hidden: int,
    prompt_lengths: Sequence[int],
    ranks: Sequence[int],
    offset_rows: Sequence[int] | None = None,
    weight_dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    mask_dtype: torch.dtype | None = torch.int64,
    param_dtype: torch.dtype = torch.float32,
    index_dtype: torch.dtype = torch.int64,
    row_starts: bool = False,
    max_lengths: bool = False,
) -> int:
    """Forward of ``mixed_dept_embed``. ``prompt_lengths``, ``ranks`` and ``offset_rows``: the ``m_a``, ``r_a`` and
    the number of ``A_a`` rows its tokens reach (default ``seq_len`` each) of every adapter the batch uses, each
    adapter once however many rows use it; the bank's padding is never needed.

    In, per batch row: the ids, the gathered table rows, the input mask (``mask_dtype=None``: none), the adapter
    index and, with ``row_starts``, the int64 start. Per adapter used: its ``m_a`` prompt rows and its prompt length
    and, when any adapter has offsets (``r_a > 0``), its fp32 scale, ``offset_rows x r_a`` of ``A``, ``r_a x d`` of
    ``B`` and, with ``max_lengths``, its ``L_a``. Out: the ``(B, m_max + L, d)`` embeddings and the extended mask."""
    if len(prompt_lengths) != len(ranks):
        raise ValueError(f"prompt_lengths and ranks must list the same adapters, got {len(prompt_lengths)} and "
                         f"{len(ranks)}")  # fmt: skip
    rows = [seq_len] * len(ranks) if offset_rows is None else list(offset_rows)
    if len(rows) != len(ranks):
        raise ValueError(f"offset_rows must list one count per adapter ({len(ranks)}), got {len(rows)}")
    param, index = _size(param_dtype), _size(index_dtype)
    read = batch * seq_len * (_size(ids_dtype) + hidden * _size(weight_dtype))
    read += batch * seq_len * _size(mask_dtype) if mask_dtype is not None else 0
    read += batch * (index + (_size(torch.int64) if row_starts else 0))
    read += sum(m * hidden * param + index for m in prompt_lengths)
    if any(ranks):
        per_adapter = _size(torch.float32) + (index if max_lengths else 0)
        read += sum((j * r + r * hidden) * param + per_adapter for j, r in zip(rows, ranks, strict=True))
    out_mask = _size(mask_dtype) if mask_dtype is not None else _size(torch.int64)
    return read + batch * (num_slots + seq_len) * (hidden * _size(weight_dtype) + out_mask)


def mixed_adept_embed_forward_bytes(
    batch: int,
    seq_len: int,
    num_slots: int,
    hidden: int,
    prompt_lengths: Sequence[int],
    ranks: Sequence[int],
    weight_dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    mask_dtype: torch.dtype | None = torch.int64,
    param_dtype: torch.dtype = torch.float32,
    index_dtype: torch.dtype = torch.int64,
) -> int:
    """Forward of ``mixed_adept_embed`` in eval (no dropout): :func:`mixed_dept_embed_forward_bytes` without offsets
    (per batch row its ids, table rows, mask and adapter index; per adapter used its ``m_a`` prompt rows and length;
    the embeddings and extended mask out), plus each adapter's FFN at its own rank ``r_a`` (``w_down``, ``b_down``,
    ``w_up``, ``b_up``), each adapter once however many rows use it; the bank's rank padding is never needed."""
    without_offsets = mixed_dept_embed_forward_bytes(
        batch, seq_len, num_slots, hidden, prompt_lengths, [0] * len(ranks), None, weight_dtype, ids_dtype,
        mask_dtype, param_dtype, index_dtype,
    )  # fmt: skip
    return without_offsets + sum((2 * hidden * r + r + hidden) * _size(param_dtype) for r in ranks)


def adept_embed_forward_bytes(
    batch: int,
    seq_len: int,
    num_prompt: int,
    hidden: int,
    rank: int,
    weight_dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    mask_dtype: torch.dtype | None = torch.int64,
    param_dtype: torch.dtype = torch.float32,
) -> int:
    """ADePT forward: as :func:`dept_embed_forward_bytes` with the FFN (``w_down``, ``b_down``, ``w_up``, ``b_up``)
    read once in place of ``A[:L]`` and ``B``."""
    without_offset = dept_embed_forward_bytes(
        batch, seq_len, num_prompt, hidden, 0, weight_dtype, ids_dtype, mask_dtype, param_dtype
    )
    return without_offset + (2 * hidden * rank + rank + hidden) * _size(param_dtype)


def adept_embed_backward_bytes(
    batch: int,
    seq_len: int,
    num_prompt: int,
    hidden: int,
    rank: int,
    weight_dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    grad_dtype: torch.dtype = torch.float32,
    param_dtype: torch.dtype = torch.float32,
) -> int:
    """ADePT backward: the output gradient, the ids and gathered rows (``E`` is needed for ``d_w_down`` and to
    recompute the hidden), ``w_down``, ``b_down``, ``w_up`` in; the five parameter gradients out."""
    ffn = (2 * hidden * rank + rank + hidden) * _size(param_dtype)
    read = (
        batch * (num_prompt + seq_len) * hidden * _size(grad_dtype)
        + batch * seq_len * (_size(ids_dtype) + hidden * _size(weight_dtype))
        + ffn
        - hidden * _size(param_dtype)  # b_up is not needed
    )
    return read + num_prompt * hidden * _size(param_dtype) + ffn


def lamp_embed_forward_bytes(
    batch: int,
    seq_len: int,
    rows: int,
    pool: int,
    hidden: int,
    rank: int,
    weight_dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    mask_dtype: torch.dtype | None = torch.int64,
    param_dtype: torch.dtype = torch.float32,
) -> int:
    """LAMP forward: as prompt tuning with ``rows // pool`` prompt rows, except that the factors ``u``, ``q``,
    ``v`` are read in place of a dense prompt."""
    num_prompt = rows // pool
    plain = dept_embed_forward_bytes(
        batch, seq_len, num_prompt, hidden, 0, weight_dtype, ids_dtype, mask_dtype, param_dtype
    )
    return plain - num_prompt * hidden * _size(param_dtype) + (rows * rank + rank + rank * hidden) * _size(param_dtype)


def lamp_embed_backward_bytes(
    batch: int, seq_len: int, rows: int, pool: int, hidden: int, rank: int,
    grad_dtype: torch.dtype = torch.float32, param_dtype: torch.dtype = torch.float32,
) -> int:  # fmt: skip
    """LAMP backward: the prompt rows of the output gradient and the factors in; their three gradients out."""
    factors = (rows * rank + rank + rank * hidden) * _size(param_dtype)
    return batch * (rows // pool) * hidden * _size(grad_dtype) + 2 * factors


def ept_embed_forward_bytes(
    batch: int, seq_len: int, num_prompt: int, hidden: int, rank: int, subspaces: int, sub_rank: int,
    max_length: int, param_dtype: torch.dtype = torch.float32, **dept_kwargs,
) -> int:  # fmt: skip
    """EPT forward: DePT's forward floor plus every builder parameter read once (all of ``A``, not just ``A[:L]``:
    the fusion attends over every row of ``Q``)."""
    builder = 2 * subspaces * hidden * sub_rank + hidden * subspaces + subspaces + (max_length - seq_len) * rank
    dept = dept_embed_forward_bytes(batch, seq_len, num_prompt, hidden, rank, param_dtype=param_dtype, **dept_kwargs)
    return dept + builder * _size(param_dtype)


def ept_embed_backward_bytes(
    batch: int, seq_len: int, num_prompt: int, hidden: int, rank: int, subspaces: int, sub_rank: int,
    max_length: int, param_dtype: torch.dtype = torch.float32, grad_dtype: torch.dtype = torch.float32,
    row_starts: bool = False,
) -> int:  # fmt: skip
    """EPT backward: DePT's backward floor (with ``row_starts``, the ``(B,)`` starts too), plus the builder's
    parameters read and their gradients written."""
    builder = 2 * subspaces * hidden * sub_rank + hidden * subspaces + subspaces
    dept = dept_embed_backward_bytes(
        batch, seq_len, num_prompt, hidden, rank, max_length, grad_dtype, param_dtype, row_starts
    )
    return dept + (2 * builder + num_prompt * hidden + (max_length - seq_len) * rank) * _size(param_dtype)


def mixed_lpt_prompt_forward_bytes(
    batch: int, rows_read: int, hidden: int, num_slots: int, generators: Sequence[tuple[int, int]],
    hidden_dtype: torch.dtype = torch.float32, param_dtype: torch.dtype = torch.float32,
) -> int:  # fmt: skip
    """Forward of ``mixed_lpt_prompt``: the ``rows_read`` hidden rows the generators read (NPG: one per sample; the
    pooling modes: every pooled row), each adapter of the batch's generator once, unpadded (``generators``: its rank
    ``h_a`` and width ``W_a``), and the ``(B, n_max, d)`` fp32 prompt out."""
    weights = sum(hidden * rank + rank + rank * width + width for rank, width in generators) * _size(param_dtype)
    return rows_read * hidden * _size(hidden_dtype) + weights + batch * num_slots * hidden * 4


def lpt_insert_forward_bytes(
    batch: int, seq_len: int, num_tokens: int, hidden: int, gen_rank: int, mode: str,
    hidden_dtype: torch.dtype = torch.float32, mask_dtype: torch.dtype = torch.int64,
    param_dtype: torch.dtype = torch.float32,
) -> int:  # fmt: skip
    """LPT insertion: the hidden states, the input mask and the generator's four tensors in (the rows the
    generator reads are among the hidden states); the ``(B, n+L, d)`` buffer and the extended mask out."""
    width = num_tokens * hidden if mode == "naive" else hidden
    generator = (hidden * gen_rank + gen_rank + gen_rank * width + width) * _size(param_dtype)
    read = batch * seq_len * (hidden * _size(hidden_dtype) + _size(mask_dtype)) + generator
    write = batch * (num_tokens + seq_len) * (hidden * _size(hidden_dtype) + _size(mask_dtype))
    return read + write


def lpt_insert_backward_bytes(
    batch: int, seq_len: int, num_tokens: int, hidden: int, gen_rank: int, mode: str,
    hidden_dtype: torch.dtype = torch.float32, param_dtype: torch.dtype = torch.float32,
) -> int:  # fmt: skip
    """LPT backward (generator only): the prompt rows of the buffer's gradient, the hidden rows the generator read
    (NPG: one per sample; APPG: every valid row) and ``w_up`` in; the four parameter gradients out."""
    width = num_tokens * hidden if mode == "naive" else hidden
    rows = batch if mode == "naive" else batch * seq_len
    generator = (hidden * gen_rank + gen_rank + gen_rank * width + width) * _size(param_dtype)
    read = batch * num_tokens * hidden * _size(hidden_dtype) + rows * hidden * _size(hidden_dtype)
    return read + gen_rank * width * _size(param_dtype) + generator
