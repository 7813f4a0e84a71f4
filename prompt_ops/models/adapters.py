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
import json
import os
from pathlib import Path

import torch
from torch import nn

from prompt_ops.methods.official import read_json_config, read_official_dept
from prompt_ops.models.attach import attach
from prompt_ops.models.configs import DePTConfig, MethodConfig, config_from_dict
from prompt_ops.models.tuned import TunedModel, input_embedding

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "prompt_ops-adapter"
FORMAT_VERSION = 1


def save_adapter(tuned: TunedModel, directory: str | os.PathLike) -> Path:
    """Write the adapter of ``tuned`` into ``directory`` (created if needed); returns the folder."""
    from safetensors.torch import save_file

    from prompt_ops import __version__

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: param.detach().contiguous().cpu() for name, param in tuned.adapter_state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    embedding = input_embedding(tuned.base_model)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "prompt_ops_version": __version__,
        "config": tuned.config.to_dict(),
        "hidden_size": embedding.embedding_dim,
        "vocab_size": embedding.num_embeddings,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def _read_ours(folder: Path, data: dict) -> tuple[MethodConfig, dict[str, torch.Tensor], int | None]:
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
    return config, tensors, data.get("hidden_size")


def _read_official(folder: Path) -> tuple[MethodConfig, dict[str, torch.Tensor], int]:
    adapter = read_official_dept(folder)
    config = DePTConfig(
        num_tokens=adapter.num_tokens, rank=adapter.rank, max_length=adapter.max_length, lora_alpha=adapter.lora_alpha
    )
    return config, {"prompt": adapter.prompt, "lora_a": adapter.lora_a, "lora_b": adapter.lora_b}, adapter.token_dim


def _check_tensors(source: Path, config: MethodConfig, tensors: dict, embedding: nn.Embedding) -> None:
    """Names, shapes and dtypes against the module ``config`` builds, built on the meta device (no memory)."""
    init_free = {"init_token_ids": None} if hasattr(config, "init_token_ids") else {}
    shapes_only = dataclasses.replace(config, **init_free)  # the init does not change any shape
    with torch.device("meta"):
        probe = shapes_only.build(nn.Embedding(embedding.num_embeddings, embedding.embedding_dim))
    expected = {name: p for name, p in probe.named_parameters() if not name.startswith("embedding.")}
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


def load_adapter(model: nn.Module, directory: str | os.PathLike, backend: str | None = None) -> TunedModel:
    """Rebuild the prompt-tuned model from a saved (or an official DePT) adapter folder."""
    folder = Path(directory)
    data = read_json_config(folder / CONFIG_FILE)
    official = data.get("peft_type") == "PROMPT_TUNING_LORA"
    config, tensors, hidden = _read_official(folder) if official else _read_ours(folder, data)
    source = folder / ("adapter_model.bin" if official else WEIGHTS_FILE)
    embedding = input_embedding(model)
    if hidden is not None and hidden != embedding.embedding_dim:
        raise ValueError(
            f"{folder / CONFIG_FILE}: the adapter was trained for hidden size {hidden}, the model's input embedding "
            f"has {embedding.embedding_dim}"
        )
    _check_tensors(source, config, tensors, embedding)
    tuned = attach(model, config, backend=backend)
    with torch.no_grad():
        for name, param in tuned.adapter_state_dict().items():
            param.copy_(tensors[name])
    return tuned
