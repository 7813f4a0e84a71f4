"""The shared prompt pass: a decoder-only model runs the prompt rows once per call, not once per row.

Under causal attention the prompt rows (which come first) attend only to each other, and for every method but LPT
they do not depend on the input (the per-token offsets of DePT, ADePT and EPT touch the input rows only). So their
hidden states, and every layer's keys and values, are the same for every row of the batch. The shared pass runs the
prompt once (batch 1, into a ``DynamicCache``, positions ``first .. first+m-1``, with autograd), expands each
layer's keys and values to the batch as views (``expand``: no copies; autograd sums their gradients over the
batch), then runs the input tokens against that cache with the positions and the extended mask the unshared path
gives them. The prompt rows' logits (and hidden states, when asked for) are expanded in front of the input's, and
the loss is computed by the model's own loss function over the full ``m + L`` rows, so the output has the shapes and
values of the unshared path. This is exact whenever nothing random acts on the prompt rows: with dropout active in
the base model, the prompt rows share one dropout mask across the batch (which is why auto mode turns the pass off
then).

Supported families (:data:`SHARED_FAMILIES`, by ``config.model_type``): GPT-2, LLaMA, Mistral and Qwen2, whose
forward takes a ``Cache`` and ``position_ids``. The prompt's cache has the model's own layer kinds (a sliding-window
layer keeps its last ``window - 1`` keys), so the returned cache is the unshared path's. Everything else, and any
call the pass does not cover (:func:`call_refusal`), runs the unshared path.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import numbers

import torch
from torch import nn

logger = logging.getLogger(__name__)

SHARED_FAMILIES = ("gpt2", "llama", "mistral", "qwen2")
"""``config.model_type`` of the families the shared pass is implemented and tested for."""
CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")
SHARED_KWARGS = frozenset({"use_cache", "output_hidden_states", "num_items_in_batch", "logits_to_keep"})
"""Extra forward arguments the shared pass handles; any other one runs the unshared path."""
CACHE_ARGUMENTS = ("cache", "past_key_values")
"""The name of a model's cache argument: ``cache`` since transformers 5 renamed ``past_key_values``."""


def cache_argument(model: nn.Module) -> str | None:
    """The name under which ``model``'s forward takes a KV cache, or None if it takes none."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in CACHE_ARGUMENTS if name in parameters), None)


def family_refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot run the shared prompt pass, or None when it can (a causal LM of
    :data:`SHARED_FAMILIES` whose forward takes a cache and position ids)."""
    config = getattr(model, "config", None)
    name = type(model).__name__
    if getattr(config, "is_encoder_decoder", False):
        return (
            f"{name} is an encoder-decoder model: the prompt goes to its encoder, whose attention is bidirectional, "
            "so the prompt rows attend to the input and differ from row to row"
        )
    if not name.endswith(CAUSAL_HEADS) or getattr(config, "is_decoder", True) is False:
        return (
            f"{name} is not a decoder-only causal LM: without causal attention the prompt rows attend to the input "
            "and differ from row to row"
        )
    model_type = getattr(config, "model_type", None)
    if model_type not in SHARED_FAMILIES:
        return f"the shared prompt pass supports the model types {SHARED_FAMILIES}, not {model_type!r}"
    if cache_argument(model) is None or "position_ids" not in inspect.signature(model.forward).parameters:
        return f"{name}'s forward takes no KV cache or no position_ids"
    if getattr(config, "sliding_window", None) == 1:  # the cache keeps its last window - 1 keys as [-0:]: all of them
        return "a sliding window of 1 key, whose cache layer keeps every key instead of none"
    return None


def check_shared_prompt(shared_prompt: object, model: nn.Module, input_dependent: bool) -> bool | None:
    """``attach``'s ``shared_prompt``: None (auto), True (forced) or False. True is refused with a ``ValueError``
    saying why where the pass cannot be exact: a method whose prompt depends on the input (``input_dependent``: LPT)
    or a model :func:`family_refusal` refuses."""
    if shared_prompt is not None and not isinstance(shared_prompt, bool):
        raise TypeError(f"shared_prompt must be None (auto), True or False, got {type(shared_prompt).__name__}")
    if shared_prompt:
        if input_dependent:
            raise ValueError(
                "shared_prompt=True: LPT's prompt is built from each row's hidden states, so it depends on the input "
                "and cannot be computed once for the batch; pass shared_prompt=None or False"
            )
        reason = family_refusal(model)
        if reason is not None:
            raise ValueError(f"shared_prompt=True: {reason}; pass shared_prompt=None or False")
    return shared_prompt


def dropout_active(model: nn.Module) -> bool:
    """Whether any dropout in ``model`` acts: a dropout module in training mode with ``p > 0``, or an attention
    module in training mode whose functional ``attention_dropout`` (the LLaMA family's) is above 0."""
    for module in model.modules():
        if not module.training:
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        rate = getattr(module, "attention_dropout", 0)
        if isinstance(rate, numbers.Real) and not isinstance(rate, bool) and rate > 0:
            return True
    return False


