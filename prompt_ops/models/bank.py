"""A bank of named adapters of any prompt method over one frozen input embedding, stacked for mixed batches.

Each adapter ``a`` has a prompt of ``m_a`` rows (:meth:`AdapterBank.prompt_rows`: LAMP's ``num_tokens // pool``,
the others' ``num_tokens``). The bank holds every adapter's tensors zero-padded in one set of stacked parameters,
each ``(N, ...)`` with adapter ``a``'s unpadded tensor at ``[a, :size_0, :size_1, ...]`` (:data:`TABLES` says which
tensor of which method goes where; a table is None while no adapter has it):

- ``prompts (N, m_max, d)``: the prompts of prompt tuning, DePT and ADePT, and EPT's short prompt; ``lora_a (N, L_max,
  r_max)``, ``lora_b (N, r_max, d)``: DePT's and EPT's offsets; the buffers ``prompt_lengths (N,)`` (``m_a``),
  ``max_lengths (N,)`` (each adapter's ``L_a``; 0 without offsets) and ``scales (N,)`` (``lora_alpha_a / sqrt(r_a)``;
  0 without offsets). These are the layout of :func:`prompt_ops.ops.mixed_embed.mixed_dept_embed`, which serves the
  rows of prompt tuning, DePT, LAMP and EPT in one call.
- ``adept_w_down (N, d, r_max)``, ``adept_b_down (N, r_max)``, ``adept_w_up (N, r_max, d)``, ``adept_b_up (N, d)``:
  ADePT's token FFNs (its prompt in ``prompts``) and the buffer ``dropouts (N,)`` (its dropout probability; 0 for
  the others), the layout of :func:`prompt_ops.ops.mixed_adept.mixed_adept_embed`, which serves ADePT's rows.
- ``lamp_u``, ``lamp_q``, ``lamp_v``: LAMP's factors; ``ept_w_down``, ``ept_w_up``, ``ept_w_gate``, ``ept_b_gate``:
  EPT's subspace projections and gate. LAMP's and EPT's prompts are *built* from their tensors by the methods' own
  functionals (:func:`~prompt_ops.ops.lamp.lamp_prompt`, :func:`~prompt_ops.ops.ept.ept_prompt`, reading the
  unpadded slices, EPT's ``lora_a``/``lora_b`` included, so both of its paths' gradients reach the same stacked
  parameters) and written over their adapters' rows of ``prompts`` out of place (``index_copy``: the stored rows get
  no gradient from the op), for the adapters of the batch only: per call under grad; without grad kept per adapter
  until one of its tables changes (an in-place write bumps its version counter: an optimizer step, ``copy_`` under
  ``torch.no_grad``; a write through ``.data`` does not, call :meth:`AdapterBank.clear_built` after one) or the
  resolved backend does.

``slots`` is the layout of a row's ``m_max`` prompt columns (``"front"``: the masked slots in front of the prompt;
``"after_prompt"``: between the prompt and the input). The padding stays zero: it gets no gradient (the op reads
``max_lengths`` for ``lora_a``'s rows past ``L_a``; the builders read unpadded slices). Adding or deleting an
adapter re-stacks the parameters into new ``nn.Parameter`` objects (the values of the others kept), so an optimizer
built before must be built again.

A batch row picks its adapter by name; ``"__base__"`` runs the plain base model (:data:`BASE`). A batch of one
family (ADePT rows, or the others' with ``"__base__"`` rows) runs its op on the whole batch; a batch mixing them
runs each op on its rows (an ``index_select`` of the ids, mask and starts) and puts the rows back in batch order
(one ``index_select``: each output row has one source, so the result and its gradients are deterministic). Both ops
lay rows out over the same ``m_max`` prompt columns. The bank holds prompt tuning, DePT, ADePT, LAMP and EPT
adapters (:data:`BANK_CONFIGS`); LPT, whose prompt enters after a layer, is refused by name.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from prompt_ops.methods.base import check_backend, check_embedding, check_sizes
from prompt_ops.models.adapters import check_adapter_tensors
from prompt_ops.models.configs import (
    ADePTConfig,
    DePTConfig,
    EPTConfig,
    LAMPConfig,
    MethodConfig,
    PromptTuningConfig,
    check_config,
)
from prompt_ops.ops.backend import resolve_backend, resolve_check_ids
from prompt_ops.ops.ept import ept_prompt
from prompt_ops.ops.lamp import lamp_prompt
from prompt_ops.ops.mixed_adept import mixed_adept_embed
from prompt_ops.ops.mixed_embed import check_slots, mixed_dept_embed
from prompt_ops.ops.positions import check_positions, row_starts
from prompt_ops.ops.validation import (
    TOKEN_ID_DTYPES,
    check_adapter_indices,
    check_token_data,
    check_vector,
    validate_embed_call,
)

BASE = "__base__"
"""The adapter name of a row that runs the plain base model (adapter index -1)."""

TABLE_DIMS: dict[str, tuple[str, ...]] = {
    "prompts": ("longest prompt", "embedding width"),
    "lora_a": ("longest max_length", "largest rank"),
    "lora_b": ("largest rank", "embedding width"),
    "lamp_u": ("longest num_tokens", "largest rank"),
    "lamp_q": ("largest rank",),
    "lamp_v": ("largest rank", "embedding width"),
    "ept_w_down": ("most num_subspaces", "embedding width", "largest subspace_rank"),
    "ept_w_up": ("most num_subspaces", "largest subspace_rank", "embedding width"),
    "ept_w_gate": ("embedding width", "most num_subspaces"),
    "ept_b_gate": ("most num_subspaces",),
    "adept_w_down": ("embedding width", "largest rank"),
    "adept_b_down": ("largest rank",),
    "adept_w_up": ("largest rank", "embedding width"),
    "adept_b_up": ("embedding width",),
}
"""The bank's stacked parameters, each ``(N, *dims)``: what sets each dimension past the adapters ``N``."""

