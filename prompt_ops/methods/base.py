"""What every soft-prompt method shares: a frozen word embedding and a trainable ``(m, d)`` prompt."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def initial_prompt(weight: torch.Tensor, num_tokens: int, init_token_ids: Sequence[int] | torch.Tensor | None):
    """The official (PEFT) prompt init, as an fp32 ``(num_tokens, d)`` tensor.

    With token ids (PEFT ``TEXT``): the ids are repeated cyclically up to ``num_tokens`` and truncated, and the
    prompt is a copy of those vocabulary rows. Without (PEFT ``RANDOM``): N(0, 1), ``nn.Embedding``'s default.
    """
    vocab, hidden = weight.shape
    if init_token_ids is None:
        return torch.randn(num_tokens, hidden, device=weight.device)
    ids = torch.as_tensor(init_token_ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("init_token_ids must hold at least one token id, got an empty sequence")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"init_token_ids must be in [0, {vocab}), got ids from {int(ids.min())} to {int(ids.max())}")
    ids = ids.repeat(math.ceil(num_tokens / ids.numel()))[:num_tokens]
    return weight.detach()[ids.to(weight.device)].to(torch.float32).clone()


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class PromptModule(nn.Module):
    """Base of every method module: holds and freezes the word ``embedding``, the backend and ``num_tokens``.

    ``forward(input_ids, attention_mask=None)`` returns ``(inputs_embeds, attention_mask)`` with the prompt
    prepended, ready for a Hugging Face model's ``inputs_embeds=``.
    """

    def __init__(self, embedding: nn.Embedding, num_tokens: int, backend: str | None = None):
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"embedding must be a torch.nn.Embedding, got {type(embedding).__name__}")
        self.num_tokens = check_positive_int("num_tokens", num_tokens)
        embedding.weight.requires_grad_(False)  # the word-embedding table is frozen in prompt tuning
        self.embedding = embedding
        self.backend = backend

    @property
    def hidden_size(self) -> int:
        return self.embedding.embedding_dim

    def embed_tokens(self, input_ids: torch.Tensor, start: int) -> torch.Tensor:
        """Embeddings ``(B, n, d)`` of tokens at input positions ``start .. start+n-1``, with the method's per-token
        treatment and no prompt: what a full forward gives those tokens. Used for tokens generated after the
        prefill. Plain lookup here; methods with per-token offsets override it."""
        return self.embedding(input_ids)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, hidden_size={self.hidden_size}, backend={self.backend!r}"


class SoftPromptModule(PromptModule):
    """A method with a dense trainable ``prompt (num_tokens, d)``, initialised as PEFT does."""

    def __init__(
        self,
        embedding: nn.Embedding,
        num_tokens: int,
        init_token_ids: Sequence[int] | torch.Tensor | None = None,
        backend: str | None = None,
    ):
        super().__init__(embedding, num_tokens, backend)
        self.prompt = nn.Parameter(initial_prompt(embedding.weight, num_tokens, init_token_ids))


def check_lora_alpha(lora_alpha: object) -> float:
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or not lora_alpha > 0:
        raise ValueError(f"lora_alpha must be a positive number, got {lora_alpha!r}")
    return float(lora_alpha)


def low_rank_pair(max_length: int, rank: int, hidden: int, device) -> tuple[nn.Parameter, nn.Parameter]:
    """DePT's ``(lora_a (max_length, rank), lora_b (rank, d))``: ``lora_a`` kaiming-uniform with ``a=sqrt(5)``
    (fan_in = rank, so U(-1/sqrt(r), 1/sqrt(r))), ``lora_b`` zeros, so the offset starts at 0."""
    lora_a = nn.Parameter(torch.empty(max_length, rank, device=device))
    nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
    return lora_a, nn.Parameter(torch.zeros(rank, hidden, device=device))


def shifted_rows(lora_a: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """Rows ``start .. start+count-1`` of ``lora_a``, zeros past its end: the position offsets of tokens placed
    there (positions ``>= max_length`` get no offset)."""
    rows = lora_a[start : start + count]
    if rows.shape[0] < count:
        rows = torch.cat([rows, rows.new_zeros((count - rows.shape[0], lora_a.shape[1]))])
    return rows
