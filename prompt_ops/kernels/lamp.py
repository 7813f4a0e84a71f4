"""LAMP prompt (Lan et al., NAACL 2025 as defined in DESIGN.md §7): factor gradients and launchers.

The prompt is ``P = avgpool_k((U * q) @ V)`` with ``U (l, r)``, ``q (r,)``, ``V (r, d)``, ``m = l / k`` rows. Since
pooling is linear, ``P = (Ubar * q) @ V`` with ``Ubar = avgpool_k(U)`` ``(m, r)``: the forward never builds the
``(l, d)`` prompt. It runs inside the embedding kernel of ``prompt_ops.kernels.dept_embed`` (``PromptFactors``), one
launch for ``lamp_embed``; ``lamp_prompt`` is the same kernel with no tokens.

Backward from ``dP (m, d)`` (for ``lamp_embed``, ``dP = sum_b dX[b, :m]``, summed by the embedding backward kernel)::

    dV    = (Ubar * q)^T @ dP                (r, d)
    dUq   = dP @ V^T                         (m, r)    gradient of Ubar * q
    dq    = sum_j dUq[j] * Ubar[j]           (r,)
    dU[i] = dUq[i // k] * q / k              (l, r)    un-pooling spreads each row's gradient over its window

One program runs it: it streams ``dP`` and ``V`` over d-chunks, storing ``dV`` chunk by chunk and accumulating
``dUq`` in registers. The sizes are tiny (``m, r`` in the tens), so one program is enough.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from prompt_ops.kernels.common import interpreting, load_tile
from prompt_ops.kernels.dept_embed import PromptFactors, dept_embed_bwd, dept_embed_fwd

MAX_TILE = 4096
"""The one gradient program holds ``[BLOCK_M, BLOCK_R]`` tiles in registers: pooled rows x rank, padded, at most
4096 elements (e.g. 256 x 16, 128 x 32, 64 x 64). sm_90 compile stats chose the column chunk and warps: 32 columns
for tiles up to 1024 elements, 16 above, 8 warps, no spills."""


@triton.jit
def _lamp_factor_grad_kernel(
    grad_u_ptr,  # (l, r) fp32
    grad_q_ptr,  # (r,) fp32
    grad_v_ptr,  # (r, d) fp32
    grad_p_ptr,  # (m, d) any float dtype and strides
    u_ptr,
    q_ptr,
    v_ptr,
    num_rows,
    hidden,
    rank,
    pool,
    stride_g_m,
    stride_g_d,
    stride_u_l,
    stride_u_r,
    stride_q,
    stride_v_r,
    stride_v_d,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    rows = tl.arange(0, BLOCK_M).to(tl.int64)  # [BLOCK_M] pooled prompt rows
    row_ok = rows < num_rows
    r = tl.arange(0, BLOCK_R).to(tl.int64)  # [BLOCK_R]
    r_ok = r < rank
    tile_ok = row_ok[:, None] & r_ok[None, :]
    pooled = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for i in range(0, pool):
        pooled += load_tile(u_ptr, rows * pool + i, row_ok, r, r_ok, stride_u_l, stride_u_r)
    pooled = pooled / pool  # [BLOCK_M, BLOCK_R] Ubar
    q = tl.load(q_ptr + r * stride_q, mask=r_ok, other=0.0).to(tl.float32)  # [BLOCK_R]
    left = pooled * q[None, :]  # [BLOCK_M, BLOCK_R] Ubar * q

    grad_left = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for d0 in range(0, hidden, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        col_ok = cols < hidden
        grad_p = load_tile(grad_p_ptr, rows, row_ok, cols, col_ok, stride_g_m, stride_g_d)  # [BLOCK_M, BLOCK_D]
        v = load_tile(v_ptr, r, r_ok, cols, col_ok, stride_v_r, stride_v_d)  # [BLOCK_R, BLOCK_D]
        grad_v = tl.dot(tl.trans(left), grad_p, input_precision="ieee")  # [BLOCK_R, BLOCK_D]
        tl.store(grad_v_ptr + r[:, None] * hidden + cols[None, :], grad_v, mask=r_ok[:, None] & col_ok[None, :])
        grad_left += tl.dot(grad_p, tl.trans(v), input_precision="ieee")  # [BLOCK_M, BLOCK_R]

    tl.store(grad_q_ptr + r, tl.sum(grad_left * pooled, axis=0), mask=r_ok)
    grad_u = grad_left * q[None, :] / pool  # [BLOCK_M, BLOCK_R], the same for every row of a window
    for i in range(0, pool):
        tl.store(grad_u_ptr + (rows * pool + i)[:, None] * rank + r[None, :], grad_u, mask=tile_ok)


def block_sizes(num_rows: int, rank: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_R, BLOCK_D)`` for the gradient program: rows and rank padded to powers of two >= 16
    (``tl.dot`` on GPU); the interpreter takes wide column chunks."""
    block_m, block_r = max(16, triton.next_power_of_2(num_rows)), max(16, triton.next_power_of_2(rank))
    if block_m * block_r > MAX_TILE:
        raise ValueError(
            f"u (l, r) and pool: the Triton LAMP kernels take (pooled prompt rows, rank) up to {MAX_TILE} padded "
            f"elements, got ({num_rows}, {rank}); use backend='torch'"
        )
    if interpreting():
        return block_m, block_r, 256
    return block_m, block_r, 32 if block_m * block_r <= 1024 else 16


