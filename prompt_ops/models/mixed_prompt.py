"""The shared prompt pass of a mixed-adapter batch (issue 14 over issue 13): each adapter's prompt runs once per
adapter state, not once per row, so an eval forward or ``generate``'s prefill runs only the input tokens whatever
the mix of adapters.

A decoder-only row of adapter ``a`` has ``m_max - m_a`` masked zero slots, then its ``m_a`` prompt rows, then its
input (:mod:`prompt_ops.models.multi`, the ``"front"`` layout). Under causal attention the prompt rows attend only to
each other (the slots are masked keys), so their hidden states, logits and every layer's keys and values are those
of adapter ``a``'s prompt run alone at positions ``0 .. m_a-1``: one pass at batch 1 per adapter
(:func:`~prompt_ops.models.shared_prompt.prompt_pass`), kept in a :class:`~prompt_ops.models.prompt_cache.PromptCache`
per adapter name. :func:`gather_passes` then builds the batch's pass: each row's adapter pass right-aligned in the
``m_max`` prompt columns, zeros in front (``"__base__"`` rows: zeros everywhere; every one of those columns is masked),
its cache layers the model's own kinds (a sliding-window layer keeps the last ``window - 1`` of the ``m_max``
columns), so the input tokens run against it with the mixed mask and each row's positions
(:func:`~prompt_ops.models.shared_prompt.shared_forward`).

What equals the unshared mixed path: every row's input columns (logits, hidden states; a ``"__base__"`` row's real
tokens), each adapter row's ``m_a`` prompt columns, the loss, the cache at the columns the mask keeps. The masked
slot columns are zero here (logits and hidden states): there the unshared path computes a query no key may answer,
whose value is the attention implementation's choice (an additive mask's uniform average over every key, later
input tokens included, or a fully masked row's fallback), read by nothing (labels ``-100``, mask 0). For the same
reason a ``"__base__"`` row's left pads (which see only masked keys) may differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prompt_ops.models.shared_prompt import PromptPass


def _right_aligned(tensors: Sequence[torch.Tensor], row_pass: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``(B, ...)``: row ``b`` holds ``tensors[row_pass[b]]`` (each of batch 1) in its last columns along ``dim``
    (``width`` of them), zeros before; ``row_pass[b] == -1``: zeros. Written straight into the batch's tensor, each
    pass into the rows that use it."""
    shape = list(tensors[0].shape)
    shape[0], shape[dim] = row_pass.shape[0], width
    out = tensors[0].new_zeros(shape)
    for entry, tensor in enumerate(tensors):
        rows = tensor.shape[dim]
        out.narrow(dim, width - rows, rows)[row_pass == entry] = tensor[0]
    return out


def gather_passes(
    model: nn.Module,
    passes: Sequence[PromptPass],
    row_pass: torch.Tensor,
    num_slots: int,
    hidden: bool,
    logit_rows: int,
) -> PromptPass:
    """The mixed batch's prompt pass (module docstring) from one pass per adapter of the batch (``passes``, each of
    batch 1) and ``row_pass (B,)``, each row's pass in ``passes`` (-1: a ``"__base__"`` row): hidden states (if
    ``hidden``) and cache layers with ``num_slots`` prompt columns, each row's pass right-aligned in them, and the
    logits of the last ``logit_rows`` columns only (:func:`~prompt_ops.models.shared_prompt.prompt_logit_rows`:
    ``(B, m_max, V)`` of them would be most of the gather's work where a prefill keeps none)."""
    from transformers import DynamicCache

    def gather(tensors: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
        return _right_aligned(tensors, row_pass, num_slots, dim)

    states = None
    if hidden:
        states = tuple(gather(layer, 1) for layer in zip(*(p.hidden_states for p in passes), strict=True))
    layers = zip(*(p.layers for p in passes), strict=True)
    data = [(gather([kept.keys for kept in layer], 2), gather([kept.values for kept in layer], 2)) for layer in layers]
    cache = DynamicCache(data, config=model.config)  # the model's layer kinds, each keeping what it keeps
    logits = _right_aligned([p.logits[:, p.logits.shape[1] - min(logit_rows, p.rows) :] for p in passes], row_pass,
                            logit_rows, 1)  # fmt: skip
    return PromptPass(logits, states, tuple(cache.layers), num_slots)


__all__ = ["gather_passes"]
