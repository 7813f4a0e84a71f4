"""The prompt cache: eval forward and ``generate`` reuse one shared prompt pass per adapter state (issue 13).

Without autograd and without active dropout, the prompt rows' pass (:class:`~prompt_ops.models.shared_prompt.
PromptPass`: their logits, hidden states and every layer's keys and values, at batch 1) is a function of the
tuned model's weights and modes only, so a :class:`PromptCache` keeps it across calls and the prefill runs only the
input tokens. It is never used under grad (a kept pass carries no graph) nor while dropout acts (each call draws
its own mask), and never served stale. How a change is detected, on each call:

- every parameter and buffer of the tuned model (the adapter and the frozen base model): the tensor itself (a weak
  reference, so a replaced parameter is a miss even where its id and memory are reused), its ``_version`` counter
  (bumped by every in-place write: an optimizer step, ``load_state_dict``'s ``copy_``, ``torch.no_grad`` edits), its
  data pointer, dtype, device, shape and strides (``module.to(...)``, ``param.data = ...``);
- every module's training flag, the base model's attention implementation, and autocast (on or off, and its
  dtype, for the model's device: a pass kept under autocast holds its keys and values in that precision);
- the adapter's parameters by content as well: in-place writes through ``param.data`` bump no version counter, so
  the cache keeps a copy of the adapter (kilobytes) and compares it, one device sync per call.

What it cannot see: an in-place write through ``.data`` to a frozen base-model weight, an edit of the model's
config (a sliding window, rope settings that change no buffer) and global precision switches (TF32 matmuls on a
GPU). Call :meth:`PromptCache.clear` after one. Cost per call: a walk over the tensors' metadata (microseconds per
tensor) and the adapter comparison's one synchronisation.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping

import torch
from torch import nn

from prompt_ops.models.shared_prompt import PromptPass, dropout_active


def _tensor_key(tensor: torch.Tensor) -> tuple:
    return (
        weakref.ref(tensor), tensor._version, tensor.data_ptr(), tensor.dtype, tensor.device, tuple(tensor.shape),
        tensor.stride(),
    )  # fmt: skip


def state_key(tuned: nn.Module) -> tuple:
    """What the prompt pass of ``tuned`` (a tuned model) depends on, content aside (module docstring)."""
    tensors = [*tuned.parameters(), *tuned.buffers()]
    modes = tuple(module.training for module in tuned.modules())
    attention = getattr(getattr(tuned.base_model, "config", None), "_attn_implementation", None)
    device = tensors[0].device.type
    autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
    return tuple(_tensor_key(tensor) for tensor in tensors), modes, attention, autocast


def reusable_now(tuned: nn.Module) -> bool:
    """Whether a prompt pass of ``tuned`` may be kept or served now: no autograd and no active dropout in its base
    model (module docstring)."""
    return not torch.is_grad_enabled() and not dropout_active(tuned.base_model)


def _same_key(kept: tuple, now: tuple) -> bool:
    """``now == kept``, weak references compared by what they point to (``==`` on them compares the tensors)."""
    kept_tensors, *kept_rest = kept
    now_tensors, *now_rest = now
    return (
        kept_rest == now_rest
        and len(kept_tensors) == len(now_tensors)
        and all(a[0]() is b[0]() is not None and a[1:] == b[1:] for a, b in zip(kept_tensors, now_tensors, strict=True))
    )


class PromptCache:
    """One kept :class:`PromptPass` of a tuned model and the state it was computed in (module docstring).
    ``builds`` counts the passes computed through it (kept or not)."""

    def __init__(self) -> None:
        self.builds = 0
        self._pass: PromptPass | None = None
        self._key: tuple | None = None
        self._adapter: tuple[torch.Tensor, ...] = ()

    def clear(self) -> None:
        """Drop the kept pass: the next call computes the prompt again."""
        self._pass, self._key, self._adapter = None, None, ()

    def get(
        self,
        tuned: nn.Module,
        build: Callable[[bool], PromptPass],
        hidden: bool,
        adapter: Mapping[str, torch.Tensor] | None = None,
        key: tuple | None = None,
        reusable: bool | None = None,
    ) -> PromptPass:
        """The prompt pass of ``tuned`` (with hidden states if ``hidden``): the kept one when it is valid, else
        ``build(hidden)``, kept when it may be (no grad, no active dropout). ``adapter``: the tensors of the adapter
        whose prompt it is, compared by content (default ``tuned.adapter_state_dict()``; one adapter of a bank).
        ``key``: ``state_key(tuned)`` when the caller computed it for several caches of one call (a bank's adapters
        share the model's state, so one walk over its tensors serves them all); ``reusable``: :func:`reusable_now`'s
        answer, likewise."""
        if not (reusable_now(tuned) if reusable is None else reusable):
            self.builds += 1
            return build(hidden)
        key = state_key(tuned) if key is None else key
        adapter = tuple((tuned.adapter_state_dict() if adapter is None else adapter).values())
        if not self._valid(key, adapter) or (hidden and self._pass.hidden_states is None):
            self.clear()
            self.builds += 1
            self._pass = build(hidden)
            self._key, self._adapter = key, tuple(param.detach().clone() for param in adapter)
        return self._pass

    def _valid(self, key: tuple, adapter: tuple[torch.Tensor, ...]) -> bool:
        if self._pass is None or not _same_key(self._key, key) or len(adapter) != len(self._adapter):
            return False
        if not adapter:
            return True
        changed = torch.stack([(kept != param).any() for kept, param in zip(self._adapter, adapter, strict=True)])
        return not bool(changed.any())  # NaN != NaN: a NaN adapter is never reused