TABLES: dict[type[MethodConfig], dict[str, str]] = {
    PromptTuningConfig: {"prompt": "prompts"},
    DePTConfig: {"prompt": "prompts", "lora_a": "lora_a", "lora_b": "lora_b"},
    LAMPConfig: {"u": "lamp_u", "q": "lamp_q", "v": "lamp_v"},
    EPTConfig: {
        "prompt": "prompts", "lora_a": "lora_a", "lora_b": "lora_b", "w_down": "ept_w_down", "w_up": "ept_w_up",
        "w_gate": "ept_w_gate", "b_gate": "ept_b_gate",
    },
    ADePTConfig: {
        "prompt": "prompts", "w_down": "adept_w_down", "b_down": "adept_b_down", "w_up": "adept_w_up",
        "b_up": "adept_b_up",
    },
}  # fmt: skip
"""Each method's tensors (the single module's names, in its order) -> the stacked parameter holding them."""

BANK_CONFIGS = tuple(TABLES)
"""The methods a bank holds."""
OFFSET_CONFIGS = (DePTConfig, EPTConfig)
"""The methods whose input tokens get DePT's offset by position (``max_length`` rows of ``lora_a``)."""
BUILT_CONFIGS = (LAMPConfig, EPTConfig)
"""The methods whose prompt is built from their tensors."""


