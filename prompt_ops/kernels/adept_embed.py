"""Fused ADePT input embedding: Triton kernels and their launchers.

ADePT (Tang, Hu & Liu, ICLR 2025) adds to every token embedding an offset from a token-shared two-layer FFN::

    E  = W[ids]                                   (N, d)     N = B * L tokens, flattened
    H  = E @ w_down + b_down                       (N, r)
    Hd = H * D                                     D: inverted-dropout multipliers (1 in eval)
    Y  = E + relu(Hd) @ w_up + b_up                (N, d)
    out = cat(prompt, Y) per sample, mask extended as in dept_embed

Forward, one launch: token programs gather ``BLOCK_N`` rows, accumulate ``H`` over d-chunks in registers (the
``(N, r)`` hidden never reaches memory), apply the counter-based dropout and ReLU, then stream d-chunks again to add
``relu(Hd) @ w_up + b_up`` and store. Prompt programs broadcast the prompt rows. ``r`` is padded to ``BLOCK_R >= 16``
with masked loads, so ``tl.dot`` works for r = 19 and any small rank.

Backward (chain rule through the equations above, with ``dY = dX[:, m:]`` flattened)::

    dA_act   = dY @ w_up^T                         (N, r)
    dH       = dA_act * 1[Hd > 0] * D              (N, r)   ReLU' then the same dropout multipliers
    d_w_up   = relu(Hd)^T @ dY                     (r, d)
    d_b_up   = sum_n dY                            (d,)
    d_w_down = E^T @ dH                            (d, r)
    d_b_down = sum_n dH                            (r,)
    d_prompt = sum_b dX[b, :m]                     (m, d)

runs in three launches: (1) token programs recompute ``H`` and the mask (cheaper than storing them) and write the
small ``relu(Hd)`` and ``dH`` (``N x r`` fp32 each); prompt programs sum the prompt gradient over the batch;
(2) programs over (d-chunk, token split) accumulate the four weight gradients in registers and write one partial
per split; (3) one deterministic sum of the partials. No atomics; the table gets no gradient.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from prompt_ops.kernels.common import (
    add_ffn_weight_grads,
    broadcast_prompt_tile,
    dropout_scale,
    ffn_hidden_grad_tile,
    ffn_hidden_tile,
    ffn_offset_tile,
    interpreting,
    load_tile,
    store_ffn_grads,
    sum_partials,
    sum_prompt_grad_tile,
)


@triton.jit
def _token_rows(pid, num_batch, seq_len, ids_ptr, stride_ids_b, stride_ids_t, vocab, BLOCK_N: tl.constexpr):
    """Flattened token indices of tile ``pid`` and their sample, position, ids and validity."""
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # [BLOCK_N] flattened token index b * L + t
    n_ok = n < num_batch * seq_len
    b = n // seq_len
    t = n % seq_len
    ids = tl.load(ids_ptr + b * stride_ids_b + t * stride_ids_t, mask=n_ok, other=0).to(tl.int64)
    # Out-of-range ids (possible only when the host check is switched off) read nothing.
    id_ok = n_ok & (ids >= 0) & (ids < vocab)
    return n, n_ok, b, t, ids, id_ok


@triton.jit
def _adept_embed_fwd_kernel(
    out_ptr,  # (B, m+L, d) contiguous, weight dtype
    mask_out_ptr,  # (B, m+L) contiguous
    ids_ptr,  # (B, L)
    weight_ptr,  # (V, d)
    prompt_ptr,  # (m, d)
    w_down_ptr,  # (d, r)
    b_down_ptr,  # (r,)
    w_up_ptr,  # (r, d)
    b_up_ptr,  # (d,)
    mask_ptr,  # (B, L) or unused
    num_batch,
    num_prompt,
    seq_len,
    hidden,
    rank,
    vocab,
    dropout_p,
    seed,
    token_tiles,
    stride_ids_b,
    stride_ids_t,
    stride_w_v,
    stride_w_d,
    stride_p_m,
    stride_p_d,
    stride_wd_d,
    stride_wd_r,
    stride_wu_r,
    stride_wu_d,
    stride_mask_b,
    stride_mask_t,
    HAS_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_PT: tl.constexpr,
    BLOCK_PD: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    if pid >= token_tiles:
        broadcast_prompt_tile(
            out_ptr, mask_out_ptr, prompt_ptr, pid - token_tiles, num_batch, num_prompt, seq_len, hidden,
            stride_p_m, stride_p_d, BLOCK_PT, BLOCK_PD,
        )  # fmt: skip
    else:
        n, n_ok, b, t, ids, id_ok = _token_rows(
            pid, num_batch, seq_len, ids_ptr, stride_ids_b, stride_ids_t, vocab, BLOCK_N
        )
        # [BLOCK_N, BLOCK_R] hidden after dropout, and the dropout multipliers
        h, _ = ffn_hidden_tile(
            ids, id_ok, n, weight_ptr, w_down_ptr, b_down_ptr, hidden, rank, dropout_p, seed,
            stride_w_v, stride_w_d, stride_wd_d, stride_wd_r, HAS_DROPOUT, BLOCK_N, BLOCK_D, BLOCK_R,
        )  # fmt: skip
        act = tl.maximum(h, 0.0)  # [BLOCK_N, BLOCK_R]

        total = num_prompt + seq_len
        out_row = b * total + num_prompt + t  # [BLOCK_N]
        for d0 in range(0, hidden, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)  # [BLOCK_D]
            col_ok = cols < hidden
            emb = load_tile(weight_ptr, ids, id_ok, cols, col_ok, stride_w_v, stride_w_d)  # [BLOCK_N, BLOCK_D]
            offset = ffn_offset_tile(act, w_up_ptr, b_up_ptr, rank, cols, col_ok, stride_wu_r, stride_wu_d, BLOCK_R)
            value = emb + offset  # [BLOCK_N, BLOCK_D]
            tl.store(
                out_ptr + out_row[:, None] * hidden + cols[None, :],
                value.to(out_ptr.dtype.element_ty),
                mask=n_ok[:, None] & col_ok[None, :],
            )
        if HAS_MASK:
            keep = tl.load(mask_ptr + b * stride_mask_b + t * stride_mask_t, mask=n_ok, other=1).to(tl.float32)
        else:
            keep = tl.full([BLOCK_N], 1.0, tl.float32)
        tl.store(mask_out_ptr + out_row, keep.to(mask_out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _adept_embed_bwd_hidden_kernel(
    act_ptr,  # (N, r) fp32: relu(Hd)
    grad_h_ptr,  # (N, r) fp32: dH
    grad_prompt_ptr,  # (m, d) fp32
    grad_out_ptr,  # (B, m+L, d) any strides
    ids_ptr,
    weight_ptr,
    w_down_ptr,
    b_down_ptr,
    w_up_ptr,
    num_batch,
    num_prompt,
    seq_len,
    hidden,
    rank,
    vocab,
    dropout_p,
    seed,
    token_tiles,
    stride_g_b,
    stride_g_t,
    stride_g_d,
    stride_ids_b,
    stride_ids_t,
    stride_w_v,
    stride_w_d,
    stride_wd_d,
    stride_wd_r,
    stride_wu_r,
    stride_wu_d,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_PT: tl.constexpr,
    BLOCK_PD: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    if pid >= token_tiles:
        sum_prompt_grad_tile(
            grad_prompt_ptr, grad_out_ptr, pid - token_tiles, num_batch, num_prompt, hidden,
            stride_g_b, stride_g_t, stride_g_d, BLOCK_PT, BLOCK_PD,
        )  # fmt: skip
    else:
        n, n_ok, b, t, ids, id_ok = _token_rows(
            pid, num_batch, seq_len, ids_ptr, stride_ids_b, stride_ids_t, vocab, BLOCK_N
        )
        # [BLOCK_N, BLOCK_R] hidden after dropout, and the dropout multipliers
        h, scale = ffn_hidden_tile(
            ids, id_ok, n, weight_ptr, w_down_ptr, b_down_ptr, hidden, rank, dropout_p, seed,
            stride_w_v, stride_w_d, stride_wd_d, stride_wd_r, HAS_DROPOUT, BLOCK_N, BLOCK_D, BLOCK_R,
        )  # fmt: skip

        r = tl.arange(0, BLOCK_R).to(tl.int64)
        r_ok = r < rank
        grad_rows = grad_out_ptr + b * stride_g_b + (num_prompt + t) * stride_g_t  # [BLOCK_N] pointers
        grad_act = ffn_hidden_grad_tile(
            grad_rows, n_ok, w_up_ptr, hidden, rank, stride_g_d, stride_wu_r, stride_wu_d, BLOCK_N, BLOCK_D, BLOCK_R
        )  # [BLOCK_N, BLOCK_R]
        grad_h = tl.where(h > 0.0, grad_act, 0.0) * scale  # [BLOCK_N, BLOCK_R]
        store_ok = n_ok[:, None] & r_ok[None, :]
        offsets = n[:, None] * rank + r[None, :]
        tl.store(act_ptr + offsets, tl.maximum(h, 0.0), mask=store_ok)
        tl.store(grad_h_ptr + offsets, grad_h, mask=store_ok)


@triton.jit
def _adept_embed_bwd_weights_kernel(
    part_ptr,  # (splits, d*r + r + r*d + d) fp32: [d_w_down | d_b_down | d_w_up | d_b_up] per split
    act_ptr,  # (N, r) fp32
    grad_h_ptr,  # (N, r) fp32
    grad_out_ptr,
    ids_ptr,
    weight_ptr,
    num_batch,
    num_prompt,
    seq_len,
    hidden,
    rank,
    vocab,
    tokens_per_split,
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
    pid_s = tl.program_id(1).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # [BLOCK_D]
    col_ok = cols < hidden
    num_tokens = num_batch * seq_len
    start = pid_s * tokens_per_split
    stop = tl.minimum(start + tokens_per_split, num_tokens)

    acc_w_down = tl.zeros([BLOCK_D, BLOCK_R], dtype=tl.float32)
    acc_b_down = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc_w_up = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    acc_b_up = tl.zeros([BLOCK_D], dtype=tl.float32)
    for n0 in range(start, stop, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)  # [BLOCK_N]
        n_ok = n < stop
        b = n // seq_len
        t = n % seq_len
        ids = tl.load(ids_ptr + b * stride_ids_b + t * stride_ids_t, mask=n_ok, other=0).to(tl.int64)
        id_ok = n_ok & (ids >= 0) & (ids < vocab)
        grad_rows = grad_out_ptr + b * stride_g_b + (num_prompt + t) * stride_g_t  # [BLOCK_N] pointers
        acc_w_down, acc_b_down, acc_w_up, acc_b_up = add_ffn_weight_grads(
            acc_w_down, acc_b_down, acc_w_up, acc_b_up, n, n_ok, ids, id_ok, grad_rows, act_ptr, grad_h_ptr,
            weight_ptr, cols, col_ok, rank, stride_g_d, stride_w_v, stride_w_d, BLOCK_R,
        )  # fmt: skip

    slab = part_ptr + pid_s * (2 * hidden * rank + rank + hidden)
    up = slab + hidden * rank + rank
    store_ffn_grads(
        slab, slab + hidden * rank, up, up + rank * hidden, acc_w_down, acc_b_down, acc_w_up, acc_b_up, cols, col_ok,
        hidden, rank, pid_d == 0, BLOCK_R,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FFNConfig:
    """Tiles of the ADePT launches: ``block_n`` tokens x ``block_d`` columns; prompt tiles ``block_pt x block_pd``;
    ``splits`` token splits of the weight-gradient launch (0: choose from the grid)."""

    block_n: int
    block_d: int
    block_pt: int = 16
    block_pd: int = 64
    num_warps: int = 4
    splits: int = 0


GPU_CONFIG = FFNConfig(block_n=16, block_d=64, block_pt=16, block_pd=64, num_warps=8)
"""The shipped GPU tiles (sm_90 compile stats in ``tests/kernels/test_sm90_compile.py``)."""

GPU_TARGET_WEIGHT_PROGRAMS = 256
"""Weight-gradient programs aimed for on a GPU: at most ``256 / d-chunks`` token splits."""

MIN_TOKENS_PER_SPLIT = 256
"""Each split writes a ``(2 d r + r + d)`` fp32 partial that is read back once; at 256 tokens per split that traffic
stays near a tenth of the split's own reads of ``dY`` and ``E`` (``256 * d * 8`` bytes)."""


