"""The shared prompt pass of a mixed-adapter batch (issue 14 over issue 13): each adapter's prompt runs once per
adapter state (without grad) or once per call (under grad, with autograd), not once per row, so a training step, an
eval forward or ``generate``'s prefill runs only the input tokens whatever the mix of adapters.

A decoder-only row of adapter ``a`` has ``m_max - m_a`` masked zero slots, then its ``m_a`` prompt rows, then its
input (:mod:`prompt_ops.models.multi`, the ``"front"`` layout). Under causal attention the prompt rows attend only to
each other (the slots are masked keys), so their hidden states, logits and every layer's keys and values are those
of adapter ``a``'s prompt run alone at positions ``0 .. m_a-1``. Without grad: one pass at batch 1 per adapter
(:func:`~prompt_ops.models.shared_prompt.prompt_pass`), kept in a :class:`~prompt_ops.models.prompt_cache.PromptCache`
per adapter name. Under grad (training, nothing kept): one pass of the batch's adapters together, a row each with its
masked slots in front as the batch lays them out, so one model call runs every adapter's prompt whatever their count
(at batch 1 each, a batch of many adapters would run many small calls). :func:`gather_passes` then builds the
batch's pass: each row's adapter pass right-aligned in the
``m_max`` prompt columns, zeros in front (``"__base__"`` rows: zeros everywhere; every one of those columns is masked),
its cache layers the model's own kinds (a sliding-window layer keeps the last ``window - 1`` of the ``m_max``
columns), so the input tokens run against it with the mixed mask and each row's positions
(:func:`~prompt_ops.models.shared_prompt.shared_forward`). The cache's prompt columns are not gathered up front: each
layer writes them on its first update, together with the input tokens' keys and values, into the one tensor the
update returns (a gather, then the layer's own ``cat``, would copy them twice; the single-adapter pass copies them
once, from a view).

What equals the unshared mixed path: every row's input columns (logits, hidden states; a ``"__base__"`` row's real
tokens), each adapter row's ``m_a`` prompt columns, the loss, the cache at the columns the mask keeps. The masked
slot columns are zero here without grad (logits and hidden states; under grad they hold the training pass's values
there): there the unshared path computes a query no key may answer,
whose value is the attention implementation's choice (an additive mask's uniform average over every key, later
input tokens included, or a fully masked row's fallback), read by nothing (labels ``-100``, mask 0). For the same
reason a ``"__base__"`` row's left pads (which see only masked keys) may differ.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from prompt_ops.models.shared_prompt import PromptPass, per_row


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """Which pass row each row of a mixed batch reads, found once per batch and reused by every layer. The passes'
    rows are numbered across them in order (a pass of one adapter has one row; the training pass, one per adapter).
    ``groups[e]``: the batch rows that read pass ``e`` (``(B_e,)`` int64) and ``sources[e]`` the row of pass ``e``
    each reads; ``groups[-1]``: the rows that read none; ``entries (B,)``: each row's pass row, the count of them
    for none."""

    groups: tuple[torch.Tensor, ...]
    sources: tuple[torch.Tensor, ...]
    entries: torch.Tensor

    @classmethod
    def of(cls, row_pass: torch.Tensor, pass_rows: Sequence[int]) -> RowLayout:
        """From ``row_pass (B,)``, each row's pass row (-1: none), for passes of ``pass_rows`` rows each."""
        groups, sources = [], []
        for start, count in zip(itertools.accumulate([0, *pass_rows]), pass_rows, strict=False):
            rows = ((row_pass >= start) & (row_pass < start + count)).nonzero().squeeze(1)
            groups.append(rows)
            sources.append(row_pass[rows] - start)
        groups.append((row_pass < 0).nonzero().squeeze(1))
        return cls(tuple(groups), tuple(sources), torch.where(row_pass < 0, sum(pass_rows), row_pass))

    @property
    def batch(self) -> int:
        return self.entries.shape[0]


