"""The shared prompt pass of a mixed-adapter batch (issue 14 over issue 13): each adapter's prompt runs once per
adapter state (without grad) or once per call (under grad, with autograd), not once per row, so a training step, an
eval forward or ``generate``'s prefill runs only the input tokens whatever the mix of adapters.

A decoder-only row of adapter ``a`` has ``m_max - m_a`` masked zero slots, then its ``m_a`` prompt rows, then its
input (:mod:`prompt_ops.models.multi`, the ``"front"`` layout). Under causal attention the prompt rows attend only to
each other (the slots are masked keys), so their hidden states, logits and every layer's keys and values are those
of adapter ``a``'s prompt run alone at positions ``0 .. m_a-1``: one pass at batch 1 per adapter
(:func:`~prompt_ops.models.shared_prompt.prompt_pass`), kept in a :class:`~prompt_ops.models.prompt_cache.PromptCache`
per adapter name. :func:`gather_passes` then builds the batch's pass: each row's adapter pass right-aligned in the
``m_max`` prompt columns, zeros in front (``"__base__"`` rows: zeros everywhere; every one of those columns is masked),
its cache layers the model's own kinds (a sliding-window layer keeps the last ``window - 1`` of the ``m_max``
columns), so the input tokens run against it with the mixed mask and each row's positions
(:func:`~prompt_ops.models.shared_prompt.shared_forward`). The cache's prompt columns are not gathered up front: each
layer writes them on its first update, together with the input tokens' keys and values, into the one tensor the
update returns (a gather, then the layer's own ``cat``, would copy them twice; the single-adapter pass copies them
once, from a view).

What equals the unshared mixed path: every row's input columns (logits, hidden states; a ``"__base__"`` row's real
tokens), each adapter row's ``m_a`` prompt columns, the loss, the cache at the columns the mask keeps. The masked
slot columns are zero here (logits and hidden states): there the unshared path computes a query no key may answer,
whose value is the attention implementation's choice (an additive mask's uniform average over every key, later
input tokens included, or a fully masked row's fallback), read by nothing (labels ``-100``, mask 0). For the same
reason a ``"__base__"`` row's left pads (which see only masked keys) may differ.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import torch

from prompt_ops.models.shared_prompt import PromptPass, per_row


def row_groups(row_pass: torch.Tensor, num_passes: int) -> tuple[torch.Tensor, ...]:
    """Pass ``e``'s rows, ``(B_e,)`` int64 indices, for every ``e < num_passes`` of ``row_pass (B,)``, then the rows
    of no pass (-1): found once per batch, then every layer's write reuses them."""
    return tuple((row_pass == entry).nonzero().squeeze(1) for entry in [*range(num_passes), -1])


def _place(out: torch.Tensor, tensors: Sequence[torch.Tensor], groups: Sequence[torch.Tensor], dim: int) -> None:
    """Write each pass's ``tensors[e]`` (batch 1) into the last columns of ``out`` along ``dim``, in the rows
    ``groups[e]``, and zeros everywhere else (in front of them, and the rows of no pass, ``groups[-1]``): every
    element once."""
    width = out.shape[dim]
    out.index_fill_(0, groups[-1], 0)
    for tensor, rows in zip(tensors, groups[:-1], strict=True):
        columns = tensor.shape[dim]
        out.narrow(dim, 0, width - columns).index_fill_(0, rows, 0)
        out.narrow(dim, width - columns, columns).index_copy_(0, rows, tensor.expand(len(rows), *tensor.shape[1:]))


def _right_aligned(tensors: Sequence[torch.Tensor], groups: Sequence[torch.Tensor], batch: int, width: int,
                   dim: int) -> torch.Tensor:  # fmt: skip
    """``(batch, ...)`` with ``width`` columns along ``dim``: each pass's tensor right-aligned in its rows, zeros
    elsewhere."""
    shape = list(tensors[0].shape)
    shape[0], shape[dim] = batch, width
    out = tensors[0].new_empty(shape)
    _place(out, tensors, groups, dim)
    return out


