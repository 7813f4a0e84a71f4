"""A labelled H100 time projection for memory-bound ops (DESIGN.md §5). A model, not a measurement.

``t = max(bytes / HBM_bandwidth, flops / peak) + launches * launch_cost``. A lower bound: small kernels are
launch- and tail-dominated, and eager PyTorch also pays CPU dispatch per op.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

PROJECTION_LABEL = "H100 projection (model: max(bytes/BW, flops/peak) + launches x launch cost; not a measurement)"


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    hbm_bytes_per_s: float
    fp32_flops_per_s: float
    launch_seconds: float


H100 = Accelerator(name="H100 SXM", hbm_bytes_per_s=3.35e12, fp32_flops_per_s=67e12, launch_seconds=4e-6)
"""HBM3 3.35 TB/s, fp32 FMA ~67 TFLOP/s (our dots are fp32 ``ieee``), ~4 us per launch."""


def project_h100(bytes_moved: int, flops: int, launches: int, device: Accelerator = H100) -> float:
    """Projected seconds on ``device``: ``bytes_moved``, ``flops`` and ``launches`` are finite numbers >= 0."""
    if not isinstance(device, Accelerator):
        raise TypeError(f"device must be a prompt_ops.profiling.projection.Accelerator, got {type(device).__name__}")
    for name, value in (("bytes_moved", bytes_moved), ("flops", flops), ("launches", launches)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number >= 0, got {type(value).__name__}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return max(bytes_moved / device.hbm_bytes_per_s, flops / device.fp32_flops_per_s) + launches * device.launch_seconds
