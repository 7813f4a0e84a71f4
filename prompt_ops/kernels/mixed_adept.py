"""Mixed-adapter ADePT input embedding (issue 14): Triton kernels and their launchers.

Notation: a bank of ``N`` adapters, ``B`` batch rows, ``L`` input length, ``S = m_max`` prompt slots, ``T = S + L``
output columns, ``d`` hidden size, ``R = r_max`` the zero-padded FFN rank. Row ``b`` runs adapter
``a = adapter_index[b]`` (``-1``: the base model) with prompt length ``m_a``, FFN ``w_down[a] (d, R)``,
``b_down[a] (R,)``, ``w_up[a] (R, d)``, ``b_up[a] (d,)`` and dropout probability ``p_a``.

Forward (one launch) writes the whole model input, with ``f_a`` the slot column of the prompt's row 0 (``S - m_a``
for ``"front"``, ``0`` for ``"after_prompt"``, as in ``prompt_ops.kernels.mixed_embed``)::

    out[b, p]     = prompts[a, p - f_a]                          f_a <= p < f_a + m_a      mask 1
    out[b, p]     = 0                                            other p < S, or a = -1    mask 0
    E             = W[ids[b, t]]                                 (d,)
    Hd            = (E @ w_down[a] + b_down[a]) * D[b, t]        (R,)   D: dropout multipliers (1 in eval)
    out[b, S + t] = E + relu(Hd) @ w_up[a] + b_up[a]             (plain E where a = -1)    mask attention_mask[b, t]

Grid (tiles of the ``T`` columns, batch rows): a program reads its row's adapter once, accumulates ``Hd`` of its
token columns over d-chunks in registers (ADePT's ``ffn_hidden_tile``), then streams d-chunks writing the prompt
slots (masked loads of the adapter's prompt rows) and the tokens. Zero-padded ranks give ``Hd = 0`` exactly, so
they add nothing. Dropout is keyed by ``seed`` and the element ``(b * L + t) * R + k``.

Backward, with ``dY[b, t] = dX[b, S + t]`` and the chain rule through the equations above, summed per adapter over
its own rows only::

    d_prompts[a, q] = sum_{b: a_b = a} dX[b, f_a + q]                  q < m_a (``mixed_embed``'s kernel)
    dH[b, t]        = (dY[b, t] @ w_up[a]^T) * 1[Hd > 0] * D[b, t]      (R,)
    d_w_up[a]       = sum_{b: a_b = a} sum_t relu(Hd[b, t])^T dY[b, t]  (R, d)
    d_b_up[a]       = sum_{b: a_b = a} sum_t dY[b, t]                   (d,)
    d_w_down[a]     = sum_{b: a_b = a} sum_t E[b, t]^T dH[b, t]         (d, R)
    d_b_down[a]     = sum_{b: a_b = a} sum_t dH[b, t]                   (R,)

Three launches: (1) ``d_prompts`` by ``prompt_ops.kernels.mixed_embed``'s backward kernel (a bank without
offsets); (2) grid (token tiles, batch rows): each adapter row recomputes ``Hd`` and ``D`` (cheaper than storing
them) and writes the small ``relu(Hd)`` and ``dH`` (``B L x R`` fp32); (3) grid (d tiles, adapters): program
``(., a)`` walks the batch rows in order and accumulates the four weight gradients over the rows of adapter ``a``
in registers (a fixed summation order: deterministic, no atomics; ``dY`` and ``E`` read once in all). An adapter
without rows gets zeros; zero-padded ranks get exact zeros (``dH`` and ``relu(Hd)`` vanish there). Launch (3) has
``d / BLOCK_D`` programs per adapter, each walking all of its adapter's tokens: with few adapters and many tokens a
GPU is under-filled there (``adept_embed``'s weight launch splits the tokens and sums the partials; not done here).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from prompt_ops.kernels.adept_embed import GPU_CONFIG, FFNConfig, block_rank, default_config
from prompt_ops.kernels.common import (
    add_ffn_weight_grads,
    bank_prompt_rows,
    ffn_hidden_grad_tile,
    ffn_hidden_tile,
    ffn_offset_tile,
    head_token_rows,
    interpreting,
    launch_grid,
    load_tile,
    store_bank_mask,
    store_ffn_grads,
)
from prompt_ops.kernels.mixed_embed import mixed_embed_bwd_triton


@triton.jit
def _mixed_adept_fwd_kernel(
    out_ptr,  # (B, T, d) contiguous, weight dtype
    mask_out_ptr,  # (B, T) contiguous, mask dtype
    ids_ptr,  # (B, L) int32 / int64, any strides
    weight_ptr,  # (V, d) any strides
    prompts_ptr,  # (N, S, d) any strides
    prompt_lengths_ptr,  # (N,) contiguous: m_a
    w_down_ptr,  # (N, d, R) any strides
    b_down_ptr,  # (N, R) contiguous
    w_up_ptr,  # (N, R, d) any strides
    b_up_ptr,  # (N, d) contiguous
    dropout_ptr,  # (N,) contiguous: p_a, or unused
    adapter_ptr,  # (B,) contiguous int32 / int64: a_b in [-1, N)
    mask_ptr,  # (B, L) any strides, or unused
    num_adapters,
    num_slots,  # S = m_max
    seq_len,
    hidden,
    rank,  # R
    vocab,
    slots_front,  # 1: slots in front of the prompt (f_a = S - m_a); 0: after it (f_a = 0)
    seed,
    stride_ids_b,
    stride_ids_t,
    stride_w_v,
    stride_w_d,
    stride_p_n,
    stride_p_m,
    stride_p_d,
    stride_wd_n,
    stride_wd_d,
    stride_wd_r,
    stride_wu_n,
    stride_wu_r,
    stride_wu_d,
    stride_mask_b,
    stride_mask_t,
    HAS_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    pid_t = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    total = num_slots + seq_len
    # rows: output column p in [0, T); tok: the token column t of a token column
    rows, is_slot, is_token, tok = head_token_rows(pid_t, num_slots, total, BLOCK_T)
    adapter = tl.load(adapter_ptr + b).to(tl.int64)
    has_adapter, index, slot_ok, prompt_row = bank_prompt_rows(
        adapter, num_adapters, prompt_lengths_ptr, rows, is_slot, num_slots, slots_front
    )
    ids = tl.load(ids_ptr + b * stride_ids_b + tok * stride_ids_t, mask=is_token, other=0).to(tl.int64)  # [BLOCK_T]
    id_ok = is_token & (ids >= 0) & (ids < vocab)  # [BLOCK_T] out-of-range ids read nothing

    # The FFN runs on tiles holding token columns of an adapter row only.
    has_ffn = has_adapter & (pid_t * BLOCK_T + BLOCK_T > num_slots)
    act = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)  # relu(Hd)
    if has_ffn:
        dropout_p = 0.0
        if HAS_DROPOUT:
            dropout_p = tl.load(dropout_ptr + index).to(tl.float32)  # p_a
        h, _ = ffn_hidden_tile(
            ids, id_ok, b * seq_len + tok, weight_ptr, w_down_ptr + index * stride_wd_n, b_down_ptr + index * rank,
            hidden, rank, dropout_p, seed, stride_w_v, stride_w_d, stride_wd_d, stride_wd_r, HAS_DROPOUT, BLOCK_T,
            BLOCK_D, BLOCK_R,
        )  # fmt: skip
        act = tl.maximum(h, 0.0)  # [BLOCK_T, BLOCK_R]

    out_row = out_ptr + (b * total + rows) * hidden  # [BLOCK_T] pointers
    row_ok = rows < total  # [BLOCK_T]
    for d0 in range(0, hidden, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)  # [BLOCK_D]
        col_ok = cols < hidden
        emb = load_tile(weight_ptr, ids, id_ok, cols, col_ok, stride_w_v, stride_w_d)  # [BLOCK_T, BLOCK_D]
        if has_ffn:
            emb += ffn_offset_tile(
                act, w_up_ptr + index * stride_wu_n, b_up_ptr + index * hidden, rank, cols, col_ok, stride_wu_r,
                stride_wu_d, BLOCK_R,
            )  # fmt: skip
        prompt = load_tile(
            prompts_ptr + index * stride_p_n, prompt_row, slot_ok, cols, col_ok, stride_p_m, stride_p_d
        )  # [BLOCK_T, BLOCK_D], zeros off the prompt rows
        value = tl.where(is_slot[:, None], prompt, emb)  # [BLOCK_T, BLOCK_D]
        tl.store(
            out_row[:, None] + cols[None, :], value.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :]
        )
    store_bank_mask(
        mask_out_ptr + b * total, mask_ptr + b * stride_mask_b, rows, total, is_slot, slot_ok, is_token, tok,
        stride_mask_t, HAS_MASK, BLOCK_T,
    )  # fmt: skip


@triton.jit
def _mixed_adept_bwd_hidden_kernel(
    act_ptr,  # (B * L, R) fp32: relu(Hd), written on adapter rows
    grad_h_ptr,  # (B * L, R) fp32: dH, written on adapter rows
    grad_out_ptr,  # (B, T, d) any strides
    ids_ptr,  # (B, L) any strides
    weight_ptr,  # (V, d) any strides
    w_down_ptr,  # (N, d, R) any strides
    b_down_ptr,  # (N, R) contiguous
    w_up_ptr,  # (N, R, d) any strides
    dropout_ptr,  # (N,) contiguous, or unused
    adapter_ptr,  # (B,) contiguous
    num_adapters,
    num_slots,
    seq_len,
    hidden,
    rank,
    vocab,
    seed,
    stride_g_b,
    stride_g_t,
    stride_g_d,
    stride_ids_b,
    stride_ids_t,
    stride_w_v,
    stride_w_d,
    stride_wd_n,
    stride_wd_d,
    stride_wd_r,
    stride_wu_n,
    stride_wu_r,
    stride_wu_d,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    pid_t = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    adapter = tl.load(adapter_ptr + b).to(tl.int64)
    if (adapter >= 0) & (adapter < num_adapters):  # base-model rows have no FFN and write nothing
        t = pid_t * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # [BLOCK_N] token columns
        n_ok = t < seq_len
        n = b * seq_len + t  # [BLOCK_N] flattened token index: dropout key and buffer row
        ids = tl.load(ids_ptr + b * stride_ids_b + t * stride_ids_t, mask=n_ok, other=0).to(tl.int64)
        id_ok = n_ok & (ids >= 0) & (ids < vocab)
        dropout_p = 0.0
        if HAS_DROPOUT:
            dropout_p = tl.load(dropout_ptr + adapter).to(tl.float32)  # p_a
        # [BLOCK_N, BLOCK_R] hidden after dropout, and the dropout multipliers
        h, scale = ffn_hidden_tile(
            ids, id_ok, n, weight_ptr, w_down_ptr + adapter * stride_wd_n, b_down_ptr + adapter * rank, hidden,
            rank, dropout_p, seed, stride_w_v, stride_w_d, stride_wd_d, stride_wd_r, HAS_DROPOUT, BLOCK_N, BLOCK_D,
            BLOCK_R,
        )  # fmt: skip
        grad_rows = grad_out_ptr + b * stride_g_b + (num_slots + t) * stride_g_t  # [BLOCK_N] pointers
        grad_act = ffn_hidden_grad_tile(
            grad_rows, n_ok, w_up_ptr + adapter * stride_wu_n, hidden, rank, stride_g_d, stride_wu_r, stride_wu_d,
            BLOCK_N, BLOCK_D, BLOCK_R,
        )  # fmt: skip
        grad_h = tl.where(h > 0.0, grad_act, 0.0) * scale  # [BLOCK_N, BLOCK_R]
        r = tl.arange(0, BLOCK_R).to(tl.int64)
        store_ok = n_ok[:, None] & (r < rank)[None, :]
        offsets = n[:, None] * rank + r[None, :]
        tl.store(act_ptr + offsets, tl.maximum(h, 0.0), mask=store_ok)
        tl.store(grad_h_ptr + offsets, grad_h, mask=store_ok)


@triton.jit
def _mixed_adept_bwd_weights_kernel(
    grad_w_down_ptr,  # (N, d, R) fp32 contiguous
    grad_b_down_ptr,  # (N, R) fp32 contiguous
    grad_w_up_ptr,  # (N, R, d) fp32 contiguous
    grad_b_up_ptr,  # (N, d) fp32 contiguous
    act_ptr,  # (B * L, R) fp32
    grad_h_ptr,  # (B * L, R) fp32
    grad_out_ptr,  # (B, T, d) any strides
    ids_ptr,  # (B, L) any strides
    weight_ptr,  # (V, d) any strides
    adapter_ptr,  # (B,) contiguous
    num_batch,
    num_slots,
    seq_len,
    hidden,
    rank,
    vocab,
    stride_g_b,
    stride_g_t,
    stride_g_d,
    stride_ids_b,
    stride_ids_t,
    stride_w_v,
    stride_w_d,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    pid_d = tl.program_id(0).to(tl.int64)
    adapter = tl.program_id(1).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # [BLOCK_D]
    col_ok = cols < hidden

    acc_w_down = tl.zeros([BLOCK_D, BLOCK_R], dtype=tl.float32)
    acc_b_down = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc_w_up = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    acc_b_up = tl.zeros([BLOCK_D], dtype=tl.float32)
    # Per-row pointers and the row's first flattened token, advanced by one row per iteration (64-bit).
    adapter_row = adapter_ptr
    ids_base = ids_ptr
    grad_base = grad_out_ptr + num_slots * stride_g_t
    row_start = pid_d * 0  # int64: b * L
    for _ in range(0, num_batch):  # batch rows in order: a fixed summation order
        if tl.load(adapter_row).to(tl.int64) == adapter:
            for t0 in range(0, seq_len, BLOCK_N):
                t = t0 + tl.arange(0, BLOCK_N).to(tl.int64)  # [BLOCK_N]
                n_ok = t < seq_len
                ids = tl.load(ids_base + t * stride_ids_t, mask=n_ok, other=0).to(tl.int64)
                id_ok = n_ok & (ids >= 0) & (ids < vocab)
                acc_w_down, acc_b_down, acc_w_up, acc_b_up = add_ffn_weight_grads(
                    acc_w_down, acc_b_down, acc_w_up, acc_b_up, row_start + t, n_ok, ids, id_ok,
                    grad_base + t * stride_g_t, act_ptr, grad_h_ptr, weight_ptr, cols, col_ok, rank, stride_g_d,
                    stride_w_v, stride_w_d, BLOCK_R,
                )  # fmt: skip
        adapter_row += 1
        ids_base += stride_ids_b
        grad_base += stride_g_b
        row_start += seq_len

    store_ffn_grads(
        grad_w_down_ptr + adapter * hidden * rank, grad_b_down_ptr + adapter * rank,
        grad_w_up_ptr + adapter * rank * hidden, grad_b_up_ptr + adapter * hidden, acc_w_down, acc_b_down, acc_w_up,
        acc_b_up, cols, col_ok, hidden, rank, pid_d == 0, BLOCK_R,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------


def _config(rows: int, hidden: int) -> FFNConfig:
    """ADePT's tiles: :data:`prompt_ops.kernels.adept_embed.GPU_CONFIG` on a GPU, few large programs over ``rows``
    token columns under the interpreter."""
    return default_config(rows, hidden, interpreting())


def mixed_adept_fwd_triton(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    prompts: torch.Tensor,
    prompt_lengths: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    w_up: torch.Tensor,
    b_up: torch.Tensor,
    adapter_index: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: torch.Tensor | None,
    seed: int,
    slots: str = "front",
    config: FFNConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused mixed-adapter ADePT forward (one launch). Arguments are assumed validated (see
    ``prompt_ops.ops.mixed_adept``): the bank's ``prompts (N, S, d)``, ``prompt_lengths (N,)``, FFN ``w_down
    (N, d, R)``, ``b_down (N, R)``, ``w_up (N, R, d)``, ``b_up (N, d)``; ``adapter_index (B,)`` in ``[-1, N)``;
    ``dropout (N,)`` the active probabilities or None (eval); ``slots`` ``"front"`` or ``"after_prompt"``.
    Returns ``inputs_embeds (B, S + L, d)`` in ``weight.dtype`` and the mask ``(B, S + L)`` in the dtype of
    ``attention_mask`` (int64 when None)."""
    num_batch, seq_len = input_ids.shape
    num_adapters, num_slots, hidden = prompts.shape
    rank = w_down.shape[2]
    total = num_slots + seq_len
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    out = torch.empty((num_batch, total, hidden), dtype=weight.dtype, device=weight.device)
    mask_out = torch.empty((num_batch, total), dtype=mask_dtype, device=weight.device)
    if num_batch == 0:
        return out, mask_out
    config = config or _config(total, hidden)
    grid = launch_grid(triton.cdiv(total, config.block_n), num_batch, sizes=f"the batch of B = {num_batch} rows")
    adapter_index, prompt_lengths = adapter_index.contiguous(), prompt_lengths.contiguous()
    b_down, b_up = b_down.contiguous(), b_up.contiguous()  # the kernel reads the biases at unit stride
    # Unused pointers get a valid tensor; the constexpr flags keep them untouched.
    mask = attention_mask if attention_mask is not None else input_ids
    rates = dropout.contiguous() if dropout is not None else adapter_index
    _mixed_adept_fwd_kernel[grid](
        out, mask_out, input_ids, weight, prompts, prompt_lengths, w_down, b_down, w_up, b_up, rates, adapter_index,
        mask,
        num_adapters, num_slots, seq_len, hidden, rank, weight.shape[0], int(slots == "front"), int(seed),
        input_ids.stride(0), input_ids.stride(1), weight.stride(0), weight.stride(1),
        prompts.stride(0), prompts.stride(1), prompts.stride(2), w_down.stride(0), w_down.stride(1), w_down.stride(2),
        w_up.stride(0), w_up.stride(1), w_up.stride(2), mask.stride(0), mask.stride(1),
        HAS_MASK=attention_mask is not None, HAS_DROPOUT=dropout is not None, BLOCK_T=config.block_n,
        BLOCK_D=config.block_d, BLOCK_R=block_rank(rank), num_warps=config.num_warps,
    )  # fmt: skip
    return out, mask_out


