"""LAMP: Low-pArameters prompt tuning (Lan, Xu, Yang, Liang, Guo, Zhao, Wang; NAACL 2025).

The paper has no public code; this project defines the method as in its DESIGN.md §7 (reconstructed from the
abstract and summaries, see reference/methods.md §3): the prompt of ``l`` tokens is kept as its truncated SVD
``U (l, r)``, ``q (r,)``, ``V (r, d)``, rebuilt as the compressed sum of outer products ``(U * q) @ V`` and
average-pooled with window = stride = ``pool`` over its rows, giving ``l / pool`` prompt tokens::

    inputs_embeds = cat(avgpool_pool((U * q) @ V), W[ids])

Init: the truncated SVD of an initial prompt ``P0`` (vocabulary rows of ``init_token_ids`` repeated cyclically, as
PEFT's TEXT init, else N(0, 1)). Defaults: ``l = 100``, ``r = 8`` (which gives the paper's "about 7,000" trainable
parameters on T5-Base), ``pool = 2`` (the paper does not state the window; 2 halves the prompt's sequence cost).

Trainable parameters: ``l*r + r + r*d``: 100*8 + 8 + 8*768 = 6,952 for T5-Base (d = 768), against 76,800 for
vanilla prompt tuning with the same 100 tokens (11x fewer).

Optimizer groups (:mod:`prompt_ops.methods.groups`): one, ``prompt``, holding ``u``, ``q`` and ``v`` at ``lr``:
the three factors *are* the prompt (there is no offset path, so no second rate; ``offset_lr`` is ignored). The
paper's settings were not retrieved (reference/methods.md §3.0); the recipe's 3e-1 is the prompt rate of the
prompt-tuning family (Lester et al., DePT's scripts), weight decay 0. Untuned: Adam moves each entry by about ``lr``
a step, and the factors' entries are smaller than a prompt's (``u`` and ``v`` start with orthonormal columns and
rows), so a smaller ``lr`` may suit LAMP better.
"""

from __future__ import annotations

import torch
from torch import nn

from prompt_ops.methods.base import (
    PromptModule,
    check_positive_int,
    check_token_ids,
    initial_prompt,
    prompt_width,
)
from prompt_ops.methods.groups import Group, Recipe
from prompt_ops.ops.lamp import lamp_embed, lamp_prompt


class LAMP(PromptModule):
    """``LAMP(embedding, num_tokens=100, rank=8, pool=2, init_token_ids=None, backend=None, positions="tokens")``.

    ``num_tokens`` is the prompt length ``l`` before pooling; the model sees ``num_tokens // pool`` prompt rows.
    Trainable parameters (fp32): ``u (l, r)``, ``q (r,)``, ``v (r, d)``.
    """

    GROUPS = (Group("prompt", ("u", "q", "v")),)
    RECIPE = Recipe(lr=3e-1, offset_lr=None, weight_decay=0.0, source="no public code: the prompt family's rate")

    def __init__(
        self,
        embedding: nn.Embedding,
        num_tokens: int = 100,
        rank: int = 8,
        pool: int = 2,
        init_token_ids=None,
        backend: str | None = None,
        positions: str = "tokens",
    ):
        hidden = prompt_width(embedding, num_tokens)
        rank, pool = check_positive_int("rank", rank), check_positive_int("pool", pool)
        if num_tokens % pool:
            raise ValueError(f"pool = {pool} must divide num_tokens = {num_tokens}")
        if rank > min(num_tokens, hidden):
            raise ValueError(
                f"rank must be <= min(num_tokens, hidden size) = {min(num_tokens, hidden)} for a truncated SVD of "
                f"the ({num_tokens}, {hidden}) initial prompt, got {rank}"
            )  # so u (l, r) and v (r, d) are no larger than the (l, d) prompt prompt_width checked
        ids = check_token_ids(init_token_ids, embedding.num_embeddings)
        super().__init__(embedding, num_tokens, backend, positions)
        self.rank, self.pool = rank, pool
        initial = initial_prompt(embedding.weight, self.num_tokens, ids)
        left, singular, right = torch.linalg.svd(initial, full_matrices=False)
        self.u = nn.Parameter(left[:, :rank].contiguous())  # (l, r)
        self.q = nn.Parameter(singular[:rank].clone())  # (r,)
        self.v = nn.Parameter(right[:rank].contiguous())  # (r, d)

    @property
    def num_prompt_rows(self) -> int:
        """Prompt rows the model sees: ``num_tokens // pool``."""
        return self.num_tokens // self.pool

    def prompt(self) -> torch.Tensor:
        """The pooled prompt ``(num_tokens // pool, d)`` in fp32."""
        return lamp_prompt(self.u, self.q, self.v, pool=self.pool, backend=self.backend)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return lamp_embed(
            input_ids,
            self.embedding.weight,
            self.u,
            self.q,
            self.v,
            pool=self.pool,
            attention_mask=attention_mask,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, pool={self.pool}"
