"""LPT: Late Prompt Tuning (Liu, Sun, Huang & Qiu, Findings of EMNLP 2022), official code ``xyltt/LPT``.

Layers ``1..k`` of the frozen model run on the plain input without gradients. A small generator turns their output
into an instance-dependent prompt of ``n`` rows, which is prepended there, and layers ``k+1..N`` run on the longer
sequence. Only the generator trains, so backpropagation stops at layer ``k``::

    NPG (mode="naive"):  P = dropout(relu(H_k[b, c_b] @ w_down + b_down) @ w_up + b_up).view(B, n, d)
    APPG (mode="pool"):  P = dropout(relu(avgpool_n(H_k @ w_down + b_down)) @ w_up + b_up)     (B, n, d)
    MPPG (mode="max"):   P = dropout(relu(maxpool_n(H_k @ w_down + b_down)) @ w_up + b_up)     (B, n, d)

The official code's three generators (``generator_type`` NPG, APPG, MPPG); the pooling ones pool each sample's
valid rows (or only its source, ``source_lengths``) into ``n`` adaptive windows.

This module is the generator and the insertion (:func:`prompt_ops.lpt_insert`); attaching it inside a Hugging Face
model is :func:`prompt_ops.models.attach` with :class:`prompt_ops.models.LPTConfig`. Defaults are the official
scripts' (reference/methods.md §5.3): n=5, h=128, NPG, dropout 0.1. The layers are ``nn.Linear``'s default init,
as the official code leaves them: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)). For RoBERTa-large
(d=1024) NPG holds 791,680 trainable parameters, APPG and MPPG 263,296 each.

Optimizer groups (:mod:`prompt_ops.methods.groups`), as the official ``train()`` builds them: one rate for the whole
generator (LPT has no prompt rows and no offset; ``offset_lr`` is ignored), weight decay on the weights and none on
the biases. Recipe defaults (reference/methods.md §5.1, §5.3): lr 1e-3 and weight decay 0.1 (the RoBERTa-large
script; the GPT2-large one uses lr 5e-4).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prompt_ops.methods.base import check_backend, check_positive_int, check_sizes
from prompt_ops.methods.groups import Group, ParameterGroups, Recipe
from prompt_ops.ops.lpt import MODES, lpt_insert, lpt_prompt
from prompt_ops.ops.validation import check_probability


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class LPT(ParameterGroups, nn.Module):
    """``LPT(model_dim, num_tokens=5, hidden_size=128, mode="naive", dropout=0.1, backend=None)``.

    ``model_dim`` is the model's width ``d``; ``hidden_size`` the generator's bottleneck ``h`` (the official
    ``proj_down_size``). Trainable parameters (fp32): ``w_down (d, h)``, ``b_down (h,)``, and for NPG
    ``w_up (h, n*d)``, ``b_up (n*d,)``, for APPG and MPPG ``w_up (h, d)``, ``b_up (d,)``. ``mode`` is one of
    ``"naive"`` (NPG), ``"pool"`` (APPG, adaptive average pooling) and ``"max"`` (MPPG, adaptive max pooling).
    """

    GROUPS = (Group("generator", ("w_down", "w_up")), Group("generator_bias", ("b_down", "b_up"), decay=False))
    RECIPE = Recipe(lr=1e-3, offset_lr=None, weight_decay=0.1, source="LPT run_roberta.sh (RoBERTa-large)")

    def __init__(
        self,
        model_dim: int,
        num_tokens: int = 5,
        hidden_size: int = 128,
        mode: str = "naive",
        dropout: float = 0.1,
        backend: str | None = None,
    ):
        model_dim, num_tokens = check_positive_int("model_dim", model_dim), check_positive_int("num_tokens", num_tokens)
        hidden_size = check_positive_int("hidden_size", hidden_size)
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        dropout, backend = check_probability("dropout", dropout), check_backend(backend)
        width = num_tokens * model_dim if mode == "naive" else model_dim
        check_sizes(
            prompt={"num_tokens": num_tokens, "model_dim": model_dim},  # generated per sample, whatever the mode
            w_down={"model_dim": model_dim, "hidden_size": hidden_size},
            w_up={"hidden_size": hidden_size, "num_tokens * model_dim" if mode == "naive" else "model_dim": width},
        )
        super().__init__()
        self.model_dim, self.num_tokens, self.hidden_size = model_dim, num_tokens, hidden_size
        self.mode, self.dropout, self.backend = mode, dropout, backend
        self.w_down = _uniform((model_dim, hidden_size), fan_in=model_dim)
        self.b_down = _uniform((hidden_size,), fan_in=model_dim)
        self.w_up = _uniform((hidden_size, width), fan_in=hidden_size)
        self.b_up = _uniform((width,), fan_in=hidden_size)

    def _generator_kwargs(self, index, attention_mask, source_lengths, seed) -> dict:
        return {
            "num_tokens": self.num_tokens,
            "index": index,
            "attention_mask": attention_mask,
            "source_lengths": source_lengths,
            "mode": self.mode,
            "dropout_p": check_probability("dropout", self.dropout),  # named as the module calls it
            "training": self.training,
            "seed": seed,
            "backend": self.backend,
        }

    def prompt(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
        seed: int | None = None,
        source_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The generated prompt ``(B, n, d)`` in fp32 from hidden states ``(B, L, d)``. ``source_lengths (B,)``:
        pool only each row's first ``source_lengths[b]`` valid rows (:func:`prompt_ops.lpt_prompt`)."""
        kwargs = self._generator_kwargs(index, attention_mask, source_lengths, seed)
        return lpt_prompt(hidden, self.w_down, self.b_down, self.w_up, self.b_up, **kwargs)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
        seed: int | None = None,
        source_lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cat(P, hidden) (B, n+L, d), cat(ones(B, n), attention_mask) (B, n+L))`` in one preallocated buffer
        (:func:`prompt_ops.lpt_insert`); ``source_lengths`` restricts the pooled rows to the source, the mask stays
        the whole input's."""
        kwargs = self._generator_kwargs(index, attention_mask, source_lengths, seed)
        return lpt_insert(hidden, self.w_down, self.b_down, self.w_up, self.b_up, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"model_dim={self.model_dim}, num_tokens={self.num_tokens}, hidden_size={self.hidden_size}, "
            f"mode={self.mode!r}, dropout={self.dropout}, backend={self.backend!r}"
        )
