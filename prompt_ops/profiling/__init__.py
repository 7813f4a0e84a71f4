"""Measurement tools used by ``bench/`` and by users (DESIGN.md §5).

- :class:`EagerTraffic`: launches and bytes read/written by eager PyTorch code (a ``TorchDispatchMode``).
- :func:`kernel_traffic`: launches and bytes of Triton kernels under the interpreter, with a bounds checker.
- :mod:`prompt_ops.profiling.ideal`: the ideal byte count of each op (every input read once, every output written
  once).
- :func:`project_h100`: the labelled H100 time projection from bytes, flops and launches.
- :func:`cpu_time`: wall-clock quantiles of code that really runs on the CPU; :func:`interleaved_time` of several
  pieces of code timed in alternating rounds (a comparison the machine's drift does not bias).

Only :mod:`prompt_ops.profiling.kernel` imports triton, and only when used.
"""

from prompt_ops.profiling.eager import EagerTraffic
from prompt_ops.profiling.projection import H100, project_h100
from prompt_ops.profiling.timer import cpu_time, interleaved_time


def kernel_traffic(check_bounds: bool = True):
    """See :func:`prompt_ops.profiling.kernel.kernel_traffic` (imported lazily: it needs triton)."""
    if not isinstance(check_bounds, bool):
        raise TypeError(f"check_bounds must be a bool, got {type(check_bounds).__name__}")
    from prompt_ops.profiling.kernel import kernel_traffic as _kernel_traffic

    return _kernel_traffic(check_bounds=check_bounds)


__all__ = ["EagerTraffic", "H100", "cpu_time", "interleaved_time", "kernel_traffic", "project_h100"]
