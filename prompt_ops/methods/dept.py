"""DePT: Decomposed Prompt Tuning (Shi & Lipani, ICLR 2024), official code ``ZhengxiangShi/DePT``.

A shorter prompt plus a low-rank pair added to the input token embeddings by position::

    inputs_embeds = cat(prompt, W[ids] + (lora_alpha / sqrt(r)) * A[:L] @ B)

where row ``t`` of ``A`` goes to the token at position ``t``. ``positions="tokens"`` (the default) counts real
tokens, so a left-padded sequence gets the rows its tokens get alone (batch invariance; under right padding this is
exactly the official output); ``positions="absolute"`` counts padded columns, as the official decoder-only setup
does (it left-pads every input to ``max_length``). See :func:`prompt_ops.dept_embed`.

Defaults and init follow the official code (reference/methods.md §1): m=60, r=30, L_max=256, lora_alpha=8,
``A`` kaiming-uniform (``a=sqrt(5)``, i.e. U(-1/sqrt(r), 1/sqrt(r))), ``B`` zeros (the offset starts at 0), prompt
from vocabulary rows of given token ids or N(0, 1). The trainable-parameter count ``m*d + L_max*r + r*d`` equals
vanilla prompt tuning with 100 tokens for T5-Base (76,800).

Optimizer groups (:mod:`prompt_ops.methods.groups`), as the official ``train.py`` builds them: the prompt at ``lr``
(``--learning_rate``) and the pair ``lora_a``, ``lora_b`` at ``offset_lr`` (``--lora_embedding_lr``). Recipe
defaults (reference/methods.md §1.1, §1.4): prompt 3e-1 (the released SST-2, CoLA, BoolQ and MNLI runs; RTE used
4e-1), pair 5e-4 (the released SST-2 and CoLA runs, one of the README's grid 5e-3, 3e-1, 5e-4), weight decay 0
(``--weight_decay`` is not forwarded to that optimizer).
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from prompt_ops.methods.base import (
    SoftPromptModule,
    check_backend,
    check_embedding,
    check_lora_alpha,
    check_positive_int,
    check_sizes,
    low_rank_pair,
    low_rank_sizes,
    prompt_width,
    token_offsets,
)
from prompt_ops.methods.groups import PROMPT, Group, Recipe
from prompt_ops.methods.official import read_official_dept
from prompt_ops.ops.dept_embed import dept_embed


class DePT(SoftPromptModule):
    """``DePT(embedding, num_tokens=60, rank=30, max_length=256, lora_alpha=8.0, init_token_ids=None, backend=None,
    positions="tokens")``.

    Trainable parameters (fp32): ``prompt (m, d)``, ``lora_a (max_length, rank)``, ``lora_b (rank, d)``.
    ``scale = lora_alpha / sqrt(rank)`` (not ``alpha / r``). Inputs longer than ``max_length`` raise. ``positions``
    (``"tokens"`` or ``"absolute"``) is passed to the op by :meth:`forward`.
    """

    GROUPS = (PROMPT, Group("offset", ("lora_a", "lora_b"), rate="offset_lr"))
    RECIPE = Recipe(lr=3e-1, offset_lr=5e-4, weight_decay=0.0, source="DePT train.py, released SST-2 run")

    def __init__(
        self,
        embedding: nn.Embedding,
        num_tokens: int = 60,
        rank: int = 30,
        max_length: int = 256,
        lora_alpha: float = 8.0,
        init_token_ids=None,
        backend: str | None = None,
        positions: str = "tokens",
    ):
        hidden = prompt_width(embedding, num_tokens)
        rank, max_length = check_positive_int("rank", rank), check_positive_int("max_length", max_length)
        lora_alpha = check_lora_alpha(lora_alpha)
        check_sizes(**low_rank_sizes(max_length, rank, hidden))
        super().__init__(embedding, num_tokens, init_token_ids, backend, positions)
        self.rank, self.max_length, self.lora_alpha = rank, max_length, lora_alpha
        self.scale = lora_alpha / math.sqrt(rank)
        self.lora_a, self.lora_b = low_rank_pair(max_length, rank, hidden, embedding.weight.device)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return dept_embed(
            input_ids,
            self.embedding.weight,
            self.prompt,
            self.lora_a,
            self.lora_b,
            scale=self.scale,
            attention_mask=attention_mask,
            backend=self.backend,
            positions=self.positions,
        )

    def embed_tokens(self, input_ids: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """Tokens at positions ``start ..`` (an int, or a ``(B,)`` tensor of per-row starts) get DePT's offset:
        their rows of ``A`` (none outside ``[0, max_length)``) times ``B``, through the op's explicit starts."""
        return token_offsets(self, input_ids, start)

    @classmethod
    def from_official(cls, path: str | os.PathLike, embedding: nn.Embedding, backend: str | None = None) -> DePT:
        """Import an adapter released with the official DePT code (``adapter_config.json`` + ``adapter_model.bin``).

        The pickle is loaded with ``weights_only=True``. ``embedding`` is the base model's word embedding (T5:
        ``model.shared``); its width must equal the adapter's ``token_dim``. The result computes exactly the
        official formula ``cat(P, W[ids] + lora_alpha / sqrt(r) * A[:L] @ B)``.
        """
        check_embedding(embedding)
        check_backend(backend)
        adapter = read_official_dept(path)
        if embedding.embedding_dim != adapter.token_dim:
            raise ValueError(
                f"{path}: the adapter has token_dim {adapter.token_dim} but embedding has width "
                f"{embedding.embedding_dim}; it was trained for another base model"
            )
        module = cls(
            embedding,
            num_tokens=adapter.num_tokens,
            rank=adapter.rank,
            max_length=adapter.max_length,
            lora_alpha=adapter.lora_alpha,
            backend=backend,
        )
        with torch.no_grad():
            module.prompt.copy_(adapter.prompt)
            module.lora_a.copy_(adapter.lora_a)
            module.lora_b.copy_(adapter.lora_b)
        return module

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rank={self.rank}, max_length={self.max_length}, "
            f"lora_alpha={self.lora_alpha}, scale={self.scale:.4f}"
        )
