"""Checks of a tuned model's call arguments at the wrapper boundary: a wrong shape or type fails here, naming the
argument and the expected shape, instead of deep inside the base model (or, worse, silently broadcasting)."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from prompt_ops.ops.validation import device_memory

GENERATE_INT_ARGUMENTS = {"max_new_tokens": 1, "min_new_tokens": 0, "max_length": 1, "min_length": 0, "num_beams": 1}
"""The integer arguments of ``generate`` we check, with their least value (transformers fails on some, e.g.
``num_beams=0`` divides by zero)."""
POSITION_TABLES = ("wpe", "position_embeddings")
"""Names of learned absolute position tables (GPT-2; BERT, RoBERTa, DistilBERT): they bound a sequence's length."""
TOKEN_LEVEL_HEADS = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForTokenClassification")
SEQUENCE_LEVEL_HEADS = ("ForSequenceClassification",)
DEFAULT_NEW_TOKENS = 20
"""What ``generate`` appends when no length is set anywhere (transformers' default ``max_length``)."""


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
    if input_ids.is_meta:
        raise ValueError("input_ids are on the meta device, which holds no data: pass real token ids")
    return input_ids


def _position_table(model: nn.Module) -> tuple[str, nn.Embedding, int] | None:
    """``(name, table, first)``: the learned absolute position table of ``model`` and the first row it numbers
    positions from (RoBERTa's ``padding_idx + 1``, else 0), or None for models without one."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in POSITION_TABLES and isinstance(module, nn.Embedding):
            return name, module, module.padding_idx + 1 if module.padding_idx is not None else 0
    return None


def position_limit(model: nn.Module) -> tuple[str, int] | None:
    """``(name, count)`` of the learned absolute position table of ``model`` and the positions it numbers (RoBERTa's
    start after its padding index), or None for models without one (rotary, relative positions)."""
    table = _position_table(model)
    return None if table is None else (table[0], table[1].num_embeddings - table[2])


def first_position(model: nn.Module) -> int:
    """The position id of a sequence's first token in ``model``'s numbering: RoBERTa's ``padding_idx + 1``, else 0."""
    table = _position_table(model)
    return 0 if table is None else table[2]


def check_length(model: nn.Module, length: int, what: str) -> None:
    """A sequence of ``length`` positions (``what`` says how it adds up, naming the arguments) fits the model's
    position table, which would otherwise fail with an ``IndexError`` inside torch."""
    limit = position_limit(model)
    if limit is not None and length > limit[1]:
        raise ValueError(
            f"{what} make {length} positions, but the model's position embeddings ({limit[0]}) number {limit[1]}: "
            "shorten the input, the generation or the prompt"
        )


def generated_count(model: nn.Module, rows: int, seq_len: int, kwargs: dict) -> tuple[int, str]:
    """``(count, what)``: the most tokens a decoder-only ``generate`` over ``rows`` prompt rows and ``seq_len`` input
    tokens appends, and the setting that says so. ``max_new_tokens``, else ``max_length`` less the input it counts
    (the prompt rows too: the prompt is part of ``inputs_embeds``), each from ``kwargs`` or else the
    ``generation_config`` in use; with neither, transformers' default of :data:`DEFAULT_NEW_TOKENS`."""
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    settings = {name: kwargs.get(name, getattr(config, name, None)) for name in ("max_new_tokens", "max_length")}
    if settings["max_new_tokens"] is not None:
        return settings["max_new_tokens"], f"max_new_tokens = {settings['max_new_tokens']}"
    if settings["max_length"] is not None:
        return max(settings["max_length"] - rows - seq_len, 1), f"max_length = {settings['max_length']}"
    return DEFAULT_NEW_TOKENS, f"transformers' default of {DEFAULT_NEW_TOKENS} new tokens"


def check_generated_length(model: nn.Module, rows: int, seq_len: int, kwargs: dict) -> None:
    """A decoder-only ``generate`` numbers ``rows`` prompt rows, the ``seq_len`` input tokens and all but the last of
    the tokens it appends (:func:`generated_count`); a ``max_length`` argument leaves room for one new token."""
    max_length = kwargs.get("max_length")
    if kwargs.get("max_new_tokens") is None and isinstance(max_length, int) and max_length <= rows + seq_len:
        raise ValueError(
            f"max_length counts the {rows} prompt rows and input_ids' {seq_len} tokens, so it must be above "
            f"{rows + seq_len} to leave room for a new token, got {max_length}; or pass max_new_tokens"
        )
    new, setting = generated_count(model, rows, seq_len, kwargs)
    what = f"{rows} prompt rows, input_ids' {seq_len} tokens and {setting} (all but the last new token read back)"
    check_length(model, rows + seq_len + new - 1, what)


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
    if value.is_meta:
        raise ValueError("position_ids are on the meta device, which holds no data: pass real positions")


def check_position_range(
    model: nn.Module, position_ids: torch.Tensor | None, num_prompt: int, generated: int = 0
) -> None:
    """User ``position_ids`` (checked by :func:`check_position_ids`), shifted past ``num_prompt`` prompt rows, stay
    inside ``model``'s learned position table (an ``IndexError`` inside torch otherwise), and so do the ``generated``
    positions that ``generate`` numbers after each row's last. Models without a table (rotary, relative positions)
    take any."""
    table = _position_table(model)
    if position_ids is None or table is None:
        return
    name, embedding, first = table
    low = int(position_ids.min())
    high = max(int(position_ids.max()), int(position_ids[:, -1].max()) + generated)
    if low < first or high + num_prompt >= embedding.num_embeddings:
        what = f" and {generated} generated after the last" if generated else ""
        raise ValueError(
            f"position_ids must be in [{first}, {embedding.num_embeddings - num_prompt}) so that, shifted past the "
            f"{num_prompt} prompt rows, they{what} stay inside the model's position embeddings ({name}, "
            f"{embedding.num_embeddings} rows); got values from {low} to {high}"
        )


