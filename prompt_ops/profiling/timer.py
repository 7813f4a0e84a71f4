"""Wall-clock timing of code that really runs on the CPU (never the Triton interpreter)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from prompt_ops.ops.validation import check_int


def cpu_time(fn: Callable[[], object], repeat: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median and 20/80 percentiles of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    repeat, warmup = check_int("repeat", repeat, 2), check_int("warmup", warmup, 0)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return {"median": statistics.median(samples), "p20": deciles[1], "p80": deciles[7]}
