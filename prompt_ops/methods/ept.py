"""EPT: Efficient Prompt Tuning by Multi-Space Projection and Prompt Fusion (Lan et al., AAAI 2025).

The paper has no public code; this project defines the method as in its DESIGN.md §7 (reconstructed from the
abstract and summaries, see reference/methods.md §4): a short prompt ``Ps``, DePT's low-rank pair ``A``, ``B`` with
``scale = lora_alpha / sqrt(r)``, prompt fusion ``Pf = Ps + softmax(Ps Q^T / sqrt(d)) Q`` with ``Q = scale * A @ B``,
``K`` subspace projections ``Pf @ Wd_k @ Wu_k`` mixed by a gate ``softmax(mean_rows(Pf) @ Wg + bg)``, added to
``Pf``; the input tokens get DePT's offset ``scale * A[t] @ B``.

Init (a design choice): ``Ps`` as PEFT's prompt init, ``A`` kaiming-uniform and ``B`` zeros as DePT, ``Wd``
N(0, 1/d), ``Wu``, ``Wg``, ``bg`` zeros. With ``B = 0`` and ``Wu = 0`` the method starts as plain prompt tuning with
``Ps`` (the offset and the projections are zero, the fusion adds the mean of zero rows).

Trainable parameters: ``s*d + L_max*r + r*d + 2*K*d*h + d*K + K``; with the defaults on T5-Base (d = 768):
46,080 + 7,680 + 23,040 + 49,152 + 3,072 + 4 = 129,028.

Optimizer groups (:mod:`prompt_ops.methods.groups`): no public code, so this project applies the rule DePT's and
ADePT's official scripts share (the prompt rows at the first rate, every other tensor at ``lora_embedding_lr``):
the short prompt at ``lr``; DePT's pair and the projection and gate weights at ``offset_lr``; the gate's bias in a
group of its own so that a ``weight_decay`` passed by hand spares it. Recipe defaults: DePT's (prompt 3e-1, the rest
5e-4, weight decay 0), EPT's decomposition being DePT's.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from prompt_ops.methods.base import (
    SoftPromptModule,
    check_lora_alpha,
    check_positive_int,
    check_sizes,
    low_rank_pair,
    low_rank_sizes,
    prompt_width,
    token_offsets,
)
from prompt_ops.methods.dept import DePT
from prompt_ops.methods.groups import PROMPT, Group
from prompt_ops.ops.ept import ept_embed, ept_prompt


class EPT(SoftPromptModule):
    """``EPT(embedding, num_tokens=60, rank=30, max_length=256, num_subspaces=4, subspace_rank=8, lora_alpha=8.0,
    init_token_ids=None, backend=None, positions="tokens")``.

    Trainable parameters (fp32): ``prompt (s, d)``, ``lora_a (max_length, rank)``, ``lora_b (rank, d)``,
    ``w_down (K, d, h)``, ``w_up (K, h, d)``, ``w_gate (d, K)``, ``b_gate (K,)``. ``positions`` (``"tokens"`` or
    ``"absolute"``, as for :class:`prompt_ops.DePT`) places the input tokens' offsets.
    """

    GROUPS = (
        PROMPT,
        Group("offset", ("lora_a", "lora_b", "w_down", "w_up", "w_gate"), rate="offset_lr"),
        Group("offset_bias", ("b_gate",), rate="offset_lr", decay=False),
    )
    RECIPE = dataclasses.replace(DePT.RECIPE, source="no public code: DePT's recipe")

    def __init__(
        self,
        embedding: nn.Embedding,
        num_tokens: int = 60,
        rank: int = 30,
        max_length: int = 256,
        num_subspaces: int = 4,
        subspace_rank: int = 8,
        lora_alpha: float = 8.0,
        init_token_ids=None,
        backend: str | None = None,
        positions: str = "tokens",
    ):
        hidden = prompt_width(embedding, num_tokens)
        rank, max_length = check_positive_int("rank", rank), check_positive_int("max_length", max_length)
        num_subspaces = check_positive_int("num_subspaces", num_subspaces)
        subspace_rank = check_positive_int("subspace_rank", subspace_rank)
        lora_alpha = check_lora_alpha(lora_alpha)
        projection = {"num_subspaces": num_subspaces, "embedding width": hidden, "subspace_rank": subspace_rank}
        check_sizes(**low_rank_sizes(max_length, rank, hidden), w_down=projection)  # w_up and w_gate: no larger
        super().__init__(embedding, num_tokens, init_token_ids, backend, positions)
        self.rank, self.max_length, self.lora_alpha = rank, max_length, lora_alpha
        self.num_subspaces, self.subspace_rank = num_subspaces, subspace_rank
        self.scale = lora_alpha / math.sqrt(rank)
        device = embedding.weight.device
        self.lora_a, self.lora_b = low_rank_pair(max_length, rank, hidden, device)  # as DePT
        self.w_down = nn.Parameter(torch.randn(num_subspaces, hidden, subspace_rank, device=device) / math.sqrt(hidden))
        self.w_up = nn.Parameter(torch.zeros(num_subspaces, subspace_rank, hidden, device=device))
        self.w_gate = nn.Parameter(torch.zeros(hidden, num_subspaces, device=device))
        self.b_gate = nn.Parameter(torch.zeros(num_subspaces, device=device))

    def _params(self) -> tuple[torch.Tensor, ...]:
        return (self.prompt, self.lora_a, self.lora_b, self.w_down, self.w_up, self.w_gate, self.b_gate)

    def full_prompt(self) -> torch.Tensor:
        """The EPT prompt ``(num_tokens, d)`` in fp32 (what the model sees before the input tokens)."""
        return ept_prompt(*self._params(), scale=self.scale, backend=self.backend)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return ept_embed(
            input_ids,
            self.embedding.weight,
            *self._params(),
            scale=self.scale,
            attention_mask=attention_mask,
            backend=self.backend,
            positions=self.positions,
        )

    def embed_tokens(self, input_ids: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """Tokens at positions ``start ..`` (an int, or a ``(B,)`` tensor of per-row starts) get DePT's offset:
        their rows of ``A`` (none outside ``[0, max_length)``) times ``B``, through the op's explicit starts."""
        return token_offsets(self, input_ids, start)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rank={self.rank}, max_length={self.max_length}, "
            f"num_subspaces={self.num_subspaces}, subspace_rank={self.subspace_rank}, scale={self.scale:.4f}"
        )
