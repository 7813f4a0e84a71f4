"""Wall-clock timing of code that really runs on the CPU (never the Triton interpreter)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def cpu_time(fn: Callable[[], object], repeat: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median and 20/80 percentiles of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    if repeat < 2:
        raise ValueError(f"repeat must be >= 2, got {repeat}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return {"median": statistics.median(samples), "p20": deciles[1], "p80": deciles[7]}