def call_refusal(
    model: nn.Module, setting: bool | None, kwargs: dict, token_type_ids: object, labels: object, batch: int
) -> str | None:
    """Why this call runs the unshared path, or None when it shares the prompt. ``setting`` is ``attach``'s
    ``shared_prompt`` (checked); ``kwargs`` the extra forward arguments; ``token_type_ids`` and ``labels`` the
    call's (None when not given); ``batch`` its rows."""
    if setting is False:
        return "shared_prompt=False"
    family = family_refusal(model)
    if family is not None:
        return family
    if setting is None and dropout_active(model):
        return "dropout is active in the base model (auto mode shares the prompt without dropout only)"
    if setting is None and batch == 1 and torch.is_grad_enabled():
        return (
            "one row under grad: the prompt runs once either way and no prompt cache is kept, so auto mode saves "
            "the shared pass's second model call"
        )
    config = model.config
    others = sorted(set(kwargs) - SHARED_KWARGS) + (["token_type_ids"] if token_type_ids is not None else [])
    if others:
        return f"the shared pass does not handle the arguments {others}"
    if getattr(config, "output_attentions", False):
        return "the config asks for attention weights, whose prompt rows span fewer keys"
    keep = kwargs.get("logits_to_keep", 0)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
        return "logits_to_keep is not a count of last rows (an index tensor)"
    if keep and labels is not None:
        return "logits_to_keep with labels (the loss needs every row's logits)"
    if model.training and any(getattr(module, "gradient_checkpointing", False) for module in model.modules()):
        return "gradient checkpointing drops the KV cache the input tokens read the prompt from"
    return None


GENERATE_KWARGS = frozenset({
    "max_new_tokens", "min_new_tokens", "max_length", "min_length", "num_beams", "num_return_sequences", "do_sample",
    "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size", "length_penalty", "early_stopping",
    "pad_token_id", "eos_token_id", "bos_token_id", "use_cache",
})  # fmt: skip
"""``generate`` arguments the shared prefill handles; any other one (a cache, an assistant, a generation config,
output flags, ...) runs the unshared prefill."""


def generate_refusal(model: nn.Module, setting: bool | None, kwargs: dict, batch: int) -> str | None:
    """Why this ``generate`` call (of ``batch`` input rows) prefills unshared, or None when it starts from the shared
    prompt's cache: :func:`call_refusal`'s reasons, an argument outside :data:`GENERATE_KWARGS`, generation
    without a KV cache or with chunked prefill (which slices ``input_ids``, not the embeddings)."""
    refusal = call_refusal(model, setting, {}, None, None, batch)
    if refusal is not None:
        return refusal
    others = sorted(set(kwargs) - GENERATE_KWARGS)
    if others:
        return f"the shared prefill does not handle the generate arguments {others}"
    config = model.generation_config
    if kwargs.get("use_cache", config.use_cache) is False:
        return "use_cache=False: generation keeps no KV cache to start from"
    if getattr(config, "prefill_chunk_size", None) is not None:
        return "chunked prefill (generation_config.prefill_chunk_size)"
    return None


def generate_copies(model: nn.Module, kwargs: dict) -> int:
    """The copies ``generate`` makes of each row (``max(num_beams, num_return_sequences)``), from ``kwargs`` or the
    model's generation config: the batch of the cache it starts from is the input's times this."""
    config = model.generation_config
    settings = (kwargs.get(name) or getattr(config, name, None) or 1 for name in ("num_beams", "num_return_sequences"))
    return max(settings)


def wants_hidden_states(model: nn.Module, kwargs: dict) -> bool:
    """Whether a forward with ``kwargs`` returns hidden states (the argument, else the model's config)."""
    return bool(kwargs.get("output_hidden_states", getattr(model.config, "output_hidden_states", False)))