def lamp_factor_grads(
    grad_prompt: torch.Tensor, factors: PromptFactors
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 ``(dU, dq, dV)`` from the pooled prompt's gradient ``(m, d)``, in one launch."""
    u, q, v, pool = factors.u, factors.q, factors.v, factors.pool
    num_rows, hidden = grad_prompt.shape
    grads = [torch.empty(t.shape, dtype=torch.float32, device=grad_prompt.device) for t in (u, q, v)]
    if grad_prompt.numel() == 0:
        return tuple(g.zero_() for g in grads)
    block_m, block_r, block_d = block_sizes(num_rows, u.shape[1])
    _lamp_factor_grad_kernel[(1,)](
        *grads, grad_prompt, u, q, v, num_rows, hidden, u.shape[1], pool,
        grad_prompt.stride(0), grad_prompt.stride(1), u.stride(0), u.stride(1), q.stride(0), v.stride(0),
        v.stride(1), BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_R=block_r, num_warps=8,
    )  # fmt: skip
    return tuple(grads)


def lamp_prompt_fwd(factors: PromptFactors) -> torch.Tensor:
    """The pooled prompt ``(m, d)`` in fp32: the embedding kernel with a batch of one empty sequence."""
    no_tokens = torch.empty((1, 0), dtype=torch.int64, device=factors.u.device)
    placeholder_table = factors.v.new_empty((0, 0))  # no tokens are gathered; sets the output dtype
    out, _ = dept_embed_fwd(no_tokens, placeholder_table, factors, None, None, None, 0.0)
    return out[0]


def lamp_embed_bwd(grad_out: torch.Tensor, factors: PromptFactors):
    """``lamp_embed``'s backward in two launches: the batch sum of the prompt rows, then the factor gradients."""
    grad_prompt, _, _ = dept_embed_bwd(grad_out, None, None, factors.num_rows, 0.0)
    return lamp_factor_grads(grad_prompt, factors)


def sm90_specs():
    """The factor-gradient kernel at every largest tile shape and the default one (l=100, k=2, r=8: 64 x 16)."""
    from prompt_ops.kernels.compile_check import KernelSpec

    pointers = {name: "*fp32" for name in ("grad_u_ptr", "grad_q_ptr", "grad_v_ptr", "u_ptr", "q_ptr", "v_ptr")}
    return [
        KernelSpec(
            f"lamp_factor_grad[M{block_m},R{block_r}]",
            _lamp_factor_grad_kernel,
            {**pointers, "grad_p_ptr": "*fp32"},
            {"BLOCK_M": block_m, "BLOCK_D": 32 if block_m * block_r <= 1024 else 16, "BLOCK_R": block_r},
            8,
        )
        for block_m, block_r in ((64, 16), (256, 16), (128, 32), (64, 64))
    ]
