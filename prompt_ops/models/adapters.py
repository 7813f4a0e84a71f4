"""Adapters on disk: ``adapter.safetensors`` (the method's parameters only, kilobytes) + ``adapter_config.json``.

``save_adapter(tuned, directory)`` writes both; ``load_adapter(model, directory)`` checks everything (the config's
method and fields, the model's width, every tensor's name, shape and dtype) *before* touching the model, then
attaches and copies the tensors: the round trip is bitwise exact, and a bad file raises a ``ValueError`` naming the
file and the problem while the model stays as it was. Folders released with the official DePT code
(``adapter_model.bin`` + an old-PEFT ``adapter_config.json`` with ``peft_type: PROMPT_TUNING_LORA``) load through
the same entry (the pickle is read with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from prompt_ops.methods.base import check_backend
from prompt_ops.methods.official import WEIGHTS_FILE as OFFICIAL_WEIGHTS_FILE
from prompt_ops.methods.official import check_finite, folder_path, read_json_config, read_official_dept
from prompt_ops.models.adapter_files import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE
from prompt_ops.models.attach import attach
from prompt_ops.models.configs import DePTConfig, LPTConfig, MethodConfig, config_from_dict
from prompt_ops.models.late import lpt_stack
from prompt_ops.models.tuned import TunedModel, model_embedding
from prompt_ops.ops.positions import check_positions

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load_adapter", "save_adapter"]

MODEL_SIZES = {"hidden_size": "hidden size", "vocab_size": "vocabulary size"}
"""The base model's sizes an adapter's config records (``key -> what it is``), checked against the model's."""


def save_adapter(tuned: TunedModel, directory: str | os.PathLike) -> Path:
    """Write the adapter of ``tuned`` (a model returned by :func:`attach`) into ``directory`` (created if needed);
    returns the folder. Files already there are replaced only once both new ones are written."""
    if not isinstance(tuned, TunedModel):
        raise TypeError(
            f"tuned must be a model returned by prompt_ops.models.attach (a PromptTunedModel or "
            f"LatePromptTunedModel), got {type(tuned).__name__}"
        )
    return tuned.save_adapter(directory)


def _read_ours(folder: Path, data: dict) -> tuple[MethodConfig, dict[str, torch.Tensor], dict[str, object]]:
    config_path = folder / CONFIG_FILE
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: not a prompt_ops adapter (format {data.get('format')!r}, version "
            f"{data.get('format_version')!r}; expected {FORMAT!r} version {FORMAT_VERSION})"
        )
    if not isinstance(data.get("config"), dict):
        raise ValueError(f"{config_path}: missing the 'config' object")
    config = config_from_dict(data["config"], str(config_path))
    weights_path = folder / WEIGHTS_FILE
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights_path))
    except FileNotFoundError:
        raise ValueError(f"{weights_path}: not found; an adapter folder holds {WEIGHTS_FILE}") from None
    except Exception as err:  # truncated or corrupted files: safetensors raises its own error types
        raise ValueError(f"{weights_path}: cannot be read as safetensors ({err})") from None
    return config, tensors, {key: data[key] for key in MODEL_SIZES if key in data}


def _read_official(folder: Path) -> tuple[MethodConfig, dict[str, torch.Tensor], dict[str, object]]:
    adapter = read_official_dept(folder)
    config = DePTConfig(
        num_tokens=adapter.num_tokens, rank=adapter.rank, max_length=adapter.max_length, lora_alpha=adapter.lora_alpha
    )
    tensors = {"prompt": adapter.prompt, "lora_a": adapter.lora_a, "lora_b": adapter.lora_b}
    return config, tensors, {"hidden_size": adapter.token_dim}


