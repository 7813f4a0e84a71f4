"""What every soft-prompt method shares: a frozen word embedding and a trainable ``(m, d)`` prompt, and the argument
checks of every module constructor.

Constructors check all their arguments (types, ranges, the sizes of the parameters they imply) *before* they touch
anything: the word embedding is frozen only once nothing can fail any more, so a refused call leaves it as it was.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from prompt_ops.methods.groups import ParameterGroups
from prompt_ops.ops.backend import BACKENDS
from prompt_ops.ops.dept_embed import dept_embed
from prompt_ops.ops.positions import check_positions
from prompt_ops.ops.validation import check_tensor

MAX_PARAMETER_ELEMENTS = 2**31 - 1
"""The most elements one parameter of a method may hold (8 GiB in fp32; real adapters hold kilobytes)."""
FLOAT32_MAX = torch.finfo(torch.float32).max


def check_positive_int(name: str, value: object) -> int:
    """An int ``>= 1`` (numpy integers too; not bool), as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_lora_alpha(lora_alpha: object) -> float:
    """DePT's ``lora_alpha``: a finite positive number."""
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, numbers.Real):
        raise TypeError(f"lora_alpha must be a positive number, got {type(lora_alpha).__name__}")
    if not (math.isfinite(lora_alpha) and 0 < lora_alpha <= FLOAT32_MAX):  # the kernels scale in fp32
        raise ValueError(f"lora_alpha must be a positive number and finite in float32, got {lora_alpha!r}")
    return float(lora_alpha)


def check_backend(backend: object) -> str | None:
    """``None`` (read ``$PROMPT_OPS_BACKEND`` at call time) or one of :data:`prompt_ops.ops.backend.BACKENDS`."""
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    return backend


def check_sizes(**parameters: dict[str, int]) -> None:
    """Each parameter (by name) with its dimensions as ``{what sets it: size}`` must fit
    :data:`MAX_PARAMETER_ELEMENTS`; otherwise a ``ValueError`` naming the arguments that set it, before any
    allocation."""
    for parameter, dims in parameters.items():
        count = math.prod(dims.values())
        if count > MAX_PARAMETER_ELEMENTS:
            layout = ", ".join(f"{name}={size}" for name, size in dims.items())
            raise ValueError(
                f"{parameter} ({layout}) would hold {count:,} elements, more than the {MAX_PARAMETER_ELEMENTS:,} a "
                f"method parameter may hold: lower {' or '.join(name for name in dims if name != 'embedding width')}"
            )


def check_embedding(embedding: object) -> nn.Embedding:
    """The frozen word table: an ``nn.Embedding`` with floating-point weights and at least one row and column."""
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"embedding must be a torch.nn.Embedding, got {type(embedding).__name__}")
    weight = embedding.weight
    if not weight.is_floating_point():
        raise TypeError(f"embedding must have floating-point weights, got {weight.dtype}")
    if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"embedding must have a (V, d) weight with V, d >= 1, got {tuple(weight.shape)}")
    return embedding


def token_ids(init_token_ids: object) -> list[int] | None:
    """``init_token_ids`` as a list of Python ints: a 1-D list, tuple, integer tensor or integer array of at least one
    id, or None. Floats, bools, strings and nested sequences are refused (never truncated)."""
    if init_token_ids is None:
        return None
    expected = "a 1-D sequence of integer token ids (list, tuple, integer tensor or array) or None"
    value = init_token_ids
    if isinstance(value, torch.Tensor) or (hasattr(value, "ndim") and hasattr(value, "tolist")):  # torch, numpy
        if value.ndim != 1:
            raise ValueError(f"init_token_ids must be {expected}, got {value.ndim}-D")
        value = value.tolist()  # integer dtypes give ints; float / bool dtypes give floats / bools, refused below
    elif isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"init_token_ids must be {expected}, got {type(init_token_ids).__name__}")
    ids = list(value)
    for item in ids:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise TypeError(f"init_token_ids must be {expected}; it holds a {type(item).__name__} ({item!r})")
    if not ids:
        raise ValueError("init_token_ids must hold at least one token id, got an empty sequence")
    return [int(item) for item in ids]


def check_token_ids(init_token_ids: object, vocab_size: int) -> list[int] | None:
    """:func:`token_ids`, each in ``[0, vocab_size)``."""
    ids = token_ids(init_token_ids)
    if ids is not None and not all(0 <= item < vocab_size for item in ids):
        raise ValueError(
            f"init_token_ids must be in [0, {vocab_size}) (the rows of the embedding), got ids from {min(ids)} to "
            f"{max(ids)}"
        )
    return ids


def initial_prompt(weight: torch.Tensor, num_tokens: int, ids: list[int] | None) -> torch.Tensor:
    """The official (PEFT) prompt init, as an fp32 ``(num_tokens, d)`` tensor; ``ids`` checked by
    :func:`check_token_ids`.

    With token ids (PEFT ``TEXT``): the ids are repeated cyclically up to ``num_tokens`` and truncated, and the
    prompt is a copy of those vocabulary rows. Without (PEFT ``RANDOM``): N(0, 1), ``nn.Embedding``'s default.
    """
    if ids is None:
        return torch.randn(num_tokens, weight.shape[1], device=weight.device)
    rows = torch.tensor(ids, dtype=torch.long, device=weight.device).repeat(math.ceil(num_tokens / len(ids)))
    return weight.detach()[rows[:num_tokens]].to(torch.float32).clone()