@dataclasses.dataclass(frozen=True)
class _PendingColumns:
    """One cache layer's prompt columns for a mixed batch, written on the layer's first update: each pass's kept
    ``keys`` / ``values`` ``(1, heads, w_e, head_dim)`` right-aligned in the rows ``groups[e]``, ``width`` columns
    (``m_max``; a sliding-window layer: at most ``window - 1``), zeros elsewhere."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    groups: tuple[torch.Tensor, ...]
    batch: int
    width: int

    def written(self, kept: tuple[torch.Tensor, ...], new: torch.Tensor | None) -> torch.Tensor:
        """``(B, heads, width + L, head_dim)``: the prompt columns of ``kept`` (``self.keys`` or ``self.values``),
        then ``new (B, heads, L, head_dim)`` if given, in one new tensor."""
        sample = kept[0] if new is None else new
        rows = 0 if new is None else new.shape[2]
        out = sample.new_empty(self.batch, kept[0].shape[1], self.width + rows, kept[0].shape[3])
        _place(out[:, :, : self.width], kept, self.groups, 2)
        if new is not None:
            out[:, :, self.width :] = new
        return out

    def placeholder(self) -> torch.Tensor:
        """``(B, heads, width, head_dim)`` zeros as a stride-0 view (no memory): what the layer holds before its
        first update, read for its shape (the cache's length) only."""
        sample = self.keys[0]
        return sample.new_zeros(()).expand(self.batch, sample.shape[1], self.width, sample.shape[3])


class _WritesPromptOnUpdate:
    """Mixin over a transformers dynamic cache layer kind (:func:`_prefill_kind`) that holds a mixed batch's prompt
    columns as :class:`_PendingColumns` until its first ``update``, the input tokens' keys and values. For the plain
    and the sliding-window dynamic layer, that update writes the prompt columns and the new keys into one tensor,
    what the layer's own update makes with ``cat(prompt columns, new)`` after a gather made the prompt columns: one
    copy of them instead of two. Any other case (another layer kind, a sliding layer recording its past) writes the
    prompt columns, then runs the kind's own update."""

    pending: _PendingColumns | None = None
    writes_in_one: bool = False
    """Whether the kind's update is known here: ``DynamicLayer``'s or ``DynamicSlidingWindowLayer``'s."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        pending, self.pending = self.pending, None
        if pending is None:
            return super().update(key_states, value_states, *args, **kwargs)
        if not self.writes_in_one or getattr(self, "record_past", False):
            self.keys, self.values = pending.written(pending.keys, None), pending.written(pending.values, None)
            return super().update(key_states, value_states, *args, **kwargs)
        keys, values = pending.written(pending.keys, key_states), pending.written(pending.values, value_states)
        if not self.is_sliding:
            self.keys, self.values = keys, values
            return keys, values
        # the sliding layer: count the new columns, keep the last window - 1, return all of them
        self.cumulative_length += key_states.shape[-2]
        self.keys, self.values = keys[:, :, -self.sliding_window + 1 :], values[:, :, -self.sliding_window + 1 :]
        return keys, values


@functools.cache
def _prefill_kind(kind: type) -> type:
    """``kind`` (a cache layer class) with :class:`_WritesPromptOnUpdate` in front."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    attributes = {"writes_in_one": kind in (DynamicLayer, DynamicSlidingWindowLayer), "__module__": __name__}
    return type(f"PromptWriting{kind.__name__}", (_WritesPromptOnUpdate, kind), attributes)


def _prefill_layer(kept: Sequence[object], groups: tuple[torch.Tensor, ...], batch: int, slots: int) -> object:
    """A cache layer of the model's kind (``kept``: one layer of each pass, of one model layer) holding the batch's
    ``slots`` prompt columns pending (:class:`_WritesPromptOnUpdate`); it has seen ``slots`` columns."""
    first = kept[0]
    layer = object.__new__(_prefill_kind(type(first)))
    layer.__dict__.update(first.__dict__)  # a shallow copy: its kind's settings (a sliding window), device, state
    width = min(slots, first.sliding_window - 1) if getattr(first, "is_sliding", False) else slots
    layer.pending = _PendingColumns(
        tuple(one.keys for one in kept), tuple(one.values for one in kept), groups, batch, width
    )
    layer.keys = layer.values = layer.pending.placeholder()
    if hasattr(layer, "cumulative_length"):
        layer.cumulative_length = slots
    return layer


@dataclasses.dataclass(frozen=True)
class MixedPromptPass(PromptPass):
    """A mixed batch's prompt pass (module docstring): the gathered ``logits`` and ``hidden_states`` of the
    batch's rows, ``rows = m_max``, and, in place of ``layers`` (empty here), the adapters' ``passes`` (batch 1
    each) and ``row_pass (B,)``, each row's pass (-1: none), from which :meth:`batch_cache` builds the cache."""

    passes: tuple[PromptPass, ...] = ()
    row_pass: torch.Tensor | None = None

    def batch_cache(self, batch: int):
        """A new ``DynamicCache`` of the model's layer kinds for ``batch`` rows (the pass's rows, or consecutive
        copies of each: ``generate``'s beams and returned sequences) whose layers write each row's adapter pass,
        right-aligned in the ``m_max`` prompt columns, with the input's keys on their first update
        (:class:`_WritesPromptOnUpdate`). The kept passes are not written."""
        from transformers import DynamicCache

        groups = row_groups(per_row(self.row_pass, batch), len(self.passes))
        cache = DynamicCache()
        for kept in zip(*(one.layers for one in self.passes), strict=True):
            cache.layers.append(_prefill_layer(kept, groups, batch, self.rows))
        return cache


def gather_passes(
    passes: Sequence[PromptPass], row_pass: torch.Tensor, num_slots: int, hidden: bool, logit_rows: int
) -> MixedPromptPass:
    """The mixed batch's prompt pass (module docstring) from one pass per adapter of the batch (``passes``, each of
    batch 1) and ``row_pass (B,)``, each row's pass in ``passes`` (-1: a ``"__base__"`` row): hidden states (if
    ``hidden``) with ``num_slots`` prompt columns, each row's pass right-aligned in them, the logits of the last
    ``logit_rows`` columns only (:func:`~prompt_ops.models.shared_prompt.prompt_logit_rows`: ``(B, m_max, V)`` of
    them would be most of the gather's work where a prefill keeps none), and the cache to come
    (:meth:`MixedPromptPass.batch_cache`)."""
    batch = row_pass.shape[0]
    groups = row_groups(row_pass, len(passes))
    states = None
    if hidden:
        states = tuple(_right_aligned(layer, groups, batch, num_slots, 1)
                       for layer in zip(*(one.hidden_states for one in passes), strict=True))  # fmt: skip
    logits = [one.logits[:, one.logits.shape[1] - min(logit_rows, one.rows) :] for one in passes]
    return MixedPromptPass(_right_aligned(logits, groups, batch, logit_rows, 1), states, (), num_slots, tuple(passes),
                           row_pass)  # fmt: skip


__all__ = ["MixedPromptPass", "gather_passes"]
