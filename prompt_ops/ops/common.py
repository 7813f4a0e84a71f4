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


def fake_embed_outputs(
    input_ids: torch.Tensor, weight: torch.Tensor, num_prompt: int, hidden: int, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fake outputs of a prompt-embedding forward op with ``num_prompt`` prompt columns (or slots) before the
    ``L`` tokens: ``inputs_embeds (B, m + L, hidden)`` in ``weight.dtype`` and the mask ``(B, m + L)`` in
    ``attention_mask``'s dtype (int64 if None)."""
    batch, seq_len = input_ids.shape
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    embeds = weight.new_empty((batch, num_prompt + seq_len, hidden))
    return embeds, input_ids.new_empty((batch, num_prompt + seq_len), dtype=mask_dtype)