def right_aligned(
    tensors: Sequence[torch.Tensor], layout: RowLayout, width: int, dim: int, tail: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, ...)`` with ``width`` columns along ``dim``, each row's pass row (of ``tensors[e]``) right-aligned
    in them and zeros elsewhere, then the columns of ``tail (B, ...)`` if given. Without grad it is written in place
    into one new tensor, every element once. Under grad it is built out of place (each pass padded in front and
    stacked with a zero entry, one ``index_select`` by row, then a ``cat`` with ``tail``): autograd would copy the
    whole gradient of the result once per in-place write into it."""
    given = [*tensors, *(() if tail is None else (tail,))]
    if torch.is_grad_enabled() and any(tensor.requires_grad for tensor in given):
        padded = [F.pad(tensor, (0, 0) * (tensor.dim() - 1 - dim) + (width - tensor.shape[dim], 0)) for tensor in
                  tensors]  # fmt: skip
        zeros = padded[0].new_zeros((1, *padded[0].shape[1:]))  # the row of no pass
        stacked = torch.cat([*padded, zeros])  # (the passes' rows + 1, ...)
        rows = stacked.index_select(0, layout.entries)
        return rows if tail is None else torch.cat([rows, tail], dim)
    shape = list(given[-1].shape)
    shape[0], shape[dim] = layout.batch, width + (0 if tail is None else tail.shape[dim])
    out = given[-1].new_empty(shape)
    _place(out.narrow(dim, 0, width), tensors, layout, dim)
    if tail is not None:
        out.narrow(dim, width, tail.shape[dim]).copy_(tail)
    return out


def _place(out: torch.Tensor, tensors: Sequence[torch.Tensor], layout: RowLayout, dim: int) -> None:
    """Write each pass's rows (``tensors[e]``) into the last columns of ``out`` along ``dim``, in the rows that read
    them (``layout``), and zeros everywhere else (in front of them, and the rows of no pass): every element once."""
    width = out.shape[dim]
    out.index_fill_(0, layout.groups[-1], 0)
    for tensor, rows, sources in zip(tensors, layout.groups, layout.sources, strict=False):
        columns = tensor.shape[dim]
        read = tensor.expand(len(rows), *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor.index_select(0, sources)
        out.narrow(dim, 0, width - columns).index_fill_(0, rows, 0)
        out.narrow(dim, width - columns, columns).index_copy_(0, rows, read)


@dataclasses.dataclass(frozen=True)
class _PendingColumns:
    """One cache layer's prompt columns for a mixed batch, written on the layer's first update: each pass's kept
    ``keys`` / ``values`` ``(R_e, heads, w_e, head_dim)`` (one row per adapter's kept pass; the training pass, a
    row per adapter) right-aligned in the rows that read them (``layout``), ``width`` columns
    (``m_max``; a sliding-window layer: at most ``window - 1``), zeros elsewhere."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    layout: RowLayout
    width: int

    def written(self, kept: tuple[torch.Tensor, ...], new: torch.Tensor | None) -> torch.Tensor:
        """``(B, heads, width + L, head_dim)``: the prompt columns of ``kept`` (``self.keys`` or ``self.values``),
        then ``new (B, heads, L, head_dim)`` if given, in one new tensor."""
        return right_aligned(kept, self.layout, self.width, 2, new)

    def placeholder(self) -> torch.Tensor:
        """``(B, heads, width, head_dim)`` zeros as a stride-0 view (no memory): what the layer holds before its
        first update, read for its shape (the cache's length) only."""
        sample = self.keys[0]
        return sample.new_zeros(()).expand(self.layout.batch, sample.shape[1], self.width, sample.shape[3])


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


def _prefill_layer(kept: Sequence[object], layout: RowLayout, slots: int) -> object:
    """A cache layer of the model's kind (``kept``: one layer of each pass, of one model layer) holding the batch's
    ``slots`` prompt columns pending (:class:`_WritesPromptOnUpdate`); it has seen ``slots`` columns."""
    first = kept[0]
    layer = object.__new__(_prefill_kind(type(first)))
    layer.__dict__.update(first.__dict__)  # a shallow copy: its kind's settings (a sliding window), device, state
    width = min(slots, first.sliding_window - 1) if getattr(first, "is_sliding", False) else slots
    layer.pending = _PendingColumns(tuple(one.keys for one in kept), tuple(one.values for one in kept), layout, width)
    layer.keys = layer.values = layer.pending.placeholder()
    if hasattr(layer, "cumulative_length"):
        layer.cumulative_length = slots
    return layer


@dataclasses.dataclass(frozen=True)
class MixedPromptPass(PromptPass):
    """A mixed batch's prompt pass (module docstring): the gathered ``logits`` and ``hidden_states`` of the
    batch's rows, ``rows = m_max``, and, in place of ``layers`` (empty here), the adapters' ``passes`` and
    ``row_pass (B,)``, the pass row each row reads (:class:`RowLayout`; -1: none), from which :meth:`batch_cache`
    builds the cache."""

    passes: tuple[PromptPass, ...] = ()
    row_pass: torch.Tensor | None = None

    def batch_cache(self, batch: int):
        """A new ``DynamicCache`` of the model's layer kinds for ``batch`` rows (the pass's rows, or consecutive
        copies of each: ``generate``'s beams and returned sequences) whose layers write each row's adapter pass,
        right-aligned in the ``m_max`` prompt columns, with the input's keys on their first update
        (:class:`_WritesPromptOnUpdate`). The kept passes are not written."""
        from transformers import DynamicCache

        layout = RowLayout.of(per_row(self.row_pass, batch), [one.logits.shape[0] for one in self.passes])
        cache = DynamicCache()
        for kept in zip(*(one.layers for one in self.passes), strict=True):
            cache.layers.append(_prefill_layer(kept, layout, self.rows))
        return cache


def gather_passes(
    passes: Sequence[PromptPass], row_pass: torch.Tensor, num_slots: int, hidden: bool, logit_rows: int
) -> MixedPromptPass:
    """The mixed batch's prompt pass (module docstring) from the adapters' ``passes`` (one per adapter of batch 1, or
    the training pass of a row per adapter) and ``row_pass (B,)``, the pass row each row reads, the passes' rows
    numbered across them in order (-1: a ``"__base__"`` row): hidden states (if
    ``hidden``) with ``num_slots`` prompt columns, each row's pass right-aligned in them, the logits of the last
    ``logit_rows`` columns only (:func:`~prompt_ops.models.shared_prompt.prompt_logit_rows`: ``(B, m_max, V)`` of
    them would be most of the gather's work where a prefill keeps none), and the cache to come
    (:meth:`MixedPromptPass.batch_cache`)."""
    layout = RowLayout.of(row_pass, [one.logits.shape[0] for one in passes])
    states = None
    if hidden:
        states = tuple(right_aligned(layer, layout, num_slots, 1)
                       for layer in zip(*(one.hidden_states for one in passes), strict=True))  # fmt: skip
    logits = [one.logits[:, one.logits.shape[1] - min(logit_rows, one.rows) :] for one in passes]
    return MixedPromptPass(right_aligned(logits, layout, logit_rows, 1), states, (), num_slots, tuple(passes),
                           row_pass)  # fmt: skip


__all__ = ["MixedPromptPass", "gather_passes"]