@dataclasses.dataclass(frozen=True)
class PromptPass:
    """The prompt rows' pass: their ``logits (R, m, V)``, hidden states (``(R, m, d)`` per layer, None when not
    asked for) and the layers of the cache it filled (the model's own kinds: a sliding-window layer keeps the last
    ``window - 1`` keys and counts all ``m``), keys and values ``(R, heads, rows, head_dim)``. ``R`` is 1 (one prompt
    for every row) or the batch's rows (a mixed-adapter batch, one prompt per row:
    :mod:`prompt_ops.models.mixed_prompt`)."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    layers: tuple[object, ...]
    rows: int
    """The prompt rows ``m``; ``logits`` may hold only the last of them (:func:`prompt_logit_rows`)."""

    def batch_cache(self, batch: int):
        """A new ``DynamicCache`` whose layers are copies of the prompt's holding its keys and values for ``batch``
        rows: a pass of one row as ``(batch, ...)`` views (``expand``: no copy); a pass of ``R`` rows repeated for
        consecutive copies of each row (``generate``'s beams and returned sequences). Neither the views nor the kept
        layers are written: a cache layer concatenates new keys into new tensors and rebinds its own attributes."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for kept in self.layers:
            layer = copy.copy(kept)
            layer.keys, layer.values = per_row(kept.keys, batch), per_row(kept.values, batch)
            cache.layers.append(layer)
        return cache


def per_row(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """``tensor (R, ...)`` for ``batch`` rows: expanded from one row, else each row repeated ``batch // R`` times."""
    rows = tensor.shape[0]
    if rows == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    return tensor if rows == batch else tensor.repeat_interleave(batch // rows, dim=0)


def prompt_pass(
    model: nn.Module,
    embeds: torch.Tensor,
    position_ids: torch.Tensor,
    hidden: bool,
    attention_mask: torch.Tensor | None = None,
) -> PromptPass:
    """Run the prompt rows ``embeds (R, m, d)`` at ``position_ids (R, m)`` through ``model`` into a new cache of
    the model's layer kinds (autograd as the caller's grad mode says). ``R`` is 1 without ``attention_mask``; a
    mixed batch's adapters pass theirs, ``(R, m)``, one row per adapter with its masked slots in front."""
    from transformers import DynamicCache

    name = cache_argument(model)
    out = model(
        inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
        output_hidden_states=hidden, **{name: DynamicCache(config=model.config)},
    )  # fmt: skip
    layers = tuple(getattr(out, name).layers)
    return PromptPass(out.logits, tuple(out.hidden_states) if hidden else None, layers, embeds.shape[1])


def _in_front(prompt: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """``(1 or B, m, ...)`` prompt rows (expanded to) the batch of ``rest (B, L, ...)`` put in front of it."""
    return torch.cat([prompt.expand(rest.shape[0], *prompt.shape[1:]), rest], dim=1)


def prompt_logit_rows(kwargs: dict, labels: object, num_prompt: int, input_rows: int) -> int:
    """How many of the last prompt rows' logits :func:`shared_forward` reads for a call with ``kwargs`` and
    ``labels``: the rows ``logits_to_keep`` keeps (all of them for 0), and at least the last one for a loss (it
    predicts the first input token)."""
    keep = kwargs.get("logits_to_keep", 0)
    kept = min(num_prompt, max(keep - input_rows, 0)) if keep else num_prompt
    return max(kept, 1 if labels is not None else 0)


def shared_forward(
    model: nn.Module,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    position_ids: torch.Tensor,
    labels: torch.Tensor | None,
    prompt: PromptPass,
    kwargs: dict,
):
    """The base model's output for the prompted input ``embeds (B, m + L, d)`` (mask ``(B, m + L)``, position ids
    ``(B, m + L)``, token ``labels (B, m + L)`` with ``-100`` over the prompt), computed by the shared pass (module
    docstring) from the ``prompt``'s pass (:func:`prompt_pass`, fresh or cached; or one per row, a mixed-adapter
    batch's). ``kwargs`` holds only :data:`SHARED_KWARGS` (:func:`call_refusal`)."""
    config = model.config
    name = cache_argument(model)
    num_prompt = prompt.rows
    hidden = wants_hidden_states(model, kwargs)
    use_cache = kwargs.get("use_cache")
    use_cache = getattr(config, "use_cache", True) if use_cache is None else use_cache
    keep = kwargs.get("logits_to_keep", 0)  # the last `keep` of the m + L rows; 0: all of them
    input_rows = embeds.shape[1] - num_prompt
    out = model(
        inputs_embeds=embeds[:, num_prompt:],
        attention_mask=mask,
        position_ids=position_ids[:, num_prompt:],
        use_cache=True,  # the input tokens read the prompt from the cache whatever the caller keeps
        output_hidden_states=hidden,
        logits_to_keep=min(keep, input_rows),
        **{name: prompt.batch_cache(embeds.shape[0])},
    )
    fields = dict(out.items())  # rebuilt, not set: a ModelOutput keeps a field set after construction as no key
    kept_prompt_rows = min(num_prompt, keep - input_rows) if keep else num_prompt
    if kept_prompt_rows > 0:
        fields["logits"] = _in_front(prompt.logits[:, prompt.logits.shape[1] - kept_prompt_rows :], out.logits)
    if hidden:
        fields["hidden_states"] = tuple(
            _in_front(p, h) for p, h in zip(prompt.hidden_states, out.hidden_states, strict=True)
        )
    if labels is not None:
        # The last prompt row predicts the first input token; the other prompt rows' labels are -100, so the loss
        # over the rows from the last prompt row on is the unshared path's over all m + L (same terms, same count),
        # without the cross-entropy over B * (m - 1) rows that add nothing.
        rows = _in_front(prompt.logits[:, -1:], out.logits)
        loss_kwargs = {k: v for k, v in kwargs.items() if k == "num_items_in_batch"}
        fields["loss"] = model.loss_function(rows, labels[:, num_prompt - 1 :], vocab_size=config.vocab_size,
                                             **loss_kwargs)  # fmt: skip
    if not use_cache:
        fields.pop(name, None)
    return type(out)(**fields)


def log_fallback(reason: str) -> None:
    """Say at debug level why a call runs the unshared path."""
    logger.debug("shared prompt pass off: %s; running the unshared path", reason)
