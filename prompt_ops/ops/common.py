"""Small helpers shared by the op modules."""

from collections.abc import Callable

import torch

EAGER_BODIES: dict[str, Callable] = {}
"""Python body of every ``prompt_ops::`` custom op, by qualified name (see :func:`custom_op`)."""


def custom_op(name: str):
    """``torch.library.custom_op(name, mutates_args=())`` that also records the op's Python body. A call whose
    ``backend`` argument is ``"torch"`` runs only eager aten ops inside, so
    :class:`prompt_ops.profiling.EagerTraffic` replays the body to count them (the torch provider of the bench)."""

    def register(body: Callable):
        EAGER_BODIES[name] = body
        return torch.library.custom_op(name, mutates_args=())(body)

    return register


def accumulate_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The precision the torch backend accumulates in: fp32, or fp64 when any input is fp64 (gradcheck)."""
    acc = torch.float32
    for dtype in dtypes:
        acc = torch.promote_types(acc, dtype)
    return acc
