"""Launches and bytes of Triton kernels run by the interpreter (``TRITON_INTERPRET=1``), plus a bounds checker.

Every ``tl.load``/``tl.store``/atomic goes through the interpreter builder's ``create_masked_load``,
``create_masked_store``, ``create_atomic_rmw`` and ``create_atomic_cas``. Wrapping them gives, per launch:

- ``requested`` bytes: active lanes x element size (a value re-read by several programs counts each time);
- ``unique`` bytes: distinct elements touched x element size, about the HBM traffic when re-reads hit in L2. An
  element is a (tensor storage, offset) pair, not a raw address: every storage a launch receives stays referenced
  until the counting ends, and each access is attributed to its storage when it happens. Counting raw addresses made
  the figure depend on the allocator: a buffer freed between two launches (EPT's intermediates) and a later output
  placed over it were merged or, when the ranges overlapped partly, counted twice, so one shape gave different
  counts from one process to the next;
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


def _count_distinct(offsets: np.ndarray, span: int) -> int:
    """Distinct values among ``offsets`` in ``[0, span)``, with a bitmap (sorting tens of millions is slow)."""
    if span > _BITMAP_LIMIT:
        return int(np.unique(offsets).size)
    seen = np.zeros(span, dtype=bool)
    seen[offsets] = True
    return int(seen.sum())


@dataclasses.dataclass(frozen=True)
class _Storage:
    """One tensor storage a launch received: its identity while counting, its address range, and a reference that
    keeps it alive (so that no later allocation can take its addresses while the counting lasts)."""

    key: int
    low: int
    high: int
    storage: torch.UntypedStorage


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
    # (kind, element size, storage key or None for an address outside every storage) -> offsets (or addresses)
    touched: dict[tuple[str, int, int | None], list[np.ndarray]] = collections.defaultdict(list)
    storages: dict[int, _Storage] = {}  # every storage seen while counting, by key: kept alive until the end
    current: list[_Storage] = []  # the current launch's storages, in argument order

    def init_args(self, args, kwargs):
        with _disable_current_modes():  # the interpreter's host copies are not kernel traffic
            host_args, host_kwargs = original_init(self, args, kwargs)
        stats.launches += 1
        current.clear()
        for arg in [*host_args, *host_kwargs.values()]:
            arg = getattr(arg, "base", arg)  # a TensorDescriptor's tensor
            if isinstance(arg, torch.Tensor):
                storage = arg.untyped_storage()
                key = storage._cdata  # the storage's identity; unique while it is referenced here
                if key not in storages:
                    low = storage.data_ptr()
                    storages[key] = _Storage(key, low, low + storage.nbytes(), storage)
                current.append(storages[key])
        return host_args, host_kwargs

    def account(kind, ptrs, mask):
        size = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
        flat = np.asarray(ptrs.data, dtype=np.uint64)
        if mask is not None:
            active = flat[np.broadcast_to(np.asarray(mask.data, dtype=bool), flat.shape)]
        else:
            active = flat.ravel()
        setattr(stats, f"{kind}_bytes", getattr(stats, f"{kind}_bytes") + active.size * size)
        unclaimed = np.ones(active.shape, dtype=bool)
        for storage in current:  # an address two arguments share belongs to the first of them
            inside = unclaimed & (active >= storage.low) & (active + size <= storage.high)
            if inside.any():
                touched[(kind, size, storage.key)].append((active[inside] - np.uint64(storage.low)) // np.uint64(size))
                unclaimed &= ~inside
        if unclaimed.any():
            if check_bounds and current:
                raise OutOfBoundsError(f"out-of-bounds {kind}: {unclaimed.sum()} of {active.size} active lanes")
            touched[(kind, size, None)].append(active[unclaimed])

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
        for (kind, size, key), chunks in touched.items():
            values = np.concatenate(chunks)
            if key is None:  # outside every storage (bounds checking off): distinct raw addresses
                distinct = int(np.unique(values).size)
            else:
                storage = storages[key]
                distinct = _count_distinct(values, (storage.high - storage.low) // size + 1)
            setattr(stats, f"{kind}_unique_bytes", getattr(stats, f"{kind}_unique_bytes") + distinct * size)
    finally:
        for name, fn in original.items():
            setattr(builder, name, fn)
        executor._init_args_hst, executor._restore_args_dev = original_init, original_restore
