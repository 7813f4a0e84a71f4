"""Reading adapters released with the official DePT code (an old-PEFT fork, ``PROMPT_TUNING_LORA``).

A checkpoint folder holds ``adapter_config.json`` and ``adapter_model.bin`` (a torch pickle, often saved from a GPU).
The pickle is opened only with ``weights_only=True`` and mapped to the CPU. Every problem raises a ``ValueError``
that names the file.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from pathlib import Path

import torch

from prompt_ops.methods.base import FLOAT32_MAX

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.bin"
PROMPT_KEY = "prompt_embeddings"
LORA_A_KEY = "prompt_encoder.lora_embedding_A"
LORA_B_KEY = "prompt_encoder.lora_embedding_B"


@dataclasses.dataclass(frozen=True)
class OfficialDePT:
    """An official DePT adapter: hyper-parameters and the three fp32 tensors."""

    num_tokens: int
    rank: int
    max_length: int
    lora_alpha: float
    token_dim: int
    prompt: torch.Tensor  # (m, d)
    lora_a: torch.Tensor  # (L_max, r)
    lora_b: torch.Tensor  # (r, d)


INT_FIELDS = ("num_virtual_tokens", "r", "max_length", "token_dim")


def folder_path(name: str, value: object) -> Path:
    """An adapter folder argument (``str`` or ``os.PathLike``) as a ``Path``; a ``TypeError`` naming ``name``
    otherwise."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike folder, got {type(value).__name__}")
    return Path(value)


def check_finite(source: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Every floating tensor read from ``source`` holds only finite values: a NaN or infinity in an adapter is a
    corrupted file (its outputs would be NaN), refused with a ``ValueError`` naming the file and the tensor."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{source}: {name} holds NaN or infinity; the adapter file is corrupted")


def read_json_config(path: Path) -> dict:
    """An adapter folder's JSON config as a dict, or a ``ValueError`` naming the file and the problem."""
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: not found; an adapter folder holds {path.name}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError, as are bad numbers
        raise ValueError(f"{path}: not a readable JSON adapter config ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _read_config(path: Path) -> dict:
    config = read_json_config(path)
    if config.get("peft_type") != "PROMPT_TUNING_LORA":
        raise ValueError(
            f"{path}: peft_type is {config.get('peft_type')!r}, but a DePT adapter has 'PROMPT_TUNING_LORA'"
        )
    for key in INT_FIELDS:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{path}: field {key!r} must be a positive integer, got {value!r}")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha <= FLOAT32_MAX:  # NaN fails
        raise ValueError(f"{path}: field 'lora_alpha' must be a positive number, finite in float32, got {alpha!r}")
    return config


def _read_weights(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: not found; an official DePT adapter folder holds {WEIGHTS_FILE}") from None
    except Exception as err:  # truncated, corrupted or unsafe pickles all land here
        raise ValueError(f"{path}: cannot be read as a weights-only torch checkpoint ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors")
    return state


def read_official_dept(folder: str | os.PathLike) -> OfficialDePT:
    """Read and check an official DePT adapter folder (e.g. the authors' ``checkpoints/sst2``)."""
    folder = folder_path("path", folder)
    config = _read_config(folder / CONFIG_FILE)
    weights_path = folder / WEIGHTS_FILE
    state = _read_weights(weights_path)
    m, r, max_length, d = (config[k] for k in INT_FIELDS)
    expected = {PROMPT_KEY: (m, d), LORA_A_KEY: (max_length, r), LORA_B_KEY: (r, d)}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{weights_path}: expected tensors {sorted(expected)}; missing {missing}, unexpected {extra}")
    for key, shape in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{weights_path}: {key} has shape {tuple(tensor.shape)} but {CONFIG_FILE} implies {shape}")
        if not tensor.is_floating_point():
            raise ValueError(f"{weights_path}: {key} must be floating point, got {tensor.dtype}")
    check_finite(weights_path, {key: state[key] for key in expected})
    return OfficialDePT(
        num_tokens=m,
        rank=r,
        max_length=max_length,
        lora_alpha=float(config["lora_alpha"]),
        token_dim=d,
        prompt=state[PROMPT_KEY].float(),
        lora_a=state[LORA_A_KEY].float(),
        lora_b=state[LORA_B_KEY].float(),
    )
