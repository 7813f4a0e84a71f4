"""Small helpers shared by the op modules."""

import torch


def accumulate_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The precision the torch backend accumulates in: fp32, or fp64 when any input is fp64 (gradcheck)."""
    acc = torch.float32
    for dtype in dtypes:
        acc = torch.promote_types(acc, dtype)
    return acc
