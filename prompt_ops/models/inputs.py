"""Checks of a tuned model's call arguments at the wrapper boundary: a wrong shape or type fails here, naming the
argument and the expected shape, instead of deep inside the base model (or, worse, silently broadcasting)."""

from __future__ import annotations

import torch

GENERATE_INT_ARGUMENTS = ("max_new_tokens", "min_new_tokens", "max_length", "min_length", "num_beams")
TOKEN_LEVEL_HEADS = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForTokenClassification")
SEQUENCE_LEVEL_HEADS = ("ForSequenceClassification",)


def check_ids(input_ids: object) -> torch.Tensor:
    """Token ids for a model: an integer tensor ``(B, L)`` with ``B, L >= 1`` (the models reshape by ``B``)."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids (B, L), got {type(input_ids).__name__}")
    integer = not (input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool)
    if input_ids.dim() != 2 or not integer or input_ids.numel() == 0:
        raise ValueError(
            f"input_ids must be an integer tensor of shape (B, L) with B, L >= 1, got {input_ids.dtype} of shape "
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


def label_level(model: object) -> str | None:
    """``"token"`` for heads whose labels follow the input (causal and masked LM, token classification),
    ``"sequence"`` for sequence classification, None when the class name says neither."""
    name = type(model).__name__
    if name.endswith(TOKEN_LEVEL_HEADS):
        return "token"
    if name.endswith(SEQUENCE_LEVEL_HEADS):
        return "sequence"
    return None


def check_labels(labels: object, shape: tuple[int, int], level: str | None) -> bool:
    """Labels for an input of ``shape (B, L)`` and a head of ``level`` (:func:`label_level`): token-level labels are
    integers of the input's shape; sequence-level ones are ``(B,)`` or, floating, ``(B, num_labels)``
    (multi-label); an unknown head takes either. Returns whether they are token-level."""
    if labels is None:
        return False
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    batch, _ = shape
    token_shaped = not labels.is_floating_point() and tuple(labels.shape) == tuple(shape)
    sequence_shaped = (
        labels.dim() >= 1 and labels.shape[0] == batch and (labels.dim() == 1 or labels.is_floating_point())
    )
    token_level = token_shaped if level != "sequence" else False
    if token_level or (level != "token" and sequence_shaped):
        return token_level
    expected = {
        "token": f"{tuple(shape)}, the shape of input_ids, with integer labels (the model's head is token-level)",
        "sequence": f"({batch},) or, floating, ({batch}, num_labels) (the model's head is sequence-level)",
        None: f"({batch},) (sequence-level), {tuple(shape)} (token-level, the shape of input_ids) or, floating, "
        f"({batch}, num_labels) (multi-label)",
    }[level]
    raise ValueError(f"labels must have shape {expected}; got {labels.dtype} of shape {tuple(labels.shape)}")


def check_generate_inputs(input_ids: object, attention_mask: object) -> None:
    """What ``generate`` reads before any hook can: integer ids ``(B, L)`` and a mask of their shape."""
    shape = tuple(check_ids(input_ids).shape)
    if attention_mask is not None and (
        not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != shape
    ):
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a tensor of the shape of input_ids {shape}, got {got}")


def check_generate_kwargs(kwargs: dict) -> None:
    """The length arguments of ``generate`` are ints (or None); transformers checks their values."""
    for name in GENERATE_INT_ARGUMENTS:
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