MAX_RANK = 64
"""Largest FFN rank the Triton kernels take: the hidden ``[BLOCK_N, BLOCK_R]`` lives in registers, and at
``BLOCK_R = 128`` the weight-gradient kernel spills on sm_90. Larger ranks run on ``backend="torch"``."""


def block_rank(rank: int) -> int:
    """``BLOCK_R``: the whole rank padded to a power of two >= 16 (``tl.dot`` needs K, N >= 16 on GPU)."""
    if rank > MAX_RANK:
        raise ValueError(
            f"w_down (d, r): the Triton ADePT kernels take rank <= {MAX_RANK}, got {rank}; use backend='torch'"
        )
    return max(16, triton.next_power_of_2(rank))


def default_config(num_tokens: int, hidden: int, interpret: bool) -> FFNConfig:
    """Heuristic tile choice: ``GPU_CONFIG`` on a GPU; few, large programs under the interpreter."""
    if not interpret:
        return GPU_CONFIG
    return FFNConfig(
        block_n=min(128, max(16, triton.next_power_of_2(max(num_tokens, 1)))),
        block_d=min(1024, max(16, triton.next_power_of_2(hidden))),
        block_pt=64,
        block_pd=min(1024, max(16, triton.next_power_of_2(hidden))),
        splits=1,
    )


