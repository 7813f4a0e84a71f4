"""Argument checks shared by the functional entries: each failure names the argument and what was expected."""

from __future__ import annotations

import math
import numbers

import torch

from prompt_ops.ops.backend import resolve_backend

TOKEN_ID_DTYPES = (torch.int64, torch.int32)
TRITON_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(name: str, value: object, ndim: int, layout: str) -> torch.Tensor:
    """``value`` must be a tensor with ``ndim`` dimensions; ``layout`` names them, e.g. ``"(B, L)"``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout} ({ndim}-D), got shape {tuple(value.shape)}")
    return value


def check_float(name: str, value: torch.Tensor, backend: str) -> None:
    """Floating point; the Triton backend takes fp32, fp16 and bf16."""
    allowed = TRITON_FLOAT_DTYPES if backend == "triton" else None
    if not value.is_floating_point() or (allowed is not None and value.dtype not in allowed):
        expected = "float32, float16 or bfloat16" if allowed else "a floating-point dtype"
        raise TypeError(f"{name} must be {expected} for backend={backend!r}, got {value.dtype}")


def check_scale(scale: object) -> float:
    """A finite real number."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """All given tensors on one device; returns it."""
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise ValueError(f"all tensors must be on one device, got {where}")
    return next(iter(present.values())).device


def check_embed_inputs(
    input_ids: object,
    weight: object,
    prompt: object,
    attention_mask: object,
    backend: str,
) -> None:
    """The arguments every prompt-embedding op shares: ids ``(B, L)``, a frozen table ``(V, d)``, a dense prompt
    ``(m, d)`` (None for methods that build it from factors) and an optional mask ``(B, L)``."""
    ids = check_tensor("input_ids", input_ids, 2, "(B, L)")
    if ids.dtype not in TOKEN_ID_DTYPES:
        raise TypeError(f"input_ids must hold int64 or int32 token ids, got {ids.dtype}")
    table = check_tensor("weight", weight, 2, "(V, d)")
    check_float("weight", table, backend)
    if table.shape[1] == 0:
        raise ValueError(f"weight must have shape (V, d) with d >= 1, got {tuple(table.shape)}")
    if table.requires_grad:
        raise ValueError(
            "weight (the word-embedding table) requires grad, but it is frozen in prompt tuning and gets no "
            "gradient: call weight.requires_grad_(False) (or freeze the model) first"
        )
    if prompt is not None:
        soft = check_tensor("prompt", prompt, 2, "(m, d)")
        check_float("prompt", soft, backend)
        if soft.shape[1] != table.shape[1]:
            raise ValueError(
                f"prompt must have shape (m, d) with d = weight.shape[1] = {table.shape[1]}, got {tuple(soft.shape)}"
            )
    if attention_mask is not None:
        mask = check_tensor("attention_mask", attention_mask, 2, "(B, L)")
        if mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(ids.shape)}, got {tuple(mask.shape)}"
            )
        if mask.is_complex():
            raise TypeError(f"attention_mask must be bool, integer or float, got {mask.dtype}")


def check_ids_in_range(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Every id in ``[0, vocab_size)``. Data-dependent (one device sync): switch off with ``check_ids=False``."""
    if input_ids.numel() == 0:
        return
    low, high = torch.aminmax(input_ids)
    low, high = int(low), int(high)
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"input_ids must be in [0, {vocab_size}) (the rows of weight), found token id {bad}")


def validate_params(
    params: dict[str, tuple[object, int, str]], backend: str | None, **others: torch.Tensor | None
) -> str:
    """Method parameters: each ``name -> (value, ndim, layout)`` must be a tensor of that rank, on one device with
    them and with ``others`` (already checked tensors, or None), and floating point for the resolved backend, which
    is returned."""
    for name, (value, ndim, layout) in params.items():
        check_tensor(name, value, ndim, layout)
    device = check_same_device(**others, **{name: value for name, (value, _, _) in params.items()})
    backend = resolve_backend(backend, device)
    for name, (value, _, _) in params.items():
        check_float(name, value, backend)
    return backend


def validate_embed_call(
    input_ids: object,
    weight: object,
    prompt: object,
    attention_mask: object,
    backend: str | None,
    params: dict[str, tuple[object, int, str]],
) -> str:
    """The front half of every prompt-embedding entry: tensors and ranks, one device, the backend, then dtypes and
    the shared shape rules. ``params`` maps each method parameter's name to ``(value, ndim, layout)``; each must be a
    floating tensor. ``prompt`` is None for methods that build the prompt from their parameters. Returns the resolved
    backend."""
    check_tensor("input_ids", input_ids, 2, "(B, L)")
    check_tensor("weight", weight, 2, "(V, d)")
    if prompt is not None:
        check_tensor("prompt", prompt, 2, "(m, d)")
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask, 2, "(B, L)")
    backend = validate_params(
        params, backend, input_ids=input_ids, weight=weight, prompt=prompt, attention_mask=attention_mask
    )
    check_embed_inputs(input_ids, weight, prompt, attention_mask, backend)
    return backend