def prompt_width(embedding: object, num_tokens: object) -> int:
    """Checks the arguments every method takes (the table and a prompt of ``num_tokens`` rows of its width);
    returns the width ``d``."""
    hidden = check_embedding(embedding).embedding_dim
    check_sizes(prompt={"num_tokens": check_positive_int("num_tokens", num_tokens), "embedding width": hidden})
    return hidden


class PromptModule(ParameterGroups, nn.Module):
    """Base of every method module: holds and freezes the word ``embedding``, the backend and ``num_tokens``.
    Subclasses declare their optimizer split and recipe (:mod:`prompt_ops.methods.groups`).

    ``forward(input_ids, attention_mask=None)`` returns ``(inputs_embeds, attention_mask)`` with the prompt
    prepended, ready for a Hugging Face model's ``inputs_embeds=``. Subclasses check their own arguments before
    calling this constructor, which freezes the embedding after its own checks.
    """

    def __init__(self, embedding: nn.Embedding, num_tokens: int, backend: str | None = None, positions: str = "tokens"):
        super().__init__()
        prompt_width(embedding, num_tokens)
        self.backend = check_backend(backend)
        self.positions = check_positions(positions)
        self.num_tokens = int(num_tokens)
        embedding.weight.requires_grad_(False)  # the word-embedding table is frozen in prompt tuning
        self.embedding = embedding

    @property
    def hidden_size(self) -> int:
        return self.embedding.embedding_dim

    @property
    def positions(self) -> str:
        """``"tokens"`` or ``"absolute"`` (:mod:`prompt_ops.ops.positions`); checked when set, after construction too
        (the tuned models number positions from it, and would read any other value as ``"tokens"``)."""
        return self._positions

    @positions.setter
    def positions(self, value: str) -> None:
        self._positions = check_positions(value)

    def embed_tokens(self, input_ids: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, n, d)`` of tokens at input positions ``start .. start+n-1``, with the method's per-token
        treatment and no prompt: what a full forward gives those tokens. Used for tokens generated after the
        prefill. ``start`` is an int >= 0 shared by every row, or a ``(B,)`` int64/int32 tensor of per-row
        positions of column 0 (:func:`check_start`). Plain lookup here; methods with per-token offsets override it."""
        check_start(input_ids, start)
        return self.embedding(input_ids)

    def extra_repr(self) -> str:
        return (
            f"num_tokens={self.num_tokens}, hidden_size={self.hidden_size}, backend={self.backend!r}, "
            f"positions={self.positions!r}"
        )


class SoftPromptModule(PromptModule):
    """A method with a dense trainable ``prompt (num_tokens, d)``, initialised as PEFT does."""

    def __init__(
        self,
        embedding: nn.Embedding,
        num_tokens: int,
        init_token_ids: Sequence[int] | torch.Tensor | None = None,
        backend: str | None = None,
        positions: str = "tokens",
    ):
        ids = check_token_ids(init_token_ids, check_embedding(embedding).num_embeddings)
        super().__init__(embedding, num_tokens, backend, positions)
        self.prompt = nn.Parameter(initial_prompt(embedding.weight, self.num_tokens, ids))


def low_rank_pair(max_length: int, rank: int, hidden: int, device) -> tuple[nn.Parameter, nn.Parameter]:
    """DePT's ``(lora_a (max_length, rank), lora_b (rank, d))``: ``lora_a`` kaiming-uniform with ``a=sqrt(5)``
    (fan_in = rank, so U(-1/sqrt(r), 1/sqrt(r))), ``lora_b`` zeros, so the offset starts at 0."""
    lora_a = nn.Parameter(torch.empty(max_length, rank, device=device))
    nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
    return lora_a, nn.Parameter(torch.zeros(rank, hidden, device=device))


def low_rank_sizes(max_length: int, rank: int, hidden: int) -> dict[str, dict[str, int]]:
    """The sizes of :func:`low_rank_pair`'s parameters, for :func:`check_sizes`."""
    return {"lora_a": {"max_length": max_length, "rank": rank}, "lora_b": {"rank": rank, "embedding width": hidden}}


def check_start(input_ids: object, start: object) -> torch.Tensor:
    """``embed_tokens``' arguments: ``input_ids (B, n)`` and ``start``, an int >= 0 (the input position of the
    first token in every row) or a ``(B,)`` int64/int32 tensor on the ids' device (each row's position of column
    0, any values). Returns the per-row starts as a ``(B,)`` int64 tensor."""
    ids = check_tensor("input_ids", input_ids, 2, "(B, L)")
    if isinstance(start, torch.Tensor):
        if start.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"start must be an int >= 0 or a (B,) int64/int32 tensor, got a {start.dtype} tensor")
        if tuple(start.shape) != (ids.shape[0],) or start.device != ids.device:
            raise ValueError(
                f"start must have shape (B,) = ({ids.shape[0]},) on input_ids' device {ids.device}, got shape "
                f"{tuple(start.shape)} on {start.device}"
            )
        return start.to(torch.int64)
    if isinstance(start, bool) or not isinstance(start, numbers.Integral) or start < 0:
        raise ValueError(f"start must be an int >= 0 (the input position of the first token), got {start!r}")
    return torch.full((ids.shape[0],), int(start), dtype=torch.int64, device=ids.device)


def token_offsets(module: PromptModule, input_ids: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
    """DePT's and EPT's ``embed_tokens``: the tokens with their offset rows ``module.scale * A[p] @ B`` for their
    positions ``p`` (none outside ``[0, max_length)``), no prompt; the op's explicit-starts form, one launch."""
    starts = check_start(input_ids, start)
    return dept_embed(
        input_ids, module.embedding.weight, module.prompt[:0], module.lora_a, module.lora_b, scale=module.scale,
        backend=module.backend, positions=starts,
    )[0]  # fmt: skip
