"""A bank of named prompt-tuning and DePT adapters over one frozen input embedding, stacked for mixed batches.

Each adapter ``a`` has a prompt of ``m_a`` rows and (DePT) ``lora_a (L_a, r_a)``, ``lora_b (r_a, d)`` and a scale
``lora_alpha_a / sqrt(r_a)``. The bank holds them zero-padded in one set of parameters, the layout of
:func:`prompt_ops.ops.mixed_embed.mixed_dept_embed`: ``prompts (N, m_max, d)``, ``lora_a (N, L_max, r_max)``,
``lora_b (N, r_max, d)`` (None while no adapter has offsets; a prompt-tuning adapter among DePT ones has zero rows
and scale 0), and the buffers ``prompt_lengths (N,)``, ``max_lengths (N,)`` (each adapter's ``L_a``; 0 without
offsets) and ``scales (N,)``. ``slots`` is the layout of a row's ``m_max`` prompt columns (``"front"``: the masked
slots in front of the prompt; ``"after_prompt"``: between the prompt and the input). The padding stays zero: the
op gives it no gradient, ``lora_a``'s rows past ``L_a`` included (the op reads ``max_lengths``). Adding or deleting
an adapter re-stacks the parameters into new ``nn.Parameter`` objects (the values of the others kept), so an
optimizer built before must be built again.

A batch row picks its adapter by name; ``"__base__"`` runs the plain base model (:data:`BASE`). This slice holds
prompt tuning and DePT adapters (the ``dept_embed`` op family); other methods are refused by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prompt_ops.methods.base import check_backend, check_embedding, check_sizes
from prompt_ops.models.adapters import check_adapter_tensors
from prompt_ops.models.configs import DePTConfig, MethodConfig, PromptTuningConfig, check_config
from prompt_ops.ops.mixed_embed import check_slots, mixed_dept_embed
from prompt_ops.ops.positions import check_positions

BASE = "__base__"
"""The adapter name of a row that runs the plain base model (adapter index -1)."""
BANK_CONFIGS = (PromptTuningConfig, DePTConfig)
"""The methods a bank holds in this slice."""


def check_adapter_name(name: object, argument: str = "name") -> str:
    """An adapter's name: a non-empty ``str`` other than :data:`BASE` (a ``TypeError``/``ValueError`` naming
    ``argument``)."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a str (the adapter's name), got {type(name).__name__}")
    if not name or name == BASE:
        raise ValueError(f"{argument} must be a non-empty str other than {BASE!r} (the plain base model), got {name!r}")
    return name


def check_bank_config(
    config: object, embedding: nn.Embedding, positions: str, argument: str = "config"
) -> MethodConfig:
    """A copy of ``config``, a prompt-tuning or DePT config whose position convention is the bank's ``positions``
    and whose fields all hold for ``embedding`` (checked on the meta device: nothing is allocated or touched)."""
    config = check_config(config)
    if not isinstance(config, BANK_CONFIGS):
        raise ValueError(
            f"{argument}: the adapter bank holds prompt tuning and DePT adapters so far (PromptTuningConfig, "
            f"DePTConfig), got a {config.method!r} adapter ({type(config).__name__})"
        )
    if config.positions != positions:
        raise ValueError(
            f"{argument}: positions = {config.positions!r}, but every row of a mixed batch numbers its tokens the "
            f"bank's way, positions = {positions!r}: set the adapter's positions to {positions!r}"
        )
    with torch.device("meta"):
        config.build(nn.Embedding(embedding.num_embeddings, embedding.embedding_dim))  # checks every field by name
    return config.snapshot()


@dataclasses.dataclass(frozen=True)
class _Adapter:
    """One adapter's config and its unpadded tensors under the method module's names (detached values)."""

    config: MethodConfig
    tensors: dict[str, torch.Tensor]

    @property
    def scale(self) -> float:
        return self.config.lora_alpha / math.sqrt(self.config.rank) if isinstance(self.config, DePTConfig) else 0.0


