"""Vanilla prompt tuning (Lester et al., 2021): a trainable prompt prepended to the frozen token embeddings.

Optimizer groups (:mod:`prompt_ops.methods.groups`): one, the prompt, at ``lr``; the recipe's default 3e-1 is
Lester et al.'s prompt rate and the prompt rate of DePT's scripts (reference/methods.md §1.4), with weight decay 0.
"""

from __future__ import annotations

import torch

from prompt_ops.methods.base import SoftPromptModule
from prompt_ops.methods.groups import PROMPT, Recipe
from prompt_ops.ops.dept_embed import prompt_embed


class PromptTuning(SoftPromptModule):
    """``PromptTuning(embedding, num_tokens=100, init_token_ids=None, backend=None, positions="tokens")``.

    Trainable parameters: ``prompt (num_tokens, d)``, fp32, initialised as PEFT does (vocabulary rows of
    ``init_token_ids`` repeated cyclically, else N(0, 1)). ``embedding`` is frozen.
    """

    GROUPS = (PROMPT,)
    RECIPE = Recipe(lr=3e-1, offset_lr=None, weight_decay=0.0, source="Lester et al. 2021; DePT's scripts' prompt rate")

    def __init__(
        self,
        embedding,
        num_tokens: int = 100,
        init_token_ids=None,
        backend: str | None = None,
        positions: str = "tokens",
    ):
        super().__init__(embedding, num_tokens, init_token_ids, backend, positions)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return prompt_embed(
            input_ids, self.embedding.weight, self.prompt, attention_mask=attention_mask, backend=self.backend
        )
