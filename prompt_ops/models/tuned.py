"""What every tuned-model wrapper shares: the frozen ``base_model``, the trainable ``prompt_module`` built from a
method config, and the adapter (the method's own parameters) it saves."""

from __future__ import annotations

import torch
from torch import nn


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The model's input ``nn.Embedding``, or a ``TypeError`` saying what was expected."""
    if not hasattr(model, "get_input_embeddings"):
        raise TypeError(f"model must be a Hugging Face PreTrainedModel, got {type(model).__name__}")
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"the model's input embedding must be an nn.Embedding, got {type(embedding).__name__}")
    return embedding


class TunedModel(nn.Module):
    """Base of :class:`PromptTunedModel` and :class:`LatePromptTunedModel`: subclasses set ``base_model``,
    ``config`` and ``prompt_module``."""

    base_model: nn.Module
    prompt_module: nn.Module

    def _embedding(self) -> nn.Embedding:
        return input_embedding(self.base_model)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The method's own parameters (not the frozen embedding): what an adapter file holds."""
        return {
            name: param for name, param in self.prompt_module.named_parameters() if not name.startswith("embedding.")
        }

    def trainable_parameters(self) -> str:
        """PEFT-style summary: ``trainable params: N || all params: M || trainable%: P``."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return (
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    def save_adapter(self, directory):
        """Write ``adapter.safetensors`` + ``adapter_config.json`` (see :func:`prompt_ops.models.save_adapter`)."""
        from prompt_ops.models.adapters import save_adapter

        return save_adapter(self, directory)