def weight_splits(num_tokens: int, hidden: int, config: FFNConfig) -> int:
    """Token splits of the weight-gradient launch on a GPU: enough programs to fill the device, but no split
    shorter than ``MIN_TOKENS_PER_SPLIT`` tokens. Independent of ``block_n``."""
    tiles_d = triton.cdiv(hidden, config.block_d)
    return max(1, min(num_tokens // MIN_TOKENS_PER_SPLIT, GPU_TARGET_WEIGHT_PROGRAMS // tiles_d))


def _prompt_tiles(num_prompt: int, hidden: int, config: FFNConfig) -> int:
    return triton.cdiv(num_prompt, config.block_pt) * triton.cdiv(hidden, config.block_pd)


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------


def adept_embed_fwd(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    prompt: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    w_up: torch.Tensor,
    b_up: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout_p: float,
    seed: int,
    config: FFNConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused forward (arguments validated by ``prompt_ops.adept_embed``); ``dropout_p=0`` is eval."""
    num_batch, seq_len = input_ids.shape
    num_prompt, hidden = prompt.shape
    rank = w_down.shape[1]
    total = num_prompt + seq_len
    b_down, b_up = b_down.contiguous(), b_up.contiguous()  # the kernels read the biases at unit stride
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    out = torch.empty((num_batch, total, hidden), dtype=weight.dtype, device=weight.device)
    mask_out = torch.empty((num_batch, total), dtype=mask_dtype, device=weight.device)
    if num_batch == 0:
        return out, mask_out
    config = config or default_config(num_batch * seq_len, hidden, interpreting())
    token_tiles = triton.cdiv(num_batch * seq_len, config.block_n)
    mask = attention_mask if attention_mask is not None else input_ids
    _adept_embed_fwd_kernel[(token_tiles + _prompt_tiles(num_prompt, hidden, config),)](
        out, mask_out, input_ids, weight, prompt, w_down, b_down, w_up, b_up, mask,
        num_batch, num_prompt, seq_len, hidden, rank, weight.shape[0], float(dropout_p), int(seed), token_tiles,
        input_ids.stride(0), input_ids.stride(1), weight.stride(0), weight.stride(1),
        prompt.stride(0), prompt.stride(1), w_down.stride(0), w_down.stride(1), w_up.stride(0), w_up.stride(1),
        mask.stride(0), mask.stride(1),
        HAS_MASK=attention_mask is not None, HAS_DROPOUT=dropout_p > 0.0,
        BLOCK_N=config.block_n, BLOCK_D=config.block_d, BLOCK_R=block_rank(rank),
        BLOCK_PT=config.block_pt, BLOCK_PD=config.block_pd, num_warps=config.num_warps,
    )  # fmt: skip
    return out, mask_out


def adept_embed_bwd(
    grad_out: torch.Tensor,
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    w_up: torch.Tensor,
    num_prompt: int,
    dropout_p: float,
    seed: int,
    config: FFNConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused backward. Returns fp32 ``d_prompt (m, d)`` and the flat fp32 buffer
    ``[d_w_down (d*r) | d_b_down (r) | d_w_up (r*d) | d_b_up (d)]`` (``prompt_ops.ops.adept_embed.split_ffn_grads``)."""
    num_batch, seq_len = input_ids.shape
    hidden, rank = w_down.shape
    device = grad_out.device
    b_down = b_down.contiguous()  # the kernel reads the bias at unit stride
    num_tokens = num_batch * seq_len
    interpret = interpreting()
    config = config or default_config(num_tokens, hidden, interpret)
    slab = 2 * hidden * rank + rank + hidden
    if num_batch == 0:  # nothing flows back
        return torch.zeros((num_prompt, hidden), dtype=torch.float32, device=device), torch.zeros(
            slab, dtype=torch.float32, device=device
        )
    grad_prompt = torch.empty((num_prompt, hidden), dtype=torch.float32, device=device)  # every row written below

    token_tiles = triton.cdiv(num_tokens, config.block_n)
    act = torch.empty((num_tokens, rank), dtype=torch.float32, device=device)
    grad_h = torch.empty((num_tokens, rank), dtype=torch.float32, device=device)
    block_r = block_rank(rank)
    grid = (token_tiles + _prompt_tiles(num_prompt, hidden, config),)
    if grid[0] > 0:
        _adept_embed_bwd_hidden_kernel[grid](
            act, grad_h, grad_prompt, grad_out, input_ids, weight, w_down, b_down, w_up,
            num_batch, num_prompt, seq_len, hidden, rank, weight.shape[0], float(dropout_p), int(seed), token_tiles,
            grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), input_ids.stride(0), input_ids.stride(1),
            weight.stride(0), weight.stride(1), w_down.stride(0), w_down.stride(1), w_up.stride(0), w_up.stride(1),
            HAS_DROPOUT=dropout_p > 0.0, BLOCK_N=config.block_n, BLOCK_D=config.block_d, BLOCK_R=block_r,
            BLOCK_PT=config.block_pt, BLOCK_PD=config.block_pd, num_warps=config.num_warps,
        )  # fmt: skip
    if num_tokens == 0:
        return grad_prompt, torch.zeros(slab, dtype=torch.float32, device=device)

    tiles_d = triton.cdiv(hidden, config.block_d)
    tokens_per_split = triton.cdiv(num_tokens, config.splits or weight_splits(num_tokens, hidden, config))
    splits = triton.cdiv(num_tokens, tokens_per_split)
    parts = torch.empty((splits, slab), dtype=torch.float32, device=device)
    _adept_embed_bwd_weights_kernel[(tiles_d, splits)](
        parts, act, grad_h, grad_out, input_ids, weight,
        num_batch, num_prompt, seq_len, hidden, rank, weight.shape[0], tokens_per_split,
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), input_ids.stride(0), input_ids.stride(1),
        weight.stride(0), weight.stride(1),
        BLOCK_N=config.block_n, BLOCK_D=config.block_d, BLOCK_R=block_r, num_warps=config.num_warps,
    )  # fmt: skip
    return grad_prompt, sum_partials(parts) if splits > 1 else parts[0]


@triton.jit
def _dropout_scale_kernel(out_ptr, num_tokens, rank, dropout_p, seed, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    r = tl.arange(0, BLOCK_R).to(tl.int64)
    scale = dropout_scale(seed, n, rank, dropout_p, BLOCK_R)
    tl.store(out_ptr + n[:, None] * rank + r[None, :], scale, mask=(n < num_tokens)[:, None] & (r < rank)[None, :])


def dropout_multipliers(num_tokens: int, rank: int, dropout_p: float, seed: int, device) -> torch.Tensor:
    """The ``(N, r)`` inverted-dropout multipliers the kernels use for ``seed`` (for tests and inspection)."""
    out = torch.empty((num_tokens, rank), dtype=torch.float32, device=device)
    block_n = 128
    _dropout_scale_kernel[(triton.cdiv(num_tokens, block_n),)](
        out, num_tokens, rank, float(dropout_p), int(seed), BLOCK_N=block_n, BLOCK_R=block_rank(rank)
    )
    return out


def sm90_specs():
    """The shipped GPU configs of the three ADePT kernels, for ``prompt_ops.kernels.compile_check``."""
    from prompt_ops.kernels.compile_check import KernelSpec

    config = GPU_CONFIG
    tiles = {"BLOCK_N": config.block_n, "BLOCK_D": config.block_d, "BLOCK_PT": config.block_pt,
             "BLOCK_PD": config.block_pd}  # fmt: skip
    specs = []
    for dtype, block_r in (("fp32", 32), ("fp16", 32), ("bf16", 32), ("bf16", 64)):
        params = {name: "*fp32" for name in ("prompt_ptr", "w_down_ptr", "b_down_ptr", "w_up_ptr", "b_up_ptr")}
        specs.append(
            KernelSpec(
                f"adept_embed_fwd[{dtype},R{block_r}]",
                _adept_embed_fwd_kernel,
                {
                    "out_ptr": f"*{dtype}",
                    "mask_out_ptr": "*i64",
                    "ids_ptr": "*i64",
                    "weight_ptr": f"*{dtype}",
                    "mask_ptr": "*i64",
                    **params,
                },  # fmt: skip
                {"HAS_MASK": True, "HAS_DROPOUT": True, "BLOCK_R": block_r, **tiles},
                config.num_warps,
            )
        )
        specs.append(
            KernelSpec(
                f"adept_embed_bwd_hidden[{dtype},R{block_r}]",
                _adept_embed_bwd_hidden_kernel,
                {
                    "act_ptr": "*fp32",
                    "grad_h_ptr": "*fp32",
                    "grad_prompt_ptr": "*fp32",
                    "grad_out_ptr": f"*{dtype}",
                    "ids_ptr": "*i64",
                    "weight_ptr": f"*{dtype}",
                    "w_down_ptr": "*fp32",
                    "b_down_ptr": "*fp32",
                    "w_up_ptr": "*fp32",
                },  # fmt: skip
                {"HAS_DROPOUT": True, "BLOCK_R": block_r, **tiles},
                config.num_warps,
            )
        )
        specs.append(
            KernelSpec(
                f"adept_embed_bwd_weights[{dtype},R{block_r}]",
                _adept_embed_bwd_weights_kernel,
                {
                    "part_ptr": "*fp32",
                    "act_ptr": "*fp32",
                    "grad_h_ptr": "*fp32",
                    "grad_out_ptr": f"*{dtype}",
                    "ids_ptr": "*i64",
                    "weight_ptr": f"*{dtype}",
                },  # fmt: skip
                {"BLOCK_N": config.block_n, "BLOCK_D": config.block_d, "BLOCK_R": block_r},
                config.num_warps,
            )
        )
    return specs
