"""Wall-clock timing of code that really runs on the CPU (never the Triton interpreter)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

from prompt_ops.ops.validation import check_int


def interleaved_time(fns: Sequence[Callable[[], object]], repeat: int = 20, warmup: int = 3) -> list[dict[str, float]]:
    """Median and 20/80 percentiles of each of ``fns`` in seconds, timed in rounds: each round runs every function
    once, the order rotating from round to round, so that a drift in the machine's speed (load, clocks) falls on all
    of them alike instead of reading as a difference between them. ``warmup`` untimed rounds first."""
    if not isinstance(fns, Sequence) or not fns or not all(callable(fn) for fn in fns):
        raise TypeError(f"fns must be a non-empty sequence of callables taking no arguments, got {fns!r}")
    repeat, warmup = check_int("repeat", repeat, 2), check_int("warmup", warmup, 0)
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for round_ in range(repeat):
        for offset in range(len(fns)):
            index = (round_ + offset) % len(fns)
            start = time.perf_counter()
            fns[index]()
            samples[index].append(time.perf_counter() - start)
    return [_quantiles(times) for times in samples]


def _quantiles(samples: list[float]) -> dict[str, float]:
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return {"median": statistics.median(samples), "p20": deciles[1], "p80": deciles[7]}


def cpu_time(fn: Callable[[], object], repeat: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median and 20/80 percentiles of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    return interleaved_time([fn], repeat, warmup)[0]
