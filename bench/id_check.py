"""What the default token-id check costs in training: a short loop of DePT on a small model, check on and off.

``check_ids`` (``prompt_ops.ops.validation.check_ids_in_range``) reads the smallest and largest id on the host: on a
GPU that is a device sync in every forward, so the CPU cannot queue the next kernels while the GPU works (torch's own
``nn.Embedding`` checks on the device instead, asynchronously). The loop below runs ``steps`` training steps back to
back and synchronises once at the end, so the sync the check adds is what the two timings differ by. Settings
alternate (on, off, on, off, ...) so that drift (clocks, caches) falls on both alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from prompt_ops.ops.backend import CHECK_IDS_ENV

COST_THRESHOLD_PCT = 2.0
"""A check that adds less than this share to a training step is cheap enough to stay on by default."""


@dataclasses.dataclass
class IdCheckCost:
    """Milliseconds per training step (median over ``repeats`` loops of ``steps`` steps, with 20/80 percentiles)
    with the check on and off, and the host syncs one step makes in each setting (CUDA only; ``None`` elsewhere)."""

    model: str
    method: str
    device: str
    backend: str
    batch: int
    seq_len: int
    steps: int
    repeats: int
    on_ms: float
    on_p20_ms: float
    on_p80_ms: float
    off_ms: float
    off_p20_ms: float
    off_p80_ms: float
    syncs_per_step_on: int | None
    syncs_per_step_off: int | None

    @property
    def cost_ms(self) -> float:
        return self.on_ms - self.off_ms

    @property
    def cost_pct(self) -> float:
        return 100 * self.cost_ms / self.off_ms

    def supported_default(self) -> str:
        """The default this figure supports: keep the check on when it costs under :data:`COST_THRESHOLD_PCT`."""
        return "on" if self.cost_pct < COST_THRESHOLD_PCT else "off"

    def record(self) -> dict:
        """The fields, the cost, the threshold and the default it supports: the GPU results' ``check_ids`` entry."""
        return {**dataclasses.asdict(self), "cost_ms": self.cost_ms, "cost_pct": self.cost_pct,
                "threshold_pct": COST_THRESHOLD_PCT, "supported_default": self.supported_default()}  # fmt: skip


@contextlib.contextmanager
def check_ids_setting(enabled: bool) -> Iterator[None]:
    """``PROMPT_OPS_CHECK_IDS`` set for the block (read at every call), then restored exactly (or removed)."""
    before = os.environ.get(CHECK_IDS_ENV)
    os.environ[CHECK_IDS_ENV] = "1" if enabled else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[CHECK_IDS_ENV]
        else:
            os.environ[CHECK_IDS_ENV] = before


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loop_ms(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Milliseconds per step of ``steps`` steps queued back to back, one sync at the end."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / steps * 1e3


def _syncs_per_step(step: Callable[[], None], device: torch.device) -> int | None:
    """Synchronising CUDA calls in one step, as torch's sync debug mode reports them (a warning each)."""
    if device.type != "cuda":
        return None
    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(before)
    return sum("synchronizing" in str(w.message).lower() for w in caught)


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return statistics.median(ordered), pick(0.2), pick(0.8)


def measure_id_check(
    model: nn.Module,
    model_name: str,
    batch: int = 8,
    seq_len: int = 128,
    steps: int = 20,
    repeats: int = 5,
    backend: str | None = None,
) -> IdCheckCost:
    """Train DePT (its paper's settings) on the causal LM ``model`` (its device as it is) for ``repeats`` loops of
    ``steps`` steps per setting, after two warm-up steps each. ``backend=None``: Triton on CUDA, torch elsewhere.
    The model is left as it was (frozen parameters and mode restored) and so is ``PROMPT_OPS_CHECK_IDS``."""
    from prompt_ops.models import DePTConfig, attach

    for name, value, low in (
        ("batch", batch, 1),
        ("seq_len", seq_len, 1),
        ("steps", steps, 1),
        ("repeats", repeats, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    device = next(model.parameters()).device
    backend = backend or ("triton" if device.type == "cuda" else "torch")
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(1, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones(batch, seq_len, dtype=torch.int64, device=device)
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    try:
        tuned = attach(model, DePTConfig(), backend=backend).train()
        optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            tuned(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
            optimizer.step()

        times: dict[bool, list[float]] = {True: [], False: []}
        syncs: dict[bool, int | None] = {}
        for enabled in (True, False):
            with check_ids_setting(enabled):
                step(), step()  # warm-up: kernels compiled, optimizer state allocated
                syncs[enabled] = _syncs_per_step(step, device)
        for _ in range(repeats):
            for enabled in (True, False):
                with check_ids_setting(enabled):
                    times[enabled].append(_loop_ms(step, steps, device))
    finally:
        model.train(was_training)
        for parameter, flag in zip(model.parameters(), grad_flags, strict=True):
            parameter.requires_grad_(flag)
    (on, on20, on80), (off, off20, off80) = _quantiles(times[True]), _quantiles(times[False])
    return IdCheckCost(
        model=model_name, method="dept", device=str(device), backend=backend, batch=batch, seq_len=seq_len,
        steps=steps, repeats=repeats, on_ms=on, on_p20_ms=on20, on_p80_ms=on80, off_ms=off, off_p20_ms=off20,
        off_p80_ms=off80, syncs_per_step_on=syncs[True], syncs_per_step_off=syncs[False],
    )  # fmt: skip
