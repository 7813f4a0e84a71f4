"""Where LPT reaches inside a Hugging Face model: the layer stack of each supported family, and what a layer above
the insertion needs rebuilt for the longer ``n + L`` sequence.

==========  =========================  ===========  ==============================================================
family      stack (entry -> layers)    attention    rebuilt above layer ``k``
==========  =========================  ===========  ==============================================================
BERT        ``BertModel.encoder.layer``    both ways    the attention mask
RoBERTa     ``RobertaModel.encoder.layer`` both ways    the attention mask
GPT-2       ``GPT2Model.h``                causal       the attention mask (positions are added at the input only)
LLaMA       ``LlamaModel.layers``          causal       the mask, and the rotary ``(cos, sin)`` for ``n + L`` positions
T5          ``T5Stack.block`` (encoder)    both ways    the mask, and the relative position bias for ``n + L``
==========  =========================  ===========  ==============================================================

Positions above layer ``k``: the prompt takes positions ``0..n-1`` and the input's shift by ``n``, as if the prompt
had been prepended at the input (:func:`prompt_ops.models.positions.prompted_positions`). The input's positions are
the ones it had below ``k``, per row (``positions="tokens"``: counting real tokens, so a left-padded row's are what
they are alone). Rotary attention and T5's relative bias depend only on position differences, so the input tokens'
attention to one another is exactly what it was below ``k``; their attention to the prompt depends on each row's own
positions, which is why T5's bias above ``k`` is built per row (:func:`relative_bias`) when rows differ.

Masks above layer ``k`` are additive float masks ``(B, 1, 1, T)`` (bidirectional) or ``(B, 1, Q, T)`` (causal: the
``Q`` queries are the last ``Q`` of the ``T`` keys, the earlier ones cached), which the ``eager`` and ``sdpa``
attention implementations both take.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import nn

from prompt_ops.models.inputs import first_position

FAMILIES = ("bert", "roberta", "gpt2", "llama", "t5")
ATTENTION = ("eager", "sdpa")


@dataclasses.dataclass
class LayerStack:
    """One model's stack: ``entry`` is called with the input ids (or embeddings) and the 2-D mask and runs
    ``layers``; ``rotary`` (LLaMA) and ``relative_bias`` (T5) rebuild position information for longer inputs.
    ``takes_position_ids``: ``entry`` numbers its input with a ``position_ids`` argument (all but T5), from
    ``first_position`` (RoBERTa's ``padding_idx + 1``, else 0)."""

    family: str
    entry: nn.Module
    layers: nn.ModuleList
    causal: bool
    rotary: nn.Module | None = None
    relative_bias: nn.Module | None = None
    takes_position_ids: bool = True
    first_position: int = 0

    def upper_layer_inputs(self, keep: torch.Tensor, positions: torch.Tensor, hidden: torch.Tensor) -> dict:
        """Arguments of the layers above ``k`` for the queries ``hidden (B, Q, d)`` at ``positions (B or 1, Q)`` (in
        the prompted numbering: the prompt at ``0..n-1``), which are the last ``Q`` of the keys that the 2-D
        ``keep (B, T)`` marks (the earlier ``T - Q`` are cached: the prompt rows and the tokens before)."""
        queries = hidden.shape[1]
        inputs = {"attention_mask": additive_mask(keep, self.causal, hidden.dtype, queries), "position_ids": positions}
        if self.rotary is not None:
            inputs["position_embeddings"] = self.rotary(hidden, position_ids=positions)
        if self.relative_bias is not None:  # an encoder (T5's) caches nothing: its queries are all its keys
            inputs["position_bias"] = relative_bias(self.relative_bias, positions)
        return inputs


def additive_mask(keep: torch.Tensor, causal: bool, dtype: torch.dtype, queries: int | None = None) -> torch.Tensor:
    """``0`` where a query may attend a key, the dtype's minimum elsewhere: ``(B, 1, 1, T)`` or, causal,
    ``(B, 1, Q, T)`` for the last ``Q`` (default ``T``) of the ``T`` keys as queries. A finite minimum keeps a fully
    masked row (padding) finite."""
    allowed = keep.bool()[:, None, None, :]  # (B, 1, 1, T)
    if causal:
        total = keep.shape[1]
        queries = total if queries is None else queries
        order = torch.ones(queries, total, dtype=torch.bool, device=keep.device).tril(diagonal=total - queries)
        allowed = allowed & order
    return torch.zeros(allowed.shape, dtype=dtype, device=keep.device).masked_fill(~allowed, torch.finfo(dtype).min)


def relative_bias(attention: nn.Module, positions: torch.Tensor) -> torch.Tensor:
    """T5's relative position bias ``(P, H, T, T)`` between tokens at ``positions (P, T)``, from ``attention``'s own
    bucket function and bias table (what its ``compute_bias`` does for positions ``0..T-1``). Rows with the same
    positions share one bias: ``P`` is 1 unless the rows' positions differ (left padding counted by real tokens)."""
    if positions.shape[0] > 1 and bool((positions == positions[:1]).all()):
        positions = positions[:1]
    relative = positions[:, None, :] - positions[:, :, None]  # (P, query, key): key position - query position
    buckets = attention._relative_position_bucket(
        relative,
        bidirectional=not attention.is_decoder,
        num_buckets=attention.relative_attention_num_buckets,
        max_distance=attention.relative_attention_max_distance,
    )
    return attention.relative_attention_bias(buckets).permute(0, 3, 1, 2)  # (P, H, T, T)


def find_stack(model: nn.Module) -> LayerStack:
    """The :class:`LayerStack` of a supported model, or a ``TypeError`` naming what is supported."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise TypeError(f"LPT supports the model families {FAMILIES}; model is a {type(model).__name__} ({family!r})")
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in ATTENTION:
        raise ValueError(f"LPT supports attn_implementation in {ATTENTION}, the model uses {attention!r}")
    if family == "t5":
        encoder = model.get_encoder()
        relative = encoder.block[0].layer[0].SelfAttention
        return LayerStack(family, encoder, encoder.block, False, relative_bias=relative, takes_position_ids=False)
    base = model.base_model
    if family in ("bert", "roberta"):
        if config.is_decoder:
            raise ValueError(f"LPT supports {family} as an encoder; the model is configured as a decoder")
        return LayerStack(family, base, base.encoder.layer, causal=False, first_position=first_position(model))
    if family == "gpt2":
        return LayerStack(family, base, base.h, causal=True)
    return LayerStack(family, base, base.layers, causal=True, rotary=base.rotary_emb)


def bind(module: nn.Module, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    """A module call's arguments by parameter name (Hugging Face passes some positionally)."""
    return inspect.signature(module.forward).bind(*args, **kwargs)


def with_argument(module: nn.Module, args: tuple, kwargs: dict, name: str, value: object) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a call to ``module`` with its argument ``name`` set to ``value``, where the caller put it
    (positionally or by keyword): rebinding every argument would move keywords into positions, which decorators of
    Hugging Face's ``forward`` that fill keywords in (``use_cache``) then see twice."""
    parameters = list(inspect.signature(module.forward).parameters)
    if name in parameters and parameters.index(name) < len(args):
        args = (*args[: parameters.index(name)], value, *args[parameters.index(name) + 1 :])
        return args, kwargs
    return args, {**kwargs, name: value}
