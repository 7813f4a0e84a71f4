"""Attach a prompt-tuning method to a loaded Hugging Face model: ``attach(model, config) -> PromptTunedModel``.

What PEFT's prompt tuning does, on our fused ops (reference/methods.md §0.3, §6):

- the base model is frozen; the method's module wraps its input embedding (``model.get_input_embeddings()``);
- ``forward(input_ids=..., attention_mask=..., labels=..., **kwargs)`` builds ``inputs_embeds`` and the extended
  mask with the method's fused op and calls the base model with ``inputs_embeds=``;
- encoder-only and decoder-only models: ``token_type_ids`` are extended with zeros over the prompt; token-level
  ``labels`` (the shape of ``input_ids``: causal LM, masked LM, token classification) get ``-100`` over the prompt,
  sequence-level labels are untouched; user ``position_ids`` are dropped with a warning, as PEFT does, because the
  prompt shifts every position (the model then numbers the ``m + L`` positions from 0);
- encoder-decoder models (T5): the prompt goes on the encoder side only; ``decoder_input_ids``,
  ``decoder_attention_mask`` and ``labels`` pass through unchanged.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from prompt_ops.methods.base import PromptModule
from prompt_ops.models.configs import CONFIGS, LPTConfig, MethodConfig, check_config
from prompt_ops.models.inputs import (
    check_decoder_inputs,
    check_generate_kwargs,
    check_generated_length,
    check_generation_fits,
    check_ids,
    check_length,
    check_model_labels,
    check_position_ids,
    check_token_type_ids,
)
from prompt_ops.models.tuned import TunedModel, model_embedding


class _DecodeEmbedding(nn.Module):
    """Stands in for the input embedding while a decoder-only model generates: the tokens produced after the
    prefill get the method's per-token treatment for their input positions (``PromptModule.embed_tokens``), so that
    cached generation sees what a full forward pass would."""

    def __init__(self, prompt_module: PromptModule, start: int):
        super().__init__()
        self.prompt_module = prompt_module
        self.position = start  # input position (prompt excluded) of the next token embedded

    @property
    def weight(self) -> torch.Tensor:
        return self.prompt_module.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.prompt_module.embed_tokens(input_ids, self.position)
        self.position += input_ids.shape[1]
        return embeds


class PromptTunedModel(TunedModel):
    """A frozen Hugging Face model behind a prompt-tuning method. Only ``prompt_module``'s parameters train.

    The config is checked and the module built before the model is touched: a refused config leaves it as it was.
    """

    def __init__(self, model: nn.Module, config: MethodConfig, backend: str | None = None):
        super().__init__()
        config = check_config(config, PROMPT_CONFIGS)
        embedding = model_embedding(model)
        self.prompt_module: PromptModule = config.build(embedding, backend=backend)  # checks every field first
        self.config = config.snapshot()
        model.requires_grad_(False)
        self.base_model = model
        self.is_encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        self.train(model.training)  # the method's dropout follows the model's mode

    @property
    def num_prompt_rows(self) -> int:
        """Rows the prompt adds in front of the input (LAMP: after pooling)."""
        return getattr(self.prompt_module, "num_prompt_rows", self.prompt_module.num_tokens)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ):
        self._check_loaded()
        if inputs_embeds is not None or input_ids is None:
            raise ValueError(
                "PromptTunedModel needs input_ids (the methods' offsets are computed from the token ids); "
                "inputs_embeds is not supported"
            )
        shape = tuple(check_ids(input_ids).shape)
        check_token_type_ids(token_type_ids, shape)
        check_position_ids(position_ids, shape)
        token_labels = check_model_labels(labels, shape, self.base_model)
        num_prompt = self.num_prompt_rows
        check_length(
            self.base_model, num_prompt + shape[1], f"the {num_prompt} prompt rows and input_ids' {shape[1]} tokens"
        )
        if self.is_encoder_decoder:
            check_decoder_inputs(self.base_model, labels, kwargs)
        self._embedding()  # refuses a sharded table (FSDP2) with how to shard instead
        embeds, mask = self.prompt_module(input_ids, attention_mask)
        batch = shape[0]
        if self.is_encoder_decoder:
            return self.base_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)
        if position_ids is not None:
            warnings.warn(
                "position_ids are dropped: the prompt shifts every position (as PEFT's prompt tuning does)",
                stacklevel=2,
            )
        if token_type_ids is not None:
            zeros = token_type_ids.new_zeros((batch, num_prompt))
            kwargs["token_type_ids"] = torch.cat([zeros, token_type_ids], dim=1)
        if token_labels:
            labels = torch.cat([labels.new_full((batch, num_prompt), -100), labels], dim=1)
        return self.base_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Generate with the base model's ``generate`` and its KV cache; the prompt is injected at prefill only.

        Decoder-only models: returns ``cat(input_ids, new tokens)``, the Hugging Face convention. The tokens generated
        later get the same per-token treatment a full forward pass gives them (DePT/EPT position offsets while the
        position is below ``max_length``, none after; ADePT's FFN offset), so cached generation matches a loop of
        full forward passes. The official DePT/ADePT code skips the offsets after prefill. Encoder-decoder models:
        the prompt goes to the encoder; returns what the base ``generate`` returns (the decoder's tokens). The input
        embedding swapped in for decoding is put back however ``generate`` ends.
        """
        self._check_loaded()
        if "inputs_embeds" in kwargs:
            raise ValueError("PromptTunedModel.generate builds inputs_embeds from input_ids; do not pass inputs_embeds")
        batch, seq_len = check_ids(input_ids).shape
        check_generate_kwargs(kwargs)
        rows = self.num_prompt_rows
        if self.is_encoder_decoder:
            check_length(self.base_model, rows + seq_len, f"the {rows} prompt rows and input_ids' {seq_len} tokens")
        else:
            check_generated_length(self.base_model, rows, seq_len, kwargs)
        check_generation_fits(self.base_model, batch, kwargs)
        if self.training:
            warnings.warn("generate() in training mode: ADePT's dropout acts at prefill; call .eval()", stacklevel=2)
        embeds, mask = self.prompt_module(input_ids, attention_mask)
        if self.is_encoder_decoder:
            return self.base_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        original = self.base_model.get_input_embeddings()
        self.base_model.set_input_embeddings(_DecodeEmbedding(self.prompt_module, start=input_ids.shape[1]))
        try:
            new_tokens = self.base_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        finally:
            self.base_model.set_input_embeddings(original)
        return torch.cat([input_ids, new_tokens.to(input_ids.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f"method={self.config.method}, prompt_rows={self.num_prompt_rows}"


PROMPT_CONFIGS = tuple(cls for cls in CONFIGS.values() if cls is not LPTConfig)


def attach(model: nn.Module, config: MethodConfig, backend: str | None = None) -> TunedModel:
    """Freeze ``model`` and add the method of ``config``: a :class:`PromptTunedModel` for the methods that build the
    model input, a :class:`~prompt_ops.models.late.LatePromptTunedModel` for LPT (inside the layer stack). Every
    argument is checked before the model is touched."""
    if isinstance(check_config(config), LPTConfig):
        from prompt_ops.models.late import LatePromptTunedModel

        return LatePromptTunedModel(model, config, backend=backend)
    return PromptTunedModel(model, config, backend=backend)