def mixed_adept_bwd_triton(
    grad_out: torch.Tensor,
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    prompt_lengths: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    w_up: torch.Tensor,
    adapter_index: torch.Tensor,
    dropout: torch.Tensor | None,
    seed: int,
    num_slots: int,
    slots: str = "front",
    config: FFNConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the deterministic mixed-adapter ADePT backward (three launches, module docstring). Returns fp32
    ``(d_prompts (N, S, d), d_w_down (N, d, R), d_b_down (N, R), d_w_up (N, R, d), d_b_up (N, d))``, zero on the
    bank's padding and for adapters without rows. ``num_slots`` is ``S``; the rest as in
    :func:`mixed_adept_fwd_triton`."""
    num_batch, seq_len = input_ids.shape
    num_adapters, hidden, rank = w_down.shape
    device = grad_out.device
    # The prompt part is a bank without offsets: its scales are never read.
    grad_prompts = mixed_embed_bwd_triton(
        grad_out, prompt_lengths, None, None, None, adapter_index, None, num_slots, slots=slots
    )[0]
    shapes = ((num_adapters, hidden, rank), (num_adapters, rank), (num_adapters, rank, hidden), (num_adapters, hidden))
    if num_batch * seq_len == 0:  # no tokens: nothing flows into the FFN
        return grad_prompts, *(torch.zeros(shape, dtype=torch.float32, device=device) for shape in shapes)
    grads = [torch.empty(shape, dtype=torch.float32, device=device) for shape in shapes]  # every entry written
    config = config or _config(seq_len, hidden)
    block_r = block_rank(rank)
    adapter_index, b_down = adapter_index.contiguous(), b_down.contiguous()
    rates = dropout.contiguous() if dropout is not None else adapter_index
    act = torch.empty((num_batch * seq_len, rank), dtype=torch.float32, device=device)
    grad_h = torch.empty((num_batch * seq_len, rank), dtype=torch.float32, device=device)
    grid = launch_grid(triton.cdiv(seq_len, config.block_n), num_batch, sizes=f"the batch of B = {num_batch} rows")
    _mixed_adept_bwd_hidden_kernel[grid](
        act, grad_h, grad_out, input_ids, weight, w_down, b_down, w_up, rates, adapter_index,
        num_adapters, num_slots, seq_len, hidden, rank, weight.shape[0], int(seed),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), input_ids.stride(0), input_ids.stride(1),
        weight.stride(0), weight.stride(1), w_down.stride(0), w_down.stride(1), w_down.stride(2),
        w_up.stride(0), w_up.stride(1), w_up.stride(2),
        HAS_DROPOUT=dropout is not None, BLOCK_N=config.block_n, BLOCK_D=config.block_d, BLOCK_R=block_r,
        num_warps=config.num_warps,
    )  # fmt: skip
    grid = launch_grid(triton.cdiv(hidden, config.block_d), num_adapters, sizes=f"a bank of N = {num_adapters}")
    _mixed_adept_bwd_weights_kernel[grid](
        *grads, act, grad_h, grad_out, input_ids, weight, adapter_index,
        num_batch, num_slots, seq_len, hidden, rank, weight.shape[0],
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), input_ids.stride(0), input_ids.stride(1),
        weight.stride(0), weight.stride(1),
        BLOCK_N=config.block_n, BLOCK_D=config.block_d, BLOCK_R=block_r, num_warps=config.num_warps,
    )  # fmt: skip
    return grad_prompts, *grads


def sm90_specs():
    """The shipped GPU configs of the three mixed ADePT kernels, for ``prompt_ops.kernels.compile_check``."""
    from prompt_ops.kernels.compile_check import KernelSpec

    config = GPU_CONFIG
    specs = []
    for dtype, block_r in (("fp32", 32), ("fp16", 32), ("bf16", 32), ("bf16", 64)):
        params = {name: "*fp32" for name in ("w_down_ptr", "b_down_ptr", "w_up_ptr")}
        specs.append(
            KernelSpec(
                f"mixed_adept_fwd[{dtype},R{block_r}]",
                _mixed_adept_fwd_kernel,
                {
                    "out_ptr": f"*{dtype}",
                    "mask_out_ptr": "*i64",
                    "ids_ptr": "*i64",
                    "weight_ptr": f"*{dtype}",
                    "prompts_ptr": "*fp32",
                    "prompt_lengths_ptr": "*i64",
                    "b_up_ptr": "*fp32",
                    "dropout_ptr": "*fp32",
                    "adapter_ptr": "*i64",
                    "mask_ptr": "*i64",
                    **params,
                },  # fmt: skip
                {
                    "HAS_MASK": True,
                    "HAS_DROPOUT": True,
                    "BLOCK_T": config.block_n,
                    "BLOCK_D": config.block_d,
                    "BLOCK_R": block_r,
                },  # fmt: skip
                config.num_warps,
            )
        )
        specs.append(
            KernelSpec(
                f"mixed_adept_bwd_hidden[{dtype},R{block_r}]",
                _mixed_adept_bwd_hidden_kernel,
                {
                    "act_ptr": "*fp32",
                    "grad_h_ptr": "*fp32",
                    "grad_out_ptr": f"*{dtype}",
                    "ids_ptr": "*i64",
                    "weight_ptr": f"*{dtype}",
                    "dropout_ptr": "*fp32",
                    "adapter_ptr": "*i64",
                    **params,
                },  # fmt: skip
                {"HAS_DROPOUT": True, "BLOCK_N": config.block_n, "BLOCK_D": config.block_d, "BLOCK_R": block_r},
                config.num_warps,
            )
        )
        grads = {name: "*fp32" for name in ("grad_w_down_ptr", "grad_b_down_ptr", "grad_w_up_ptr", "grad_b_up_ptr")}
        specs.append(
            KernelSpec(
                f"mixed_adept_bwd_weights[{dtype},R{block_r}]",
                _mixed_adept_bwd_weights_kernel,
                {
                    "act_ptr": "*fp32",
                    "grad_h_ptr": "*fp32",
                    "grad_out_ptr": f"*{dtype}",
                    "ids_ptr": "*i64",
                    "weight_ptr": f"*{dtype}",
                    "adapter_ptr": "*i64",
                    **grads,
                },  # fmt: skip
                {"BLOCK_N": config.block_n, "BLOCK_D": config.block_d, "BLOCK_R": block_r},
                config.num_warps,
            )
        )
    return specs


__all__ = ["mixed_adept_bwd_triton", "mixed_adept_fwd_triton", "sm90_specs"]
