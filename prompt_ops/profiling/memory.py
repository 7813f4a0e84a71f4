"""What a training step keeps in memory for its backward: the bytes of the tensors autograd saves.

On a GPU, ``torch.cuda.max_memory_allocated`` measures peak memory. The CPU has no allocator statistics, so the bench
counts what differs between methods instead: the activations saved for backward (distinct storages, weights
excluded). This is exact, and it is what LPT saves by running layers ``1..k`` without gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator

import torch


@dataclasses.dataclass
class SavedActivations:
    bytes: int = 0
    tensors: int = 0


@contextlib.contextmanager
def saved_activations(exclude: Iterable[torch.Tensor] = ()) -> Iterator[SavedActivations]:
    """Count the distinct storages autograd saves for backward inside the block, leaving out the storages of
    ``exclude`` (pass the model's parameters: weights are held anyway)."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    result = SavedActivations()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in excluded and pointer not in seen and storage.nbytes() > 0:
            seen.add(pointer)
            result.bytes += storage.nbytes()
            result.tensors += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield result
