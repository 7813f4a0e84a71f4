"""Our fused per-token offsets under an existing ``peft`` prompt-tuning ``PeftModel``.

PEFT cannot register new method types from outside (reference/anchors.md §6), but every PEFT prompt-learning path
(training forward, sequence classification, seq2seq generation, causal-LM prefill) embeds the input with
``peft_model.word_embeddings(input_ids)`` and then prepends its own prompt. ``bridge_peft`` swaps that module for
one that adds the method's per-token offset with our fused op; PEFT's prompt (``prompt_encoder[...].embedding``)
stays PEFT's. Offset methods only: DePT (position-wise ``scale * A[t] @ B``) and ADePT (the token-shared FFN).

PEFT saves only ``prompt_embeddings``; ``save_bridge`` / ``load_bridge`` keep the extra tensors in
``prompt_ops_bridge.safetensors`` beside PEFT's files. As in the official code, PEFT's causal-LM generation adds
the offset at prefill only (use :func:`prompt_ops.models.attach` for offsets on generated tokens too).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from prompt_ops.methods.base import PromptModule
from prompt_ops.methods.official import check_finite, folder_path
from prompt_ops.models.adapter_files import output_folder, write_files
from prompt_ops.models.configs import ADePTConfig, DePTConfig, check_config

BRIDGE_FILE = "prompt_ops_bridge.safetensors"


class BridgedWordEmbeddings(nn.Module):
    """``input_ids -> W[ids] + offset`` with the method's fused op; the method's own prompt is not used (PEFT's is)."""

    def __init__(self, method: PromptModule):
        super().__init__()
        self.method = method
        method.prompt.requires_grad_(False)  # PEFT's prompt is the one that trains and gets prepended

    @property
    def weight(self) -> torch.Tensor:
        return self.method.embedding.weight

    def offset_parameters(self) -> dict[str, nn.Parameter]:
        return {
            name: p
            for name, p in self.method.named_parameters()
            if name != "prompt" and not name.startswith("embedding.")
        }

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.method.embed_tokens(input_ids, 0)


def bridge_peft(peft_model: nn.Module, config: DePTConfig | ADePTConfig, backend: str | None = None) -> nn.Module:
    """Put DePT's or ADePT's fused offset under a PEFT prompt-tuning model (in place); returns ``peft_model``."""
    config = check_config(config, (DePTConfig, ADePTConfig))  # offset methods only
    embedding = getattr(peft_model, "word_embeddings", None)
    if isinstance(embedding, BridgedWordEmbeddings):
        raise ValueError("peft_model is already bridged")
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(
            "peft_model must be a PEFT prompt-tuning PeftModel (with a word_embeddings nn.Embedding), got "
            f"{type(peft_model).__name__}"
        )
    method = config.build(embedding, backend=backend).to(embedding.weight.device)
    peft_model.word_embeddings = BridgedWordEmbeddings(method)
    return peft_model


def _bridged(peft_model: nn.Module) -> BridgedWordEmbeddings:
    embedding = getattr(peft_model, "word_embeddings", None)
    if not isinstance(embedding, BridgedWordEmbeddings):
        raise ValueError("peft_model is not bridged: call bridge_peft(peft_model, config) first")
    return embedding


def save_bridge(peft_model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the offset tensors PEFT does not save into ``directory / prompt_ops_bridge.safetensors``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in _bridged(peft_model).offset_parameters().items()}
    # The folder is created only once the model is known to be bridged (a refused call writes nothing), and the file
    # is replaced only once the new one is complete.
    folder = output_folder(directory)
    write_files(folder, {BRIDGE_FILE: lambda path: save_file(tensors, str(path))})
    return folder / BRIDGE_FILE


def load_bridge(peft_model: nn.Module, directory: str | os.PathLike) -> None:
    """Load the offset tensors saved by :func:`save_bridge` into a bridged model (checked before any copy)."""
    from safetensors.torch import load_file

    path = folder_path("directory", directory) / BRIDGE_FILE
    params = _bridged(peft_model).offset_parameters()
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise ValueError(f"{path}: not found") from None
    except Exception as err:
        raise ValueError(f"{path}: cannot be read as safetensors ({err})") from None
    if set(tensors) != set(params):
        raise ValueError(f"{path}: expected tensors {sorted(params)}, found {sorted(tensors)}")
    for name, param in params.items():
        if tensors[name].shape != param.shape or tensors[name].dtype != param.dtype:
            raise ValueError(
                f"{path}: {name} is {tuple(tensors[name].shape)} {tensors[name].dtype}, "
                f"expected {tuple(param.shape)} {param.dtype}"
            )
    check_finite(path, tensors)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])
