"""Backend selection shared by every functional entry (DESIGN.md §2).

``backend="auto" | "triton" | "torch"``; ``None`` reads ``PROMPT_OPS_BACKEND`` (default ``auto``). ``auto`` picks
``triton`` for CUDA tensors and ``torch`` (an efficient eager implementation) for everything else.
"""

from __future__ import annotations

import os

import torch

from prompt_ops.kernels import runtime

BACKENDS = ("auto", "triton", "torch")
BACKEND_ENV = "PROMPT_OPS_BACKEND"
CHECK_IDS_ENV = "PROMPT_OPS_CHECK_IDS"


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Return ``"triton"`` or ``"torch"`` for tensors on ``device``, or raise a clear error."""
    source = "backend"
    if backend is None:
        backend, source = os.environ.get(BACKEND_ENV, "auto"), f"${BACKEND_ENV}"
    if backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and runtime.triton_installed() else "torch"
    if backend == "triton":
        if not runtime.triton_installed():
            raise RuntimeError(
                "backend='triton' needs the triton package, which is not installed "
                "(pip install triton on Linux x86-64), or use backend='torch'"
            )
        if device.type != "cuda" and not runtime.interpreting():
            raise ValueError(
                f"backend='triton' runs on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1 set before "
                f"triton is imported); the tensors are on {device}. Use backend='torch' or 'auto'."
            )
    return backend


def resolve_check_ids(check_ids: bool | None) -> bool:
    """``check_ids=None`` reads ``PROMPT_OPS_CHECK_IDS`` (``0`` switches the token-id range check off)."""
    if check_ids is None:
        return os.environ.get(CHECK_IDS_ENV, "1") != "0"
    if not isinstance(check_ids, bool):
        raise TypeError(f"check_ids must be a bool or None, got {type(check_ids).__name__}")
    return check_ids