def check_adapter_name(name: object, argument: str = "name") -> str:
    """An adapter's name: a non-empty ``str`` other than :data:`BASE` (a ``TypeError``/``ValueError`` naming
    ``argument``)."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a str (the adapter's name), got {type(name).__name__}")
    if not name or name == BASE:
        raise ValueError(f"{argument} must be a non-empty str other than {BASE!r} (the plain base model), got {name!r}")
    return name


def check_same_positions(config: MethodConfig, positions: str, argument: str = "config") -> None:
    """Every adapter of a mixed-adapter model numbers its tokens the model's way: ``config.positions`` must be
    ``positions`` (a ``ValueError`` naming ``argument`` and both)."""
    if config.positions != positions:
        raise ValueError(
            f"{argument}: positions = {config.positions!r}, but every row of a mixed batch numbers its tokens the "
            f"bank's way, positions = {positions!r}: set the adapter's positions to {positions!r}"
        )


def check_bank_config(
    config: object, embedding: nn.Embedding, positions: str, argument: str = "config"
) -> MethodConfig:
    """A copy of ``config``, the config of a method the bank holds, whose position convention is the bank's
    ``positions`` and whose fields all hold for ``embedding`` (checked on the meta device: nothing is allocated or
    touched)."""
    config = check_config(config)
    if not isinstance(config, BANK_CONFIGS):
        held = ", ".join(cls.__name__ for cls in BANK_CONFIGS)
        raise ValueError(
            f"{argument}: the adapter bank holds adapters of the methods whose prompt goes in front of the input "
            f"({held}), not {config.method!r} adapters ({type(config).__name__})"
        )
    check_same_positions(config, positions, argument)
    with torch.device("meta"):
        config.build(nn.Embedding(embedding.num_embeddings, embedding.embedding_dim))  # checks every field by name
    return config.snapshot()


def prompt_rows(config: MethodConfig) -> int:
    """The prompt rows the model sees for an adapter of ``config``: LAMP's ``num_tokens // pool``, else
    ``num_tokens``."""
    return config.num_tokens // config.pool if isinstance(config, LAMPConfig) else config.num_tokens


def _scale(config: MethodConfig) -> float:
    """DePT's and EPT's offset scale ``lora_alpha / sqrt(rank)``; 0 for the methods without offsets."""
    return config.lora_alpha / math.sqrt(config.rank) if isinstance(config, OFFSET_CONFIGS) else 0.0


def _leading(shape: Sequence[int]) -> tuple[slice, ...]:
    """The index of the unpadded ``shape`` at the start of a zero-padded table row."""
    return tuple(slice(0, size) for size in shape)


@dataclasses.dataclass(frozen=True)
class _Rows:
    """The per-row inputs of a bank call: ``positions`` a convention's name or ``(B,)`` explicit starts."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    adapter_index: torch.Tensor
    positions: str | torch.Tensor

    def select(self, rows: list[int]) -> _Rows:
        """The inputs of batch rows ``rows`` only (a copy of those rows of every per-row tensor)."""
        index = torch.tensor(rows, device=self.input_ids.device)
        mask, positions = self.attention_mask, self.positions
        return _Rows(
            self.input_ids.index_select(0, index),
            None if mask is None else mask.index_select(0, index),
            self.adapter_index.index_select(0, index),
            positions if isinstance(positions, str) else positions.index_select(0, index),
        )


@dataclasses.dataclass(frozen=True)
class _Adapter:
    """One adapter's config and its unpadded tensors under the method module's names (detached values)."""

    config: MethodConfig
    tensors: dict[str, torch.Tensor]