class AdapterBank(nn.Module):
    """``AdapterBank(embedding, backend=None, positions="tokens", slots="front")``: named prompt-tuning and DePT
    adapters over the frozen ``embedding``, stacked as the module docstring says. ``forward(input_ids,
    attention_mask, adapter_index)`` returns ``(inputs_embeds (B, m_max + L, d), mask (B, m_max + L))``: row ``b`` is
    adapter ``adapter_index[b]``'s input alone with ``m_max - m_a`` masked zero slots in front of its prompt
    (``slots="front"``) or between its prompt and its input (``"after_prompt"``); -1: the plain tokens, every slot
    masked.
    ``positions`` is the bank's position convention (:mod:`prompt_ops.ops.positions`); every adapter's config must
    have it. The embedding is frozen once every argument is checked."""

    prompts: nn.Parameter | None
    lora_a: nn.Parameter | None
    lora_b: nn.Parameter | None
    prompt_lengths: torch.Tensor | None
    max_lengths: torch.Tensor | None
    scales: torch.Tensor | None

    def __init__(
        self, embedding: nn.Embedding, backend: str | None = None, positions: str = "tokens", slots: str = "front"
    ):
        super().__init__()
        check_embedding(embedding)
        self.backend = check_backend(backend)
        self.positions = check_positions(positions)
        self.slots = check_slots(slots)
        embedding.weight.requires_grad_(False)
        self.embedding = embedding
        self._configs: dict[str, MethodConfig] = {}
        for name in ("prompts", "lora_a", "lora_b"):
            self.register_parameter(name, None)
        for name in ("prompt_lengths", "max_lengths", "scales"):
            self.register_buffer(name, None)

    @property
    def names(self) -> list[str]:
        """The adapters' names, in the order of their index in the stacked tensors."""
        return list(self._configs)

    @property
    def num_slots(self) -> int:
        """``m_max``: the prompt columns in front of every row (the longest prompt; 0 while the bank is empty)."""
        return 0 if self.prompts is None else self.prompts.shape[1]

    def config(self, name: str) -> MethodConfig:
        """The config of adapter ``name`` (a copy: editing it changes nothing)."""
        return dataclasses.replace(self._configs[self._known(name)])

    def _known(self, name: object, argument: str = "name") -> str:
        if not isinstance(name, str):
            raise TypeError(f"{argument} must be a str (an adapter's name), got {type(name).__name__}")
        if name not in self._configs:
            raise ValueError(f"{argument}: no adapter named {name!r}; the bank holds {self.names}")
        return name

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter ``name``'s parameters, unpadded, under the single-adapter module's names (``prompt``, and
        ``lora_a``, ``lora_b`` for DePT): views of the bank's parameters, what an adapter file holds."""
        index = self.names.index(self._known(name))
        config = self._configs[name]
        tensors = {"prompt": self.prompts[index, : config.num_tokens]}
        if isinstance(config, DePTConfig):
            tensors["lora_a"] = self.lora_a[index, : config.max_length, : config.rank]
            tensors["lora_b"] = self.lora_b[index, : config.rank]
        return tensors

    def add(self, name: str, config: MethodConfig, state: Mapping[str, torch.Tensor] | None = None) -> None:
        """Add adapter ``name`` of ``config`` (a :class:`PromptTuningConfig` or :class:`DePTConfig` with the bank's
        ``positions``): initialised as the method's module initialises it, or with ``state``, its tensors under the
        single-adapter names (what :meth:`adapter_state_dict` gives and an adapter file holds). Everything is
        checked before the bank changes."""
        check_adapter_name(name)
        if name in self._configs:
            raise ValueError(f"name: an adapter named {name!r} is already in the bank ({self.names}); delete it first")
        config = check_bank_config(config, self.embedding, self.positions)
        module = config.build(self.embedding, backend=self.backend)
        expected = {key: param for key, param in module.named_parameters() if not key.startswith("embedding.")}
        if state is not None:
            if not isinstance(state, Mapping) or not all(isinstance(t, torch.Tensor) for t in state.values()):
                raise TypeError(
                    f"state must be a mapping of tensor names to tensors or None, got {type(state).__name__}"
                )
            check_adapter_tensors("state", expected, dict(state))
            expected = dict(state)
        adapters = self._adapters()
        adapters[name] = _Adapter(config, {key: tensor.detach() for key, tensor in expected.items()})
        self._restack(adapters)

    def delete(self, name: str) -> None:
        """Remove adapter ``name`` (the others keep their values). The bank keeps at least one adapter."""
        self._known(name)
        if len(self._configs) == 1:
            raise ValueError(
                f"name: {name!r} is the bank's only adapter and a bank keeps at least one; the plain base model is "
                "the tuned model's base_model"
            )
        adapters = self._adapters()
        del adapters[name]
        self._restack(adapters)

    def _adapters(self) -> dict[str, _Adapter]:
        return {
            name: _Adapter(config, {key: t.detach() for key, t in self.adapter_state_dict(name).items()})
            for name, config in self._configs.items()
        }

    def _restack(self, adapters: dict[str, _Adapter]) -> None:
        """Stack ``adapters`` into new zero-padded parameters (sizes checked before anything is replaced)."""
        weight = self.embedding.weight
        dtype = torch.float32 if self.prompts is None else self.prompts.dtype
        count, hidden = len(adapters), weight.shape[1]
        slots = max(adapter.config.num_tokens for adapter in adapters.values())
        low_rank = [adapter.config for adapter in adapters.values() if isinstance(adapter.config, DePTConfig)]
        rows = max((config.max_length for config in low_rank), default=0)
        rank = max((config.rank for config in low_rank), default=0)
        check_sizes(
            prompts={"adapters": count, "longest num_tokens": slots, "embedding width": hidden},
            lora_a={"adapters": count, "longest max_length": rows, "largest rank": rank},
            lora_b={"adapters": count, "largest rank": rank, "embedding width": hidden},
        )
        prompts = torch.zeros(count, slots, hidden, dtype=dtype, device=weight.device)
        lora_a = torch.zeros(count, rows, rank, dtype=dtype, device=weight.device) if low_rank else None
        lora_b = torch.zeros(count, rank, hidden, dtype=dtype, device=weight.device) if low_rank else None
        for index, adapter in enumerate(adapters.values()):
            tensors = adapter.tensors
            prompts[index, : adapter.config.num_tokens] = tensors["prompt"]
            if "lora_a" in tensors:
                lora_a[index, : adapter.config.max_length, : adapter.config.rank] = tensors["lora_a"]
                lora_b[index, : adapter.config.rank] = tensors["lora_b"]
        lengths = [adapter.config.num_tokens for adapter in adapters.values()]
        scales = [adapter.scale for adapter in adapters.values()]
        max_lengths = [getattr(adapter.config, "max_length", 0) for adapter in adapters.values()]
        self.prompts = nn.Parameter(prompts)
        self.lora_a = None if lora_a is None else nn.Parameter(lora_a)
        self.lora_b = None if lora_b is None else nn.Parameter(lora_b)
        self.prompt_lengths = torch.tensor(lengths, dtype=torch.int64, device=weight.device)
        self.max_lengths = torch.tensor(max_lengths, dtype=torch.int64, device=weight.device)
        self.scales = torch.tensor(scales, dtype=torch.float32, device=weight.device)
        self._configs = {name: adapter.config for name, adapter in adapters.items()}

    def index(self, names: Sequence[str], argument: str = "adapter_names") -> torch.Tensor:
        """``(B,)`` int64 adapter index of each row's adapter name (:data:`BASE` gives -1), on the bank's device.
        ``names`` is a list or tuple of str; an unknown name is a ``ValueError`` listing the known ones."""
        if not isinstance(names, (list, tuple)):
            raise TypeError(
                f"{argument} must be a list or tuple of adapter names, one per row, got {type(names).__name__}"
            )
        known = {name: index for index, name in enumerate(self._configs)}
        known[BASE] = -1
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"{argument} must hold str adapter names, got a {type(name).__name__} ({name!r})")
            if name not in known:
                raise ValueError(f"{argument}: no adapter named {name!r}; the bank holds {self.names} and {BASE!r}")
        return torch.tensor([known[name] for name in names], dtype=torch.int64, device=self.embedding.weight.device)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, adapter_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._embed(input_ids, adapter_index, self.positions, attention_mask, self.slots)

    def embed_tokens(self, input_ids: torch.Tensor, start: torch.Tensor, adapter_index: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, n, d)`` of tokens at input positions ``start[b] ..`` (``start (B,)`` int64/int32), each
        row with its adapter's per-token treatment and no prompt: DePT's offset for its positions (none outside
        ``[0, L_a)``), the plain tokens for prompt-tuning and ``-1`` rows. What a full forward gives those tokens;
        used for the tokens generated after the prefill (:class:`~prompt_ops.models.attach.DecodeEmbedding`)."""
        return self._embed(input_ids, adapter_index, start, prompt_columns=False)[0]

    def _embed(
        self,
        input_ids: torch.Tensor,
        adapter_index: torch.Tensor,
        positions: str | torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        slots: str = "front",
        prompt_columns: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`mixed_dept_embed` of the bank at ``positions``; without ``prompt_columns`` only the input's."""
        if self.prompts is None:
            raise ValueError("the adapter bank is empty: add an adapter first")
        prompts, lengths = self.prompts, self.prompt_lengths
        if not prompt_columns:  # the op puts m_max >= 1 columns in front: one column of each prompt, cut off below
            prompts, lengths = prompts[:, :1], torch.ones_like(lengths)
        embeds, mask = mixed_dept_embed(
            input_ids, self.embedding.weight, prompts, lengths, self.lora_a, self.lora_b, self.scales, adapter_index,
            attention_mask=attention_mask, positions=positions, backend=self.backend, max_lengths=self.max_lengths,
            slots=slots,
        )  # fmt: skip
        columns = prompts.shape[1] if not prompt_columns else 0
        return embeds[:, columns:], mask[:, columns:]

    def extra_repr(self) -> str:
        adapters = ", ".join(f"{name}: {config.method} m={config.num_tokens}" for name, config in self._configs.items())
        return f"adapters=[{adapters}], positions={self.positions!r}, slots={self.slots!r}, backend={self.backend!r}"
