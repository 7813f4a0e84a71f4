"""What Triton can run here: availability and interpreter mode, answered without launching anything.

Both answers are fixed for the life of the process, so ``torch.compile`` treats them as constants instead of
tracing into triton's C++ environment reader.
"""

from __future__ import annotations

import importlib.util
import os

import torch


@torch.compiler.assume_constant_result
def triton_installed() -> bool:
    """True when the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


@torch.compiler.assume_constant_result
def interpreting() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (``TRITON_INTERPRET=1``).

    Reads the environment before triton is imported, and triton's own switch after, so the answer is the one the
    launch will see.
    """
    import sys

    if "triton" not in sys.modules:
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    import triton

    return bool(triton.knobs.runtime.interpret)