class AdapterBank(nn.Module):
    """``AdapterBank(embedding, backend=None, positions="tokens", slots="front")``: named adapters of prompt tuning,
    DePT, ADePT, LAMP and EPT over the frozen ``embedding``, stacked as the module docstring says. ``forward(input_ids,
    attention_mask, adapter_index)`` returns ``(inputs_embeds (B, m_max + L, d), mask (B, m_max + L))``: row ``b`` is
    adapter ``adapter_index[b]``'s input alone with ``m_max - m_a`` masked zero slots in front of its prompt
    (``slots="front"``) or between its prompt and its input (``"after_prompt"``); -1: the plain tokens, every slot
    masked. An empty bank (before the first :meth:`add`, or after the last :meth:`delete`) has ``m_max = 0``: every
    row is a -1 row, its plain tokens with the mask as given (what a mixed-adapter model of LPT adapters only needs).
    ``positions`` is the bank's position convention (:mod:`prompt_ops.ops.positions`); every adapter's config must
    have it. The embedding is frozen once every argument is checked."""

    prompts: nn.Parameter | None
    lora_a: nn.Parameter | None
    lora_b: nn.Parameter | None
    prompt_lengths: torch.Tensor | None
    max_lengths: torch.Tensor | None
    scales: torch.Tensor | None
    dropouts: torch.Tensor | None

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
        self._shapes: dict[str, dict[str, torch.Size]] = {}
        self._built: dict[str, tuple[tuple, torch.Tensor]] = {}
        # the tables' dtype while the bank is empty: fp32 at first, then the dtype the last tables had, so a bank
        # emptied and refilled comes back in the dtype it was cast to
        self._empty_dtype = torch.float32
        for name in TABLE_DIMS:
            self.register_parameter(name, None)
        for name in ("prompt_lengths", "max_lengths", "scales", "dropouts"):
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

    def prompt_rows(self, name: str) -> int:
        """``m_a``: the prompt rows the model sees for adapter ``name`` (LAMP: ``num_tokens // pool``)."""
        return prompt_rows(self._configs[self._known(name)])

    def _known(self, name: object, argument: str = "name") -> str:
        if not isinstance(name, str):
            raise TypeError(f"{argument} must be a str (an adapter's name), got {type(name).__name__}")
        if name not in self._configs:
            raise ValueError(f"{argument}: no adapter named {name!r}; the bank holds {self.names}")
        return name

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter ``name``'s parameters, unpadded, under the single-adapter module's names (:data:`TABLES`: e.g.
        ``prompt``, ``lora_a``, ``lora_b`` for DePT; ``u``, ``q``, ``v`` for LAMP): views of the bank's parameters,
        what an adapter file holds."""
        index = self.names.index(self._known(name))
        tables = TABLES[type(self._configs[name])]
        return {key: getattr(self, tables[key])[index][_leading(shape)] for key, shape in self._shapes[name].items()}

    def add(self, name: str, config: MethodConfig, state: Mapping[str, torch.Tensor] | None = None) -> None:
        """Add adapter ``name`` of ``config`` (a config of a method in :data:`BANK_CONFIGS` with the bank's
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
            meta = sorted(str(key) for key, tensor in state.items() if tensor.device.type == "meta")
            if meta:
                raise ValueError(f"state: {', '.join(meta)} on the meta device, which holds no data to add")
            check_adapter_tensors("state", expected, dict(state))
            expected = dict(state)
        adapters = self._adapters()
        adapters[name] = _Adapter(config, {key: expected[key].detach() for key in TABLES[type(config)]})
        self._restack(adapters)

    def delete(self, name: str) -> None:
        """Remove adapter ``name`` (the others keep their values). The last one may go: an empty bank's rows are the
        plain tokens (:meth:`forward`)."""
        self._known(name)
        adapters = self._adapters()
        del adapters[name]
        self._restack(adapters)

    def _adapters(self) -> dict[str, _Adapter]:
        return {
            name: _Adapter(config, {key: t.detach() for key, t in self.adapter_state_dict(name).items()})
            for name, config in self._configs.items()
        }

    def _restack(self, adapters: dict[str, _Adapter]) -> None:
        """Stack ``adapters`` into new zero-padded parameters (sizes checked before anything is replaced); none: every
        table and buffer None (an empty bank)."""
        if not adapters:
            self._empty_dtype = self._empty_dtype if self.prompts is None else self.prompts.dtype
            for name in (*TABLE_DIMS, "prompt_lengths", "max_lengths", "scales", "dropouts"):
                setattr(self, name, None)
            self._configs, self._shapes = {}, {}
            self.clear_built()
            return
        weight = self.embedding.weight
        dtype = self._empty_dtype if self.prompts is None else self.prompts.dtype
        count, hidden = len(adapters), weight.shape[1]
        sizes = {"prompts": [max(prompt_rows(adapter.config) for adapter in adapters.values()), hidden]}
        for adapter in adapters.values():
            for key, table in TABLES[type(adapter.config)].items():
                shape = adapter.tensors[key].shape
                sizes[table] = [max(size) for size in zip(sizes.get(table, shape), shape, strict=True)]
        check_sizes(
            **{table: {"adapters": count, **dict(zip(TABLE_DIMS[table], size, strict=True))} for table, size in
               sizes.items()}
        )  # fmt: skip
        tables = {table: torch.zeros(count, *size, dtype=dtype, device=weight.device) for table, size in sizes.items()}
        for index, adapter in enumerate(adapters.values()):
            for key, table in TABLES[type(adapter.config)].items():
                tables[table][index][_leading(adapter.tensors[key].shape)] = adapter.tensors[key]
        configs = [adapter.config for adapter in adapters.values()]
        for table in TABLE_DIMS:
            setattr(self, table, nn.Parameter(tables[table]) if table in tables else None)
        lengths = [prompt_rows(config) for config in configs]
        max_lengths = [config.max_length if isinstance(config, OFFSET_CONFIGS) else 0 for config in configs]
        self.prompt_lengths = torch.tensor(lengths, dtype=torch.int64, device=weight.device)
        self.max_lengths = torch.tensor(max_lengths, dtype=torch.int64, device=weight.device)
        self.scales = torch.tensor([_scale(config) for config in configs], dtype=torch.float32, device=weight.device)
        dropouts = [config.dropout if isinstance(config, ADePTConfig) else 0.0 for config in configs]
        self.dropouts = torch.tensor(dropouts, dtype=torch.float32, device=weight.device)
        self._configs = {name: adapter.config for name, adapter in adapters.items()}
        self._shapes = {
            name: {key: t.shape for key, t in adapter.tensors.items()} for name, adapter in adapters.items()
        }
        self.clear_built()

    def clear_built(self) -> None:
        """Drop the built prompts kept without grad (module docstring): the next call builds them again."""
        self._built.clear()

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
        row with its adapter's per-token treatment and no prompt: DePT's and EPT's offset for their positions (none
        outside ``[0, L_a)``), ADePT's FFN offset (no dropout), the plain tokens for prompt-tuning, LAMP and ``-1``
        rows. What a full forward gives
        those tokens; used for the tokens generated after the prefill
        (:class:`~prompt_ops.models.attach.DecodeEmbedding`)."""
        return self._embed(input_ids, adapter_index, start, prompt_columns=False)[0]

    def _check_lengths(self, present: Sequence[str], seq_len: int) -> None:
        """Under a string position convention, a row of an adapter with offsets by position needs ``L <= L_a``, as
        the adapter alone does: refused on the host, naming the adapter. Other rows are not limited (the op, given
        explicit starts, sets no limit of its own)."""
        for name in present:
            config = self._configs[name]
            if isinstance(config, OFFSET_CONFIGS) and config.max_length < seq_len:
                raise ValueError(
                    f"input_ids has L = {seq_len} tokens, more than the max_length = {config.max_length} of adapter "
                    f"{name!r} ({config.method}) that a row uses: truncate the input or give that adapter "
                    f"max_length >= {seq_len}"
                )

    def _check_rows(
        self,
        input_ids: object,
        attention_mask: object,
        adapter_index: object,
        positions: str | object,
    ) -> None:
        """The per-row arguments of a bank call, checked before the batch is split by family (the ops check the
        rest, the values of ids and mask among it): ``input_ids (B, L)`` int64/int32 and ``attention_mask`` None or
        ``(B, L)`` on the table's device, ``adapter_index`` and explicit starts (``positions`` when not a
        convention's name: :meth:`embed_tokens`' ``start``) ``(B,)`` int64/int32 on the ids' device."""
        validate_embed_call(input_ids, self.embedding.weight, attention_mask, self.backend, {})
        vectors = {"adapter_index": adapter_index}
        if not isinstance(positions, str):
            vectors["start"] = positions
        for name, value in vectors.items():
            check_vector(name, value, input_ids.shape[0], "B", TOKEN_ID_DTYPES)
            if value.device != input_ids.device:
                raise ValueError(f"{name} must be on input_ids' device {input_ids.device}, got {value.device}")

    def _build(self, name: str) -> torch.Tensor:
        """Adapter ``name``'s prompt ``(m_a, d)`` from its tensors (a LAMP or EPT adapter), with autograd."""
        config, tensors = self._configs[name], self.adapter_state_dict(name)
        if isinstance(config, LAMPConfig):
            return lamp_prompt(tensors["u"], tensors["q"], tensors["v"], pool=config.pool, backend=self.backend)
        return ept_prompt(*tensors.values(), scale=_scale(config), backend=self.backend)

    def _built_prompt(self, name: str) -> torch.Tensor:
        """:meth:`_build` per call under grad; without grad the kept one while the adapter's tables and the resolved
        backend (the attribute, or ``$PROMPT_OPS_BACKEND`` when it is None) are unchanged."""
        if torch.is_grad_enabled():
            return self._build(name)
        tensors = self.adapter_state_dict(name).values()
        backend = resolve_backend(self.backend, self.embedding.weight.device)
        key = (backend, *((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors))
        kept = self._built.get(name)
        if kept is None or kept[0] != key:
            kept = self._built[name] = (key, self._build(name))
        return kept[1]

    def _prompts(self, present: Sequence[str]) -> torch.Tensor:
        """``prompts`` with the built prompts of the ``present`` LAMP and EPT adapters over their rows (out of place;
        the stacked parameter itself when none is present)."""
        built = [name for name in present if isinstance(self._configs[name], BUILT_CONFIGS)]
        if not built:
            return self.prompts
        slots = self.prompts.shape[1]
        rows = [F.pad(self._built_prompt(name), (0, 0, 0, slots - self.prompt_rows(name))) for name in built]
        index = torch.tensor([self.names.index(name) for name in built], device=self.prompts.device)
        return self.prompts.index_copy(0, index, torch.stack(rows).to(self.prompts.dtype))

    def _embed(
        self,
        input_ids: torch.Tensor,
        adapter_index: torch.Tensor,
        positions: str | torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        slots: str = "front",
        prompt_columns: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank's rows at ``positions``, each family's through its op (module docstring); without
        ``prompt_columns`` only the input's columns (and no dropout)."""
        self._check_rows(input_ids, attention_mask, adapter_index, positions)
        rows = adapter_index.tolist()  # one host sync: the adapters of the batch and each row's family
        check_adapter_indices(torch.tensor(rows, dtype=torch.int64), len(self._configs))  # on the host
        if self.prompts is None:
            return self._plain(input_ids, attention_mask)
        used = set(rows)
        present = [name for index, name in enumerate(self._configs) if index in used]
        if isinstance(positions, str):
            self._check_lengths(present, input_ids.shape[1])
            if self.lora_a is not None and input_ids.shape[1] > self.lora_a.shape[1]:
                # no row has offsets here (checked above): explicit starts, so the op sets no length limit of its own
                starts = row_starts(attention_mask, positions)
                positions = torch.zeros_like(adapter_index) if starts is None else starts
        if prompt_columns:
            prompts, lengths = self._prompts(present), self.prompt_lengths
        else:  # the ops put m_max >= 1 columns in front: one column of each prompt, cut off below
            prompts, lengths = self.prompts[:, :1], torch.ones_like(self.prompt_lengths)
        configs = list(self._configs.values())
        adept = [b for b, index in enumerate(rows) if index >= 0 and isinstance(configs[index], ADePTConfig)]
        inputs = _Rows(input_ids, attention_mask, adapter_index, positions)
        run = functools.partial(self._run, prompts=prompts, lengths=lengths, slots=slots, training=prompt_columns)
        if not adept:
            embeds, mask = run(inputs, adept=False)
        elif len(adept) == len(rows):
            embeds, mask = run(inputs, adept=True)
        else:  # each family's op on its rows, then the rows back in batch order (each output row has one source)
            others = sorted(set(range(len(rows))) - set(adept))
            parts = [run(inputs.select(others), adept=False), run(inputs.select(adept), adept=True)]
            inverse = torch.argsort(torch.tensor(others + adept, device=input_ids.device))
            embeds, mask = (torch.cat(tensors).index_select(0, inverse) for tensors in zip(*parts, strict=True))
        columns = prompts.shape[1] if not prompt_columns else 0
        return embeds[:, columns:], mask[:, columns:]

    def _plain(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """An empty bank's rows (every one a -1 row, ``m_max = 0``, checked by the caller): the plain token embeddings
        and the mask as given (int64 ones when None); the ids' values checked as the ops check them."""
        weight = self.embedding.weight
        if resolve_check_ids(None):
            check_token_data(input_ids, weight.shape[0], attention_mask)
        mask = torch.ones_like(input_ids, dtype=torch.int64) if attention_mask is None else attention_mask
        return F.embedding(input_ids, weight), mask

    def _run(
        self, rows: _Rows, adept: bool, prompts: torch.Tensor, lengths: torch.Tensor, slots: str, training: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One family's op on ``rows``: :func:`mixed_adept_embed` for ADePT rows (dropout while the bank trains and
        ``training``), else :func:`mixed_dept_embed` (prompt tuning, DePT, LAMP, EPT and ``-1`` rows)."""
        weight, ids, index = self.embedding.weight, rows.input_ids, rows.adapter_index
        if adept:
            ffn = (self.adept_w_down, self.adept_b_down, self.adept_w_up, self.adept_b_up)
            return mixed_adept_embed(
                ids, weight, prompts, lengths, *ffn, index, attention_mask=rows.attention_mask, slots=slots,
                dropout=self.dropouts, training=self.training and training, backend=self.backend,
            )  # fmt: skip
        return mixed_dept_embed(
            ids, weight, prompts, lengths, self.lora_a, self.lora_b, self.scales, index,
            attention_mask=rows.attention_mask, positions=rows.positions, backend=self.backend,
            max_lengths=self.max_lengths, slots=slots,
        )  # fmt: skip

    def extra_repr(self) -> str:
        adapters = ", ".join(
            f"{name}: {config.method} m={prompt_rows(config)}" for name, config in self._configs.items()
        )
        return f"adapters=[{adapters}], positions={self.positions!r}, slots={self.slots!r}, backend={self.backend!r}"