def label_level(model: object) -> str | None:
    """``"decoder"`` for encoder-decoder models (labels are the decoder's targets), ``"token"`` for heads whose
    labels follow the input (causal and masked LM, token classification), ``"sequence"`` for sequence
    classification, None when the class name says neither."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return "decoder"
    name = type(model).__name__
    if name.endswith(TOKEN_LEVEL_HEADS):
        return "token"
    if name.endswith(SEQUENCE_LEVEL_HEADS):
        return "sequence"
    return None


def check_labels(labels: object, shape: tuple[int, int], level: str | None, num_labels: int | None = None) -> bool:
    """Labels for an input of ``shape (B, L)`` and a head of ``level`` (:func:`label_level`): decoder targets are
    integers ``(B, T)``; token-level labels are integers of the input's shape; sequence-level ones are ``(B,)`` or,
    floating, ``(B, num_labels)`` (multi-label; ``num_labels`` the head's, where known); an unknown head takes
    either. Returns whether they are token-level."""
    if labels is None:
        return False
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    batch, _ = shape
    if level == "decoder":
        if labels.dim() != 2 or labels.shape[0] != batch or labels.shape[1] < 1 or labels.is_floating_point():
            raise ValueError(
                f"labels must be the decoder's integer targets of shape ({batch}, T) with T >= 1; got {labels.dtype} "
                f"of shape {tuple(labels.shape)}"
            )
        return False
    token_shaped = not labels.is_floating_point() and tuple(labels.shape) == tuple(shape)
    multi_label = (
        labels.dim() == 2 and labels.is_floating_point() and labels.shape[1] == (num_labels or labels.shape[1])
    )
    sequence_shaped = labels.dim() >= 1 and labels.shape[0] == batch and (labels.dim() == 1 or multi_label)
    token_level = token_shaped if level != "sequence" else False
    if token_level or (level != "token" and sequence_shaped):
        return token_level
    known = f" = ({batch}, {num_labels})" if num_labels else ""
    expected = {
        "token": f"{tuple(shape)}, the shape of input_ids, with integer labels (the model's head is token-level)",
        "sequence": f"({batch},) or, floating, ({batch}, num_labels){known} (the model's head is sequence-level)",
        None: f"({batch},) (sequence-level), {tuple(shape)} (token-level, the shape of input_ids) or, floating, "
        f"({batch}, num_labels) (multi-label)",
    }[level]
    raise ValueError(f"labels must have shape {expected}; got {labels.dtype} of shape {tuple(labels.shape)}")


def check_model_labels(labels: object, shape: tuple[int, int], model: nn.Module) -> bool:
    """:func:`check_labels` for ``model``'s head (its level and, for sequence classification, its ``num_labels``)."""
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    return check_labels(labels, shape, label_level(model), num_labels if isinstance(num_labels, int) else None)


def check_decoder_inputs(model: nn.Module, labels: object, kwargs: dict) -> None:
    """An encoder-decoder forward needs the decoder's input: ``decoder_input_ids`` (or ``decoder_inputs_embeds``), or
    ``labels`` that the model shifts into them. Without either, transformers complains about ``input_ids`` and
    ``inputs_embeds``, which the caller did give."""
    if labels is None and kwargs.get("decoder_input_ids") is None and kwargs.get("decoder_inputs_embeds") is None:
        raise ValueError(
            f"{type(model).__name__} is an encoder-decoder model: pass decoder_input_ids (or decoder_inputs_embeds) "
            "or labels to forward, or use generate()"
        )


def check_generation_fits(model: nn.Module, batch: int, kwargs: dict) -> None:
    """``generate`` with ``max_new_tokens`` / ``max_length`` so large that the hidden states of the positions alone
    (``batch x beams x positions x width`` values in the model's dtype, a lower bound of what any cache or
    recomputation holds) exceed the device's memory is refused, naming the argument. Without this, a model with no
    position table (rotary, relative) takes ``max_new_tokens=2**62`` and generates until it runs out of memory."""
    config = getattr(model, "config", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    param = next(model.parameters(), None)
    if not isinstance(width, int) or param is None:
        return
    memory = device_memory(param.device)
    beams = kwargs.get("num_beams") or 1
    for name in ("max_new_tokens", "max_length"):
        positions = kwargs.get(name)
        if positions is None or memory is None:
            continue
        needed = batch * beams * positions * width * param.element_size()
        if needed > memory:
            raise ValueError(
                f"{name} = {positions} asks for {positions} positions of width {width} for {batch * beams} "
                f"sequences, more than the {memory} bytes of memory on {param.device} hold: lower {name}"
            )


def check_generate_inputs(input_ids: object, attention_mask: object) -> None:
    """What ``generate`` reads before any hook can: integer ids ``(B, L)`` and a mask of their shape."""
    shape = tuple(check_ids(input_ids).shape)
    if attention_mask is not None and (
        not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != shape
    ):
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a tensor of the shape of input_ids {shape}, got {got}")


def check_generate_kwargs(kwargs: dict) -> None:
    """The length and beam arguments of ``generate`` are ints (or None) of at least their least value, and
    ``top_p`` is in ``(0, 1]``; transformers checks the rest."""
    for name, least in GENERATE_INT_ARGUMENTS.items():
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int >= {least} or None, got {type(value).__name__}")
        if value is not None and value < least:
            raise ValueError(f"{name} must be an int >= {least} or None, got {value}")
    top_p = kwargs.get("top_p")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")
