"""Launches and bytes of Triton kernels run by the interpreter (``TRITON_INTERPRET=1``), plus a bounds checker.

Every ``tl.load``/``tl.store``/atomic goes through the interpreter builder's ``create_masked_load``,
``create_masked_store``, ``create_atomic_rmw`` and ``create_atomic_cas``. Wrapping them gives, per launch:

- ``requested`` bytes: active lanes x element size (a value re-read by several programs counts each time);
- ``unique`` bytes: distinct addresses x element size, about the HBM traffic when re-reads hit in L2;
- a bounds check: every active address must lie inside the storage of one of the kernel's tensor arguments. The
  interpreter itself reads garbage or corrupts memory silently on an unmasked out-of-bounds access.

These patch private interpreter internals of the pinned triton release; ``tests/profiling`` fails loudly when the
names move.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses

import numpy as np
import torch
from torch.utils._python_dispatch import _disable_current_modes

_HOOKED = ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas")


class OutOfBoundsError(AssertionError):
    """A kernel touched memory outside every tensor argument."""


@dataclasses.dataclass
class KernelTraffic:
    launches: int = 0
    load_bytes: int = 0
    store_bytes: int = 0
    atomic_bytes: int = 0
    load_unique_bytes: int = 0
    store_unique_bytes: int = 0
    atomic_unique_bytes: int = 0

    @property
    def requested_bytes(self) -> int:
        return self.load_bytes + self.store_bytes + self.atomic_bytes

    @property
    def unique_bytes(self) -> int:
        return self.load_unique_bytes + self.store_unique_bytes + self.atomic_unique_bytes


_BITMAP_LIMIT = 1 << 27  # elements; larger storages (lazily allocated giant tables) fall back to np.unique


def _count_distinct(addresses: np.ndarray, size: int, storages: set[tuple[int, int]]) -> int:
    """Distinct addresses, counted storage by storage with a bitmap (sorting tens of millions is slow)."""
    distinct, counted = 0, 0
    for low, high in storages:
        inside = addresses[(addresses >= low) & (addresses < high)]
        if not inside.size:
            continue
        counted += inside.size
        span = (high - low) // size + 1
        if span > _BITMAP_LIMIT:
            distinct += np.unique(inside).size
            continue
        seen = np.zeros(span, dtype=bool)
        seen[(inside - np.uint64(low)) // np.uint64(size)] = True
        distinct += int(seen.sum())
    if counted != addresses.size:  # addresses outside every storage (bounds checking off): count them as they are
        outside = np.ones(addresses.shape, dtype=bool)
        for low, high in storages:
            outside &= (addresses < low) | (addresses >= high)
        distinct += np.unique(addresses[outside]).size
    return distinct


@contextlib.contextmanager
def kernel_traffic(check_bounds: bool = True):
    """``with kernel_traffic() as k: launch()`` then ``k.launches``, ``k.unique_bytes``, ``k.requested_bytes``.

    Raises :class:`OutOfBoundsError` (wrapped by the interpreter in its ``InterpreterError``) on the first access
    outside the kernel's tensor arguments when ``check_bounds``.
    """
    import triton
    import triton.runtime.interpreter as interp

    if not triton.knobs.runtime.interpret:
        raise RuntimeError("kernel_traffic counts interpreted kernels: set TRITON_INTERPRET=1 before importing triton")
    builder, executor = interp.interpreter_builder, interp.GridExecutor
    original = {name: getattr(builder, name) for name in _HOOKED}
    original_init, original_restore = executor._init_args_hst, executor._restore_args_dev
    stats = KernelTraffic()
    addresses: dict[tuple[str, int], list[np.ndarray]] = collections.defaultdict(list)
    ranges: list[tuple[int, int]] = []  # the current launch's tensor storages
    all_ranges: set[tuple[int, int]] = set()

    def init_args(self, args, kwargs):
        with _disable_current_modes():  # the interpreter's host copies are not kernel traffic
            host_args, host_kwargs = original_init(self, args, kwargs)
        stats.launches += 1
        ranges.clear()
        for arg in [*host_args, *host_kwargs.values()]:
            arg = getattr(arg, "base", arg)  # a TensorDescriptor's tensor
            if isinstance(arg, torch.Tensor):
                storage = arg.untyped_storage()
                ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
        all_ranges.update(ranges)
        return host_args, host_kwargs

    def account(kind, ptrs, mask):
        size = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
        flat = np.asarray(ptrs.data, dtype=np.uint64)
        if mask is not None:
            active = flat[np.broadcast_to(np.asarray(mask.data, dtype=bool), flat.shape)]
        else:
            active = flat.ravel()
        setattr(stats, f"{kind}_bytes", getattr(stats, f"{kind}_bytes") + active.size * size)
        addresses[(kind, size)].append(active.copy())
        if check_bounds and active.size and ranges:
            inside = np.zeros(active.shape, dtype=bool)
            for low, high in ranges:
                inside |= (active >= low) & (active + size <= high)
            if not inside.all():
                raise OutOfBoundsError(f"out-of-bounds {kind}: {(~inside).sum()} of {active.size} active lanes")

    def load(ptrs, mask, *args, **kwargs):
        account("load", ptrs, mask)
        return original["create_masked_load"](ptrs, mask, *args, **kwargs)

    def store(ptrs, value, mask, *args, **kwargs):
        account("store", ptrs, mask)
        return original["create_masked_store"](ptrs, value, mask, *args, **kwargs)

    def atomic_rmw(op, ptrs, value, mask, *args, **kwargs):
        account("atomic", ptrs, mask)
        return original["create_atomic_rmw"](op, ptrs, value, mask, *args, **kwargs)

    def atomic_cas(ptrs, *args, **kwargs):
        account("atomic", ptrs, None)
        return original["create_atomic_cas"](ptrs, *args, **kwargs)

    def restore_args(self, *args, **kwargs):
        with _disable_current_modes():
            return original_restore(self, *args, **kwargs)

    builder.create_masked_load, builder.create_masked_store = load, store
    builder.create_atomic_rmw, builder.create_atomic_cas = atomic_rmw, atomic_cas
    executor._init_args_hst, executor._restore_args_dev = init_args, restore_args
    try:
        yield stats
        for (kind, size), chunks in addresses.items():
            distinct = _count_distinct(np.concatenate(chunks), size, all_ranges) if chunks else 0
            setattr(stats, f"{kind}_unique_bytes", getattr(stats, f"{kind}_unique_bytes") + distinct * size)
    finally:
        for name, fn in original.items():
            setattr(builder, name, fn)
        executor._init_args_hst, executor._restore_args_dev = original_init, original_restore
