"""Checks of a tuned model's call arguments at the wrapper boundary: a wrong shape or type fails here, naming the
argument and the expected shape, instead of deep inside the base model (or, worse, silently broadcasting)."""

from __future__ import annotations

import torch

GENERATE_INT_ARGUMENTS = ("max_new_tokens", "min_new_tokens", "max_length", "min_length", "num_beams")


def check_ids(input_ids: object) -> torch.Tensor:
    """Token ids: an integer tensor ``(B, L)``."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids (B, L), got {type(input_ids).__name__}")
    if input_ids.dim() != 2 or input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(
            f"input_ids must be an integer tensor of shape (B, L), got {input_ids.dtype} of shape "
            f"{tuple(input_ids.shape)}"
        )
    return input_ids


def _integer_tensor(name: str, value: object, expected: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {value.dtype}")
    return value


def check_token_type_ids(token_type_ids: object, shape: tuple[int, int]) -> None:
    """Segment ids of the input's shape ``(B, L)``."""
    if token_type_ids is None:
        return
    value = _integer_tensor("token_type_ids", token_type_ids, str(shape))
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"token_type_ids must have the shape of input_ids {tuple(shape)}, got {tuple(value.shape)}")


def check_position_ids(position_ids: object, shape: tuple[int, int]) -> None:
    """Positions ``(B, L)`` or ``(1, L)`` for an input of ``shape``."""
    if position_ids is None:
        return
    batch, length = shape
    value = _integer_tensor("position_ids", position_ids, f"({batch}, {length}) or (1, {length})")
    if value.dim() != 2 or value.shape[1] != length or value.shape[0] not in (1, batch):
        raise ValueError(
            f"position_ids must have shape ({batch}, {length}) or (1, {length}) for input_ids of shape {shape}, got "
            f"{tuple(value.shape)}"
        )


def check_labels(labels: object, shape: tuple[int, int]) -> bool:
    """Labels for an input of ``shape (B, L)``: sequence-level (``(B,)``, or floating ``(B, C)`` for multi-label
    classification) or token-level (integer, of the input's shape). Returns whether they are token-level."""
    if labels is None:
        return False
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    batch, _ = shape
    token_level = labels.dim() >= 2 and not labels.is_floating_point()
    if labels.dim() == 0 or labels.shape[0] != batch or (token_level and tuple(labels.shape) != tuple(shape)):
        raise ValueError(
            f"labels must have shape ({batch},) (sequence-level), the shape of input_ids {tuple(shape)} "
            f"(token-level) or, floating, ({batch}, num_labels) (multi-label); got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    return token_level


def check_generate_kwargs(kwargs: dict) -> None:
    """The length arguments of ``generate`` are ints (or None); transformers checks their values."""
    for name in GENERATE_INT_ARGUMENTS:
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
