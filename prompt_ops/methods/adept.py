"""ADePT: Adaptive Decomposed Prompt Tuning (Tang, Hu & Liu, ICLR 2025), official code ``HungerPWAY/ADePT``.

A shorter prompt plus an offset for every input token from a token-shared two-layer FFN of its own embedding::

    inputs_embeds = cat(prompt, E + relu(dropout(E @ w_down + b_down)) @ w_up + b_up),   E = W[ids]

Defaults and init follow the official code (``PROMPT_TUNING_LORAX``; reference/methods.md §2): m=60, r=19, dropout
0.1 on the pre-activation, ``w_down (d, r)`` kaiming-uniform with ``a=sqrt(5)`` (fan_in = r, so U(-1/sqrt(r),
1/sqrt(r))), ``b_down``, ``w_up``, ``b_up`` zeros (the offset starts at 0). For T5-Base (d=768) that is
46,080 + 14,592 + 19 + 14,592 + 768 = 76,051 trainable parameters, within vanilla prompt tuning's 76,800.

Because the offset depends only on the token id, it folds into the embedding table for inference
(:meth:`ADePT.fold`): eval-mode ADePT then costs exactly what vanilla prompt tuning costs.

Optimizer groups (:mod:`prompt_ops.methods.groups`), as the official ``train.py`` (branch ``PROMPT_TUNING_LORAX``)
builds them: the prompt at ``lr``, the FFN's four tensors at ``offset_lr`` (``--lora_embedding_lr``), its biases in
a group of their own so that a ``weight_decay`` passed by hand spares them. Recipe defaults (reference/methods.md
§2.1, §2.3): prompt 3e-1 (the README's 3e-1 or 4e-1), FFN 1e-4, weight decay 0 (not forwarded in the official code).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prompt_ops.methods.base import SoftPromptModule, check_positive_int, check_sizes, check_start, prompt_width
from prompt_ops.methods.groups import PROMPT, Group, Recipe
from prompt_ops.methods.prompt_tuning import PromptTuning
from prompt_ops.ops.adept_embed import adept_embed
from prompt_ops.ops.validation import check_probability


class ADePT(SoftPromptModule):
    """``ADePT(embedding, num_tokens=60, rank=19, dropout=0.1, init_token_ids=None, backend=None, positions="tokens")``.

    Trainable parameters (fp32): ``prompt (m, d)``, ``w_down (d, r)``, ``b_down (r,)``, ``w_up (r, d)``,
    ``b_up (d,)``. Dropout acts in training mode only; ``forward(..., seed=)`` fixes its mask.
    """

    GROUPS = (
        PROMPT,
        Group("offset", ("w_down", "w_up"), rate="offset_lr"),
        Group("offset_bias", ("b_down", "b_up"), rate="offset_lr", decay=False),
    )
    RECIPE = Recipe(lr=3e-1, offset_lr=1e-4, weight_decay=0.0, source="ADePT train.py and README")

    def __init__(
        self,
        embedding: nn.Embedding,
        num_tokens: int = 60,
        rank: int = 19,
        dropout: float = 0.1,
        init_token_ids=None,
        backend: str | None = None,
        positions: str = "tokens",
    ):
        hidden = prompt_width(embedding, num_tokens)
        rank, dropout = check_positive_int("rank", rank), check_probability("dropout", dropout)
        check_sizes(w_down={"embedding width": hidden, "rank": rank}, w_up={"rank": rank, "embedding width": hidden})
        super().__init__(embedding, num_tokens, init_token_ids, backend, positions)
        self.rank, self.dropout, device = rank, dropout, embedding.weight.device
        self.w_down = nn.Parameter(torch.empty(hidden, rank, device=device))
        nn.init.kaiming_uniform_(self.w_down, a=math.sqrt(5))  # fan_in = size(1) = rank: U(-1/sqrt(r), 1/sqrt(r))
        self.b_down = nn.Parameter(torch.zeros(rank, device=device))
        self.w_up = nn.Parameter(torch.zeros(rank, hidden, device=device))
        self.b_up = nn.Parameter(torch.zeros(hidden, device=device))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return adept_embed(
            input_ids,
            self.embedding.weight,
            self.prompt,
            self.w_down,
            self.b_down,
            self.w_up,
            self.b_up,
            attention_mask=attention_mask,
            dropout_p=check_probability("dropout", self.dropout),  # named as the module calls it
            training=self.training,
            seed=seed,
            backend=self.backend,
        )

    def embed_tokens(self, input_ids: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """The FFN offset depends on the token only, not on ``start`` (checked as in the base class); no dropout
        outside training."""
        check_start(input_ids, start)
        ffn = (self.w_down, self.b_down, self.w_up, self.b_up)
        return adept_embed(input_ids, self.embedding.weight, self.prompt[:0], *ffn, backend=self.backend)[0]

    @torch.no_grad()
    def folded_weight(self, chunk_size: int = 8192) -> torch.Tensor:
        """A new ``(V, d)`` table ``W + relu(W @ w_down + b_down) @ w_up + b_up`` in the table's dtype.

        Computed ``chunk_size`` rows at a time in fp32 and rounded once, as the per-token op rounds; the embedding's
        own weight is not touched (T5 ties ``shared`` to the decoder and the LM head).
        """
        chunk_size = check_positive_int("chunk_size", chunk_size)
        weight = self.embedding.weight
        folded = torch.empty_like(weight)
        for start in range(0, weight.shape[0], chunk_size):
            rows = weight[start : start + chunk_size].float()  # (chunk, d)
            hidden = torch.addmm(self.b_down.float(), rows, self.w_down.float()).relu_()
            offset = torch.addmm(self.b_up.float(), hidden, self.w_up.float())
            folded[start : start + chunk_size] = rows + offset
        return folded

    def fold(self, chunk_size: int = 8192) -> PromptTuning:
        """The eval-mode equivalent: a :class:`PromptTuning` with this prompt over a new frozen embedding holding
        :meth:`folded_weight`. Its outputs equal ``self.eval()``'s; inference costs a plain gather."""
        source = self.embedding
        table = nn.Embedding.from_pretrained(
            self.folded_weight(chunk_size), freeze=True, padding_idx=source.padding_idx
        )
        folded = PromptTuning(table, num_tokens=self.num_tokens, backend=self.backend)
        with torch.no_grad():
            folded.prompt.copy_(self.prompt)
        return folded

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, dropout={self.dropout}"
