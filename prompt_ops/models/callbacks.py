"""``EfficiencyCallback``: step time, tokens/s and peak memory of a ``transformers.Trainer`` run, warm-up excluded.

    callback = EfficiencyCallback(tokens_per_step=batch * seq_len, warmup_steps=2)
    Trainer(model=tuned, args=args, train_dataset=data, callbacks=[callback]).train()
    print(callback.summary())  # {"steps", "step_ms", "step_p20_ms", "step_p80_ms", "tokens_per_s", "peak_..."}

Each step is timed from ``on_step_begin`` to ``on_step_end`` (forward, backward and the optimizer; synchronised on
CUDA). Peak allocated and reserved memory are read with ``torch.cuda.max_memory_*`` when a GPU is in use, and are
None on the CPU.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import TrainerCallback

from prompt_ops.ops.validation import check_int


class EfficiencyCallback(TrainerCallback):
    def __init__(self, tokens_per_step: int, warmup_steps: int = 2):
        self.tokens_per_step = check_int("tokens_per_step", tokens_per_step, 1)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.step_seconds: list[float] = []
        self._seen = 0
        self._start = 0.0
        self._peak_allocated: float | None = None
        self._peak_reserved: float | None = None

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        elapsed = time.perf_counter() - self._start
        self._seen += 1
        if self._seen <= self.warmup_steps:
            return
        self.step_seconds.append(elapsed)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            allocated, reserved = torch.cuda.max_memory_allocated() / 1e6, torch.cuda.max_memory_reserved() / 1e6
            self._peak_allocated = max(self._peak_allocated or 0.0, allocated)
            self._peak_reserved = max(self._peak_reserved or 0.0, reserved)

    def summary(self) -> dict[str, float | int | None]:
        """Median step time with 20/80 percentiles (ms), tokens/s at the median, peak memory (MB, CUDA only)."""
        if len(self.step_seconds) < 2:
            raise ValueError(
                f"need at least 2 timed steps after {self.warmup_steps} warm-up steps, got {len(self.step_seconds)}"
            )
        median = statistics.median(self.step_seconds)
        deciles = statistics.quantiles(self.step_seconds, n=10, method="inclusive")
        return {
            "steps": len(self.step_seconds),
            "step_ms": median * 1e3,
            "step_p20_ms": deciles[1] * 1e3,
            "step_p80_ms": deciles[7] * 1e3,
            "tokens_per_s": self.tokens_per_step / median,
            "peak_allocated_mb": self._peak_allocated,
            "peak_reserved_mb": self._peak_reserved,
        }
