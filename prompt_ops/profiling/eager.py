"""Launches and bytes of eager PyTorch code, counted exactly from the aten ops it dispatches.

Every aten op that launches a kernel on a GPU counts as one launch; views and allocations without a kernel do not.
Bytes follow what the kernel must touch: a gather reads the gathered rows (not the whole table) and the indices; a
scatter reads its indices and values and writes the rows it touches (plus a full copy when out of place); a fill
writes its output; a broadcast (stride-0) input is read once. The op sequence is the same on CPU and CUDA for the
ops we measure, so counting on CPU is exact for the eager path (cuBLAS splits and CUDA-side fusions aside).
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_FILL = {"zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "fill_", "zero_", "new_zeros", "new_ones"}
_GATHER = {"index", "embedding", "index_select", "gather", "take"}
_SCATTER = {
    "index_put",
    "index_put_",
    "_index_put_impl_",
    "index_add",
    "index_add_",
    "scatter_add",
    "scatter_add_",
    "embedding_dense_backward",
}
_NO_KERNEL = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "detach",
    "lift_fresh",
    "alias",
    "_unsafe_view",
    "set_",
    "resize_",
}


def unique_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a kernel reads from ``t``: broadcast (stride-0) dims count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


@dataclasses.dataclass
class OpRecord:
    name: str
    read_bytes: int
    write_bytes: int


class EagerTraffic(TorchDispatchMode):
    """``with EagerTraffic() as t: fn()`` then ``t.launches``, ``t.read_bytes``, ``t.write_bytes``, ``t.ops``.

    Our own ``prompt_ops::`` custom ops are opened when they run the eager torch backend (their Python body is
    replayed under this mode); on the Triton backend their kernels run inside, so meeting one raises (count its
    launchers with :func:`prompt_ops.profiling.kernel_traffic`): nothing is silently missed.
    """

    def __init__(self):
        super().__init__()
        self.ops: list[OpRecord] = []

    @property
    def launches(self) -> int:
        return len(self.ops)

    @property
    def read_bytes(self) -> int:
        return sum(op.read_bytes for op in self.ops)

    @property
    def write_bytes(self) -> int:
        return sum(op.write_bytes for op in self.ops)

    @property
    def bytes(self) -> int:
        return self.read_bytes + self.write_bytes

    def _replay_eager_body(self, func, args, kwargs):
        """A ``prompt_ops::`` op called with ``backend="torch"``: run its Python body under this mode, so that its
        aten ops are counted. Any other call of our ops launches kernels this mode cannot see: refuse it."""
        from prompt_ops.ops.common import EAGER_BODIES

        names = [argument.name for argument in func._schema.arguments]
        call = {**dict(zip(names, args, strict=False)), **kwargs}
        body = EAGER_BODIES.get(func._schema.name)
        if body is None or call.get("backend") != "torch":
            raise RuntimeError(
                f"EagerTraffic cannot see inside {func}: count its launcher with prompt_ops.profiling.kernel_traffic"
            )
        with self:
            return body(*args, **kwargs)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "prompt_ops":
            return self._replay_eager_body(func, args, kwargs)
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if func.is_view or name in _NO_KERNEL:
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        mutated = [
            a
            for a, s in zip(args, func._schema.arguments, strict=False)
            if isinstance(a, torch.Tensor) and s.alias_info is not None and s.alias_info.is_write
        ]
        if name == "copy_" and args[0].data_ptr() == args[1].data_ptr() and args[0].dtype == args[1].dtype:
            return out  # a self-copy moves nothing

        def total(ts):
            return sum(unique_bytes(t) for t in ts)

        if name in _FILL:
            read, write = 0, total(mutated or outputs)
        elif name in _GATHER:
            indices = [t for t in inputs[1:] if not t.is_floating_point()]
            read, write = total(outputs) + total(indices), total(outputs)
        elif name in _SCATTER:
            values = unique_bytes(inputs[-1])
            copy = 0 if mutated else unique_bytes(inputs[0])
            read, write = total(inputs[1:]) + copy, values + copy
        else:
            read, write = total(inputs), total(mutated or outputs)
        self.ops.append(OpRecord(str(func), read, write))
        return out
