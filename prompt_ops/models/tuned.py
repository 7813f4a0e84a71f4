"""What every tuned-model wrapper shares: the frozen ``base_model``, the trainable ``prompt_module`` built from a
method config, and the adapter (the method's own parameters) it saves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from prompt_ops.methods.groups import recipe_groups
from prompt_ops.models.adapter_files import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    output_folder,
    write_files,
)
from prompt_ops.models.configs import MethodConfig


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The model's input ``nn.Embedding``, or a ``TypeError`` saying what was expected.

    The fused ops read the table whole, so a sharded table (a ``DTensor``, e.g. from FSDP2's ``fully_shard``) is
    refused with a ``ValueError`` that says how to shard instead: the tuned model as the FSDP root, so that the
    table is gathered with the root's parameters before each forward."""
    if not hasattr(model, "get_input_embeddings"):
        raise TypeError(f"model must be a Hugging Face PreTrainedModel, got {type(model).__name__}")
    try:
        embedding = model.get_input_embeddings()
    except NotImplementedError:  # transformers' default for models without a token embedding
        raise TypeError(
            f"model ({type(model).__name__}) has no input embedding (get_input_embeddings is not implemented); "
            "prompt tuning needs a model that reads token ids through an nn.Embedding"
        ) from None
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"the model's input embedding must be an nn.Embedding, got {type(embedding).__name__}")
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        if isinstance(embedding.weight, DTensor):
            raise ValueError(
                f"the model's input embedding weight is sharded (a DTensor, {embedding.weight.placements}), but "
                "prompt_ops reads the whole table: attach() the method before sharding, then fully_shard the layers "
                "and last the tuned model itself, never the base model or a module holding the input embedding, so "
                "the table is gathered before each forward; outside a forward (e.g. to save) call tuned.unshard() first"
            )
    return embedding


def model_embedding(model: object) -> nn.Embedding:
    """The input embedding of ``model``, which must be an ``nn.Module`` (a ``TypeError`` naming ``model``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a Hugging Face PreTrainedModel (a torch.nn.Module), got {type(model).__name__}")
    return input_embedding(model)


class TunedModel(nn.Module):
    """Base of :class:`PromptTunedModel` and :class:`LatePromptTunedModel`: subclasses set ``base_model``,
    ``config`` and ``prompt_module``."""

    base_model: nn.Module
    prompt_module: nn.Module
    config: MethodConfig

    _unloaded = False

    def _embedding(self) -> nn.Embedding:
        return input_embedding(self.base_model)

    def unload(self) -> nn.Module:
        """Return the base model (still frozen) without the method; this wrapper then refuses to run. Calling it
        again returns the same model."""
        self._unloaded = True
        return self.base_model

    def _check_loaded(self) -> None:
        """A ``ValueError`` once :meth:`unload` has run: the wrapper would run the bare base model, without the
        method, and say nothing."""
        if self._unloaded:
            raise ValueError(
                f"this {type(self).__name__} was unloaded (unload() returned its base model): attach the method "
                "again (prompt_ops.models.attach or load_adapter) to run it"
            )

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The method's own parameters (not the frozen embedding): what an adapter file holds."""
        return {
            name: param for name, param in self.prompt_module.named_parameters() if not name.startswith("embedding.")
        }

    def parameter_groups(
        self, lr: float | None = None, offset_lr: float | None = None, weight_decay: float | None = None
    ) -> list[dict]:
        """``torch.optim`` parameter groups of the adapter, the method's split (:mod:`prompt_ops.methods.groups`;
        e.g. DePT: the prompt at ``lr``, ``lora_a`` and ``lora_b`` at ``offset_lr``), each rate that is None taken
        from the config's :attr:`~prompt_ops.models.configs.MethodConfig.recipe`::

            optimizer = torch.optim.AdamW(tuned.parameter_groups(lr=3e-1, offset_lr=5e-4))

        The groups hold exactly the trainable parameters: a base-model tensor unfrozen by hand is refused by name.
        Rates must be finite numbers ``>= 0`` (a ``TypeError``/``ValueError`` naming the argument)."""
        module = self.prompt_module
        return recipe_groups(self, module.GROUPS, module.RECIPE, lr, offset_lr, weight_decay, "prompt_module.")

    def trainable_parameters(self) -> str:
        """PEFT-style summary: ``trainable params: N || all params: M || trainable%: P``."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return (
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    def save_adapter(self, directory: str | os.PathLike) -> Path:
        """Write ``adapter.safetensors`` + ``adapter_config.json`` into ``directory`` (created if needed); returns
        the folder. Files already there are replaced only once both new ones are written."""
        return write_adapter(directory, self.config, self.adapter_state_dict(), self._embedding())


def write_adapter(
    directory: str | os.PathLike, config: MethodConfig, tensors: dict[str, torch.Tensor], embedding: nn.Embedding
) -> Path:
    """Write one adapter (``config`` and its parameters ``tensors`` under the method module's names, for a model
    whose input embedding is ``embedding``) into ``directory`` (created if needed) in the format
    :func:`prompt_ops.models.load_adapter` reads; returns the folder. Files already there are replaced only once both
    new ones are written."""
    from safetensors.torch import save_file

    from prompt_ops import __version__

    tensors = {name: param.detach().contiguous().cpu() for name, param in tensors.items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "prompt_ops_version": __version__,
        "config": config.to_dict(),
        "hidden_size": embedding.embedding_dim,
        "vocab_size": embedding.num_embeddings,
    }
    text = json.dumps(meta, indent=2) + "\n"
    folder = output_folder(directory)
    write_files(
        folder,
        {WEIGHTS_FILE: lambda path: save_file(tensors, str(path)), CONFIG_FILE: lambda path: path.write_text(text)},
    )
    return folder