def _check_model_sizes(config_path: Path, sizes: dict[str, object], embedding: nn.Embedding) -> None:
    """The base model the adapter was saved from (its width and vocabulary, where the file records them) is the
    model's: an adapter of another model is a ``ValueError`` naming the file."""
    actual = {"hidden_size": embedding.embedding_dim, "vocab_size": embedding.num_embeddings}
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value != actual[key]:
            raise ValueError(
                f"{config_path}: the adapter was saved from a model with {MODEL_SIZES[key]} {value!r}, but the "
                f"model's input embedding has {actual[key]}: it belongs to another base model"
            )


def _resolve(config: MethodConfig, model: nn.Module, embedding: nn.Embedding, config_path: Path):
    """The config as ``attach`` will use it, and the adapter parameters it implies, built on the meta device (no
    memory): every field is checked against ``model`` here, and a bad one is a ``ValueError`` naming the file."""
    stack = lpt_stack(model) if isinstance(config, LPTConfig) else None  # a model LPT cannot take: the model's error
    try:
        if stack is not None:
            config = config.resolved(len(stack.layers), stack.causal)
        with torch.device("meta"):
            probe = config.build(nn.Embedding(embedding.num_embeddings, embedding.embedding_dim))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: bad field in 'config': {err}") from None
    return config, {name: p for name, p in probe.named_parameters() if not name.startswith("embedding.")}


def check_adapter_tensors(source: Path | str, expected: dict[str, torch.Tensor], tensors: dict) -> None:
    """Names, shapes, dtypes and values (finite) of an adapter's tensors against the parameters the config implies;
    ``source`` (the file, or the argument that holds them) names them in errors."""
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{source}: expected tensors {sorted(expected)}; missing {missing}, unexpected {extra}")
    for name, param in expected.items():
        tensor = tensors[name]
        if tensor.shape != param.shape:
            raise ValueError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, the config implies {tuple(param.shape)}"
            )
        if tensor.dtype != param.dtype:
            raise ValueError(f"{source}: {name} has dtype {tensor.dtype}, expected {param.dtype}")
    check_finite(source, tensors)


def read_adapter(
    model: nn.Module, directory: str | os.PathLike, positions: str | None = None
) -> tuple[MethodConfig, dict[str, torch.Tensor]]:
    """The config and tensors of a saved (or an official DePT) adapter folder, every one checked against ``model``
    (its width and vocabulary, the config's fields, each tensor's name, shape, dtype and values) without touching
    it; a bad file is a ``ValueError`` naming it. ``positions`` as :func:`load_adapter` takes it."""
    folder = folder_path("directory", directory)
    if positions is not None:
        check_positions(positions)
    embedding = model_embedding(model)
    config_path = folder / CONFIG_FILE
    data = read_json_config(config_path)
    official = data.get("peft_type") == "PROMPT_TUNING_LORA"
    config, tensors, sizes = _read_official(folder) if official else _read_ours(folder, data)
    if positions is not None:
        config = dataclasses.replace(config, positions=positions)
    source = folder / (OFFICIAL_WEIGHTS_FILE if official else WEIGHTS_FILE)
    _check_model_sizes(config_path, sizes, embedding)
    config, expected = _resolve(config, model, embedding, config_path)
    check_adapter_tensors(source, expected, tensors)
    return config, tensors


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, backend: str | None = None, positions: str | None = None
) -> TunedModel:
    """Rebuild the prompt-tuned model from a saved (or an official DePT) adapter folder. Everything is checked
    before ``model`` is touched; a bad file is a ``ValueError`` naming it.

    ``positions`` overrides the saved position convention (``"tokens"`` or ``"absolute"``, see
    :mod:`prompt_ops.ops.positions`); None keeps the saved one. Adapters saved before the option existed, and
    official DePT folders, load with ``"tokens"``: pass ``positions="absolute"`` for an adapter trained on inputs
    left-padded the way the official decoder-only DePT setup pads them."""
    folder_path("directory", directory)
    check_backend(backend)
    config, tensors = read_adapter(model, directory, positions)
    tuned = attach(model, config, backend=backend)
    with torch.no_grad():
        for name, param in tuned.adapter_state_dict().items():
            param.copy_(tensors[name])
    return tuned
