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
had been prepended at the input. Rotary attention and T5's relative bias depend only on position differences, so
the input tokens' attention to one another is exactly what it was below ``k``.

Masks above layer ``k`` are additive float masks ``(B, 1, 1, n+L)`` (bidirectional) or ``(B, 1, n+L, n+L)``
(causal), which the ``eager`` and ``sdpa`` attention implementations both take.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import nn

FAMILIES = ("bert", "roberta", "gpt2", "llama", "t5")
ATTENTION = ("eager", "sdpa")


@dataclasses.dataclass
class LayerStack:
    """One model's stack: ``entry`` is called with the input ids (or embeddings) and the 2-D mask and runs
    ``layers``; ``rotary`` (LLaMA) and ``relative_bias`` (T5) rebuild position information for longer inputs."""

    family: str
    entry: nn.Module
    layers: nn.ModuleList
    causal: bool
    rotary: nn.Module | None = None
    relative_bias: nn.Module | None = None

    def upper_layer_inputs(self, mask: torch.Tensor, positions: torch.Tensor, hidden: torch.Tensor) -> dict:
        """Arguments of the layers above ``k`` for the extended 2-D ``mask (B, n+L)`` and ``positions``."""
        inputs = {"attention_mask": additive_mask(mask, self.causal, hidden.dtype), "position_ids": positions}
        if self.rotary is not None:
            inputs["position_embeddings"] = self.rotary(hidden, position_ids=positions)
        if self.relative_bias is not None:
            total = mask.shape[1]
            inputs["position_bias"] = self.relative_bias.compute_bias(total, total, device=hidden.device)
        return inputs


def additive_mask(keep: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """``0`` where a query may attend a key, the dtype's minimum elsewhere: ``(B, 1, 1, T)`` or, causal,
    ``(B, 1, T, T)``. A finite minimum keeps a fully masked row (padding) finite."""
    allowed = keep.bool()[:, None, None, :]  # (B, 1, 1, T)
    if causal:
        total = keep.shape[1]
        allowed = allowed & torch.ones(total, total, dtype=torch.bool, device=keep.device).tril()
    return torch.zeros(allowed.shape, dtype=dtype, device=keep.device).masked_fill(~allowed, torch.finfo(dtype).min)


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
        return LayerStack(
            family, encoder, encoder.block, causal=False, relative_bias=encoder.block[0].layer[0].SelfAttention
        )
    base = model.base_model
    if family in ("bert", "roberta"):
        if config.is_decoder:
            raise ValueError(f"LPT supports {family} as an encoder; the model is configured as a decoder")
        return LayerStack(family, base, base.encoder.layer, causal=False)
    if family == "gpt2":
        return LayerStack(family, base, base.h, causal=True)
    return LayerStack(family, base, base.layers, causal=True, rotary=base.rotary_emb)


def bind(module: nn.Module, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    """A module call's arguments by parameter name (Hugging Face passes some positionally)."""
    return inspect.signature(module.forward).bind(*args, **kwargs)
