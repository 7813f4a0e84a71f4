"""Many adapters on one frozen model, mixed in one batch: ``attach_many(model, {name: folder | config}) ->
MultiAdapterModel``, whose ``forward(..., adapter_names=[...])`` runs each row with its own adapter (PEFT's words:
``add_adapter``, ``load_adapter``, ``delete_adapter``, ``save_adapter``). The adapters may be of different methods
(prompt tuning, DePT, ADePT, LAMP, EPT: :data:`~prompt_ops.models.bank.BANK_CONFIGS`) in one model and one batch,
and LPT adapters next to them or alone (:mod:`prompt_ops.models.mixed_late`: an LPT row is a ``"__base__"`` row at
the input, its generated prompt inserted after layer ``k``; the LPT adapters of a model share ``k``; a model of LPT
adapters only has an empty bank, ``m_max = 0``). A model keeps at least one adapter.

Every row has the bank's ``m_max`` prompt columns in front of its input (:mod:`prompt_ops.models.bank`): adapter
``a``'s ``m_a`` prompt rows and ``m_max - m_a`` masked zero slots, and for ``"__base__"`` rows every slot masked.
Where the slots go depends on the model (:func:`slot_layout`): in front of the prompt, so the prompt sits right
before the input, for decoder-only causal LMs (GPT-2, LLaMA) and encoder-decoder models (T5: the prompt on the
encoder, whose relative bias sees distances only); between the prompt and the input for bidirectional encoders
(BERT, RoBERTa), whose heads may read column 0 (BERT's pooler): there each row's prompt starts, as it does alone.
There a ``"__base__"`` row, which has no prompt, gets in its (masked) column 0 a copy of its first real token's
embedding, position id and token type: a masked column is no attention key, so it changes no other column, and as a
query with the first real token's inputs over the same keys it has that token's hidden state at every layer, which
is what the plain model's column 0 holds. The input is at columns ``m_max + t`` in both layouts. Position ids follow
each row's own prompt (prompt at ``0 .. m_a-1``, input from ``m_a``, the masked slots at 0), token-level labels get
``-100`` over the slots, and a causal LM's ``"__base__"`` rows ignore the label of their first real token, which the
plain model never predicts (here a masked column would). So a row's outputs, loss terms and gradients are those of
its adapter attached alone (:func:`prompt_ops.models.attach`), and a ``"__base__"`` row's those of the plain model
on its real tokens: token-level heads, LM heads and BERT's sequence classification (pooler) alike.

``generate(input_ids, attention_mask, adapter_names=[...])`` prefills with the mixed embeddings, the mask and
the per-row position ids, and gives every generated token its own row's treatment (DePT's and EPT's offset at the
token's position for the row's adapter, none past that adapter's ``max_length``; ADePT's FFN offset; the plain
token for prompt-tuning, LAMP and ``"__base__"`` rows), so each row generates what its adapter alone generates (a
``"__base__"`` row: the plain model).

Decoder-only GPT-2, LLaMA, Mistral and Qwen2 share each adapter's prompt pass (:mod:`prompt_ops.models.mixed_prompt`):
under grad (training, with autograd) in one model call for the batch's adapters, a row each, and without grad (eval
forward, ``generate``'s prefill) once per adapter state, kept per adapter name; each row reads its adapter's pass, so
only the input tokens run, whatever the adapter mix. ``attach_many(..., shared_prompt=None)`` as
:func:`~prompt_ops.models.attach` takes it (False turns it off); calls the pass does not cover (a batch of
``"__base__"`` rows only, the calls :func:`~prompt_ops.models.shared_prompt.call_refusal` refuses: active dropout in
auto mode, other arguments; in auto mode under grad, a batch whose adapter rows each have their own adapter) run every
row's prompt, saying why at debug level.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from prompt_ops.methods.base import check_backend
from prompt_ops.methods.official import folder_path
from prompt_ops.models.adapters import read_adapter
from prompt_ops.models.attach import (
    DecodeEmbedding,
    call_prompted,
    check_generate_call,
    check_prompted_call,
    generate_decoding,
    is_encoder_decoder,
    prompted_labels,
    takes_position_ids,
)
from prompt_ops.models.bank import BANK_CONFIGS, BASE, AdapterBank, check_adapter_name, check_bank_config
from prompt_ops.models.configs import LPTConfig, MethodConfig
from prompt_ops.models.inputs import first_position
from prompt_ops.models.mixed_late import LateAdapters, check_insertion, check_late_config
from prompt_ops.models.mixed_prompt import gather_passes
from prompt_ops.models.optim import mixed_groups
from prompt_ops.models.positions import model_position_ids, next_input_positions
from prompt_ops.models.prompt_cache import PromptCache, reusable_now, state_key
from prompt_ops.models.shared_prompt import (
    CAUSAL_HEADS,
    PromptPass,
    cache_argument,
    call_refusal,
    check_shared_prompt,
    generate_copies,
    generate_refusal,
    log_fallback,
    prompt_logit_rows,
    prompt_pass,
    shared_forward,
    wants_hidden_states,
)
from prompt_ops.models.tuned import model_embedding, write_adapter
from prompt_ops.ops.positions import check_positions, leading_pads

Tensor = torch.Tensor

AdapterSource = str | os.PathLike | MethodConfig
"""What names an adapter for :func:`attach_many`: a saved adapter folder, or a config for a new one."""
LATE_REFUSAL = "LPT rows insert their generated prompt inside the stack, after layer k"
"""Why a batch with LPT rows runs every row's prompt (no shared prompt pass)."""


def _resolve(
    model: nn.Module, embedding: nn.Embedding, source: object, positions: str, argument: str
) -> tuple[MethodConfig, dict[str, torch.Tensor] | None]:
    """``(config, tensors)`` of an adapter ``source``: a folder read and checked against ``model``
    (:func:`prompt_ops.models.adapters.read_adapter`), or a config (tensors None: initialised as the method does);
    either checked for the bank (LPT: for the model's LPT adapters, :func:`~prompt_ops.models.mixed_late.
    check_late_config`)."""
    if isinstance(source, (str, os.PathLike)):
        config, tensors = read_adapter(model, source)
        return _check_config(model, embedding, config, positions, f"{argument} ({Path(source)})"), tensors
    if isinstance(source, MethodConfig):
        return _check_config(model, embedding, source, positions, argument), None
    raise TypeError(
        f"{argument} must be an adapter folder (str or os.PathLike) or the config of a method the bank holds "
        f"({', '.join(cls.__name__ for cls in BANK_CONFIGS)}), got {type(source).__name__}"
    )


def _check_config(
    model: nn.Module, embedding: nn.Embedding, config: MethodConfig, positions: str, argument: str
) -> MethodConfig:
    """``config`` checked for the bank, or (LPT) resolved and checked for ``model``'s LPT adapters."""
    if isinstance(config, LPTConfig):
        return check_late_config(model, config, positions, argument)
    return check_bank_config(config, embedding, positions, argument)


def slot_layout(model: nn.Module) -> str:
    """Where a mixed row's masked slots go for ``model`` (the module docstring): ``"front"`` for encoder-decoder
    models and causal LMs (a ``...ForCausalLM`` / ``...LMHeadModel`` head, or a config with ``is_decoder``),
    ``"after_prompt"`` for the others, bidirectional encoders. (On a causal model both layouts give each row its
    adapter's result; the front one keeps the prompt right before the input.)"""
    causal = type(model).__name__.endswith(CAUSAL_HEADS) or getattr(getattr(model, "config", None), "is_decoder", False)
    return "front" if is_encoder_decoder(model) or causal else "after_prompt"


def mirror_first_token(
    is_base: Tensor,
    starts: Tensor,
    embeds: Tensor,
    model_positions: Tensor | None,
    token_type_ids: Tensor | None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The ``"after_prompt"`` layout's base rows (``is_base (B,)``): column 0 of ``embeds (B, T, d)``, of the model
    position ids ``(B, T)`` and of the token types (the user's ``(B, L)``, returned extended with zeros to ``(B, T)``)
    becomes a copy of column ``starts[b]`` (each row's first real token) in those rows (the module docstring says
    why); the others unchanged. The mask stays 0 there."""
    batch, total = embeds.shape[:2]
    rows = torch.arange(batch, device=embeds.device)
    column = torch.where(is_base[:, None], embeds[rows, starts], embeds[:, 0])  # (B, d)
    embeds = torch.cat([column[:, None], embeds[:, 1:]], dim=1)
    if model_positions is not None:
        model_positions = model_positions.expand(batch, total)
        column = torch.where(is_base, model_positions[rows, starts], model_positions[:, 0])
        model_positions = torch.cat([column[:, None], model_positions[:, 1:]], dim=1)
    if token_type_ids is not None:
        slots = total - token_type_ids.shape[1]
        token_type_ids = torch.cat([token_type_ids.new_zeros((batch, slots)), token_type_ids], dim=1)
        column = torch.where(is_base, token_type_ids[rows, starts], token_type_ids[:, 0])
        token_type_ids = torch.cat([column[:, None], token_type_ids[:, 1:]], dim=1)
    return embeds, model_positions, token_type_ids


class MultiAdapterModel(nn.Module):
    """A frozen Hugging Face model behind an :class:`~prompt_ops.models.bank.AdapterBank` of adapters of any
    method it holds; each row of a batch picks its adapter by name (the module docstring). Only the bank's stacked
    parameters train; adding or deleting an adapter replaces them (build the optimizer again). Built by
    :func:`attach_many`, which checks every adapter before the model is touched. ``prompt_caches``: each adapter's
    kept prompt pass by name (the module docstring), emptied when an adapter is added, loaded or deleted; a kept pass
    is also rebuilt after any change to a parameter (:mod:`prompt_ops.models.prompt_cache`; the bank's parameters
    are stacked, so an optimizer step rebuilds every adapter's)."""

    def __init__(
        self, model: nn.Module, bank: AdapterBank, shared_prompt: bool | None = None, late: LateAdapters | None = None
    ):
        super().__init__()
        self.shared_prompt = check_shared_prompt(shared_prompt, model, input_dependent=False)
        self.prompt_caches: dict[str, PromptCache] = {}
        model.requires_grad_(False)
        self.base_model = model
        self.bank = bank
        self.late = late  # the LPT adapters (prompt_ops.models.mixed_late), None until the first one
        self.is_encoder_decoder = is_encoder_decoder(model)
        self.takes_position_ids = takes_position_ids(model)
        self.shifts_labels = not self.is_encoder_decoder and type(model).__name__.endswith(CAUSAL_HEADS)
        self.train(model.training)

    @property
    def adapter_names(self) -> list[str]:
        """The bank's adapters, in the order of their index, then the LPT adapters."""
        return self.bank.names + self._late_names

    @property
    def _late_names(self) -> list[str]:
        return [] if self.late is None else self.late.names

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter ``name``'s parameters, unpadded, under the single-adapter names (views of the bank's)."""
        if name in self._late_names:
            return self.late.adapter_state_dict(name)
        return self.bank.adapter_state_dict(name)

    def _check_new_name(self, name: object, argument: str) -> None:
        check_adapter_name(name, argument)
        if name in self.adapter_names:
            raise ValueError(
                f"{argument}: an adapter named {name!r} is already loaded ({self.adapter_names}); delete_adapter it "
                "first"
            )

    def _add(self, name: str, config: MethodConfig, tensors: dict[str, torch.Tensor] | None, argument: str) -> None:
        """Add a checked adapter to the bank, or (LPT) to the LPT adapters (created with the first)."""
        if not isinstance(config, LPTConfig):
            self.bank.add(name, config, tensors)
            return
        late = self.late or LateAdapters(self.base_model, backend=self.bank.backend, positions=self.bank.positions)
        late.add(name, config, tensors, argument)
        self.late = late
        late.train(self.training)

    def add_adapter(self, name: str, config: MethodConfig) -> None:
        """Add a new adapter ``name`` of ``config`` (a method the bank holds, or LPT; initialised as the method
        does)."""
        if isinstance(config, LPTConfig):
            self._check_new_name(name, "name")
            config = check_late_config(self.base_model, config, self.bank.positions)
        elif name in self._late_names:  # the bank refuses its own names
            self._check_new_name(name, "name")
        self._add(name, config, None, "config")
        self.prompt_caches.clear()

    def load_adapter(self, folder: str | os.PathLike, adapter_name: str) -> None:
        """Add the adapter saved in ``folder`` (by ``save_adapter`` here or on a single model) as ``adapter_name``;
        the folder and the name are checked before the bank changes."""
        folder_path("folder", folder)
        self._check_new_name(adapter_name, "adapter_name")
        config, tensors = _resolve(self.base_model, self.bank.embedding, folder, self.bank.positions, "folder")
        self._add(adapter_name, config, tensors, "folder")
        self.prompt_caches.clear()

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name``; the model keeps at least one adapter (the bank's last one may go while LPT
        adapters remain, and the other way round)."""
        if self.adapter_names == [name]:
            raise ValueError(
                f"name: {name!r} is the model's only adapter and a mixed-adapter model keeps at least one; the plain "
                "base model is its base_model"
            )
        if name in self._late_names:
            self.late.delete(name)
        else:
            self.bank.delete(name)
        self.prompt_caches.clear()

    def save_adapter(self, name: str, folder: str | os.PathLike) -> Path:
        """Write adapter ``name`` into ``folder`` (created if needed) in the format of
        :func:`prompt_ops.models.save_adapter`, loadable by :func:`prompt_ops.models.load_adapter` on a single
        model; returns the folder."""
        config = self.late.config(name) if name in self._late_names else self.bank.config(name)
        return write_adapter(folder, config, self.adapter_state_dict(name), self.bank.embedding)

    def _row_lengths(self, adapter_index: torch.Tensor) -> torch.Tensor:
        """``(B,)`` each row's own prompt length (0 for ``"__base__"`` rows, and every row of an empty bank)."""
        if self.bank.prompt_lengths is None:
            return torch.zeros_like(adapter_index)
        lengths = self.bank.prompt_lengths[adapter_index.clamp(min=0)]
        return torch.where(adapter_index >= 0, lengths, torch.zeros_like(lengths))

    def _adapter_index(self, adapter_names: object, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B,)`` adapter index of each row of ``input_ids`` (checked) from ``adapter_names``, one per row."""
        if adapter_names is None:
            raise TypeError("adapter_names must be a list or tuple of adapter names, one per row of input_ids")
        names = adapter_names if self.late is None else self.late.bank_names(adapter_names)  # LPT rows: base rows
        index = self.bank.index(names).to(input_ids.device)
        if index.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"adapter_names must name one adapter per row of input_ids ({input_ids.shape[0]} rows), got "
                f"{index.shape[0]} names"
            )
        return index

    def _model_positions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        index: torch.Tensor,
    ) -> torch.Tensor | None:
        """The base model's ``(B, m_max + L)`` position ids for the mixed input (each row's own prompt length), or
        None for a model that takes none."""
        if not self.takes_position_ids:
            return None
        return model_position_ids(
            attention_mask, self.bank.positions, tuple(input_ids.shape), input_ids.device, self.bank.num_slots,
            first_position(self.base_model), position_ids, self._row_lengths(index), self.bank.slots,
        )  # fmt: skip

    def _late_rows(
        self, adapter_names, input_ids: torch.Tensor, attention_mask, labels=None, source_lengths=None, **kwargs
    ):
        """The call's LPT rows (:meth:`LateAdapters.rows <prompt_ops.models.mixed_late.LateAdapters.rows>`), None
        without any; ``labels``: token-level ones, as the caller gave them. ``source_lengths`` for a batch without
        LPT rows is a ``ValueError``."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        rows = None
        if self.late is not None:
            rows = self.late.rows(adapter_names, input_ids.device, mask, labels, source_lengths, **kwargs)
        if rows is None and source_lengths is not None:
            raise ValueError(
                "source_lengths says the source of each LPT row of a batch (the tokens its prompt is computed from), "
                f"but no row of this batch uses an LPT adapter ({self._late_names or 'the model has none'})"
            )
        return rows

    def _late_active(self, rows):
        """The LPT hooks act on the calls within (nothing to do without LPT rows)."""
        return contextlib.nullcontext() if rows is None else self.late.active(rows)

    def _mixed_refusal(self, refusal: str | None, index: torch.Tensor) -> str | None:
        """Why this call runs every row's prompt, or None when it shares each adapter's prompt pass: ``refusal``
        (:func:`~prompt_ops.models.shared_prompt.call_refusal`'s or ``generate_refusal``'s), then a batch
        without adapter rows, in auto mode under grad a batch whose adapter rows each have their own adapter (the
        mixed form of ``call_refusal``'s one row under grad), a layout without the slots in front."""
        if refusal is not None:
            return refusal
        rows = index[index >= 0]
        if rows.numel() == 0:
            return "no row of the batch uses an adapter"
        if self.shared_prompt is None and torch.is_grad_enabled() and rows.unique().numel() == rows.numel():
            return (
                "under grad, every adapter row of the batch has its own adapter: each prompt runs once either way, "
                "so auto mode saves the shared pass's second model call"
            )
        if self.bank.slots != "front":
            return f"the bank's slots are {self.bank.slots!r}, not in front of each prompt"
        return None

    def _prompt_pass(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        model_positions: torch.Tensor,
        index: torch.Tensor,
        hidden: bool,
        logit_rows: int,
    ) -> PromptPass:
        """The batch's prompt pass (:mod:`~prompt_ops.models.mixed_prompt`), from the prompt columns of ``embeds (B,
        m_max + L, d)``, ``mask`` and ``model_positions`` of one row of each adapter of the batch, with the logits of
        the last ``logit_rows`` prompt columns. Under grad one pass runs those rows together, with autograd; without
        grad each adapter's pass comes from its prompt cache (built at batch 1 from its own prompt columns)."""
        slots = self.bank.num_slots
        rows = index.tolist()
        used = sorted(set(rows) - {-1})
        firsts = [rows.index(adapter) for adapter in used]
        lookup = {adapter: entry for entry, adapter in enumerate(used)}
        row_pass = torch.tensor([lookup.get(adapter, -1) for adapter in rows], device=index.device)
        if torch.is_grad_enabled():
            picked = torch.tensor(firsts, device=index.device)
            columns = embeds[picked, :slots], model_positions[picked, :slots]
            batched = prompt_pass(self.base_model, *columns, hidden, mask[picked, :slots])
            return gather_passes([batched], row_pass, slots, hidden, logit_rows)
        passes, key, reusable = [], state_key(self), reusable_now(self)  # one model walk for every adapter's cache
        for adapter, row in zip(used, firsts, strict=True):
            name = self.bank.names[adapter]
            columns = slice(slots - self.bank.prompt_rows(name), slots)
            embed, position = embeds[row : row + 1, columns], model_positions[row : row + 1, columns]
            cache = self.prompt_caches.setdefault(name, PromptCache())
            build = functools.partial(prompt_pass, self.base_model, embed, position)
            passes.append(cache.get(self, build, hidden, self.adapter_state_dict(name), key, reusable))
        return gather_passes(passes, row_pass, slots, hidden, logit_rows)

    def parameter_groups(
        self, lr: float | None = None, offset_lr: float | None = None, weight_decay: float | None = None
    ) -> list[dict]:
        """``torch.optim`` parameter groups of every adapter's stacked tables: each table at the rate and weight
        decay its method's split and recipe give it (:func:`~prompt_ops.models.optim.mixed_groups`; e.g. the prompts
        at 3e-1, DePT's pair at 5e-4, ADePT's FFN at 1e-4, LPT's generators at 1e-3 with weight decay 0.1), ``lr``,
        ``offset_lr`` and ``weight_decay`` overriding every method's when given. ``add_adapter``, ``load_adapter``
        and ``delete_adapter`` re-stack the tables into new parameters: build the groups and the optimizer again
        after them."""
        configs = [self.bank.config(name) for name in self.bank.names]
        configs += [self.late.config(name) for name in self._late_names]
        return mixed_groups(self, configs, lr, offset_lr, weight_decay)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        adapter_names: list[str] | tuple[str, ...] | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        source_lengths: torch.Tensor | None = None,
        **kwargs,
    ):
        """The base model's forward on the mixed batch: ``adapter_names`` names each row's adapter (or
        ``"__base__"``), one per row of ``input_ids``; the other arguments as :class:`PromptTunedModel` takes them.
        ``source_lengths (B,)`` (causal models, a batch with LPT rows): each LPT row's count of source tokens from
        its first real token, as :meth:`LatePromptTunedModel.forward <prompt_ops.models.late.LatePromptTunedModel.
        forward>` takes it (the other rows' values are not read); without it, token-level ``labels`` tell an LPT
        row's source, and without either its whole input is."""
        if inputs_embeds is not None or input_ids is None:
            raise ValueError(
                "MultiAdapterModel needs input_ids (the adapters' offsets are computed from the token ids); "
                "inputs_embeds is not supported"
            )
        slots = self.bank.num_slots
        token_labels = check_prompted_call(
            self.base_model, slots, input_ids, labels, token_type_ids, position_ids, kwargs
        )
        index = self._adapter_index(adapter_names, input_ids)
        late = self._late_rows(
            adapter_names, input_ids, attention_mask, labels if token_labels else None, source_lengths
        )
        model_embedding(self.base_model)  # refuses a sharded table
        embeds, mask = self.bank(input_ids, attention_mask, index)
        if self.is_encoder_decoder:
            with self._late_active(late):
                return self.base_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)
        model_positions = self._model_positions(input_ids, attention_mask, position_ids, index)
        base = index < 0
        pads = torch.zeros_like(index) if attention_mask is None else leading_pads(attention_mask)
        if self.bank.slots == "after_prompt":
            embeds, model_positions, token_type_ids = mirror_first_token(
                base, slots + pads, embeds, model_positions, token_type_ids
            )
        if token_labels:
            labels = prompted_labels(labels, slots)
            if self.shifts_labels:  # the plain model never predicts a sequence's first token; a masked column would
                labels[base, slots + pads[base]] = -100
        refusal = call_refusal(self.base_model, self.shared_prompt, kwargs, token_type_ids, labels, len(index))
        refusal = self._mixed_refusal(refusal or (LATE_REFUSAL if late is not None else None), index)
        if refusal is None:
            logit_rows = prompt_logit_rows(kwargs, labels, slots, input_ids.shape[1])
            hidden = wants_hidden_states(self.base_model, kwargs)
            prompt = self._prompt_pass(embeds, mask, model_positions, index, hidden, logit_rows)
            return shared_forward(self.base_model, embeds, mask, model_positions, labels, prompt, kwargs)
        log_fallback(refusal)
        with self._late_active(late):
            return call_prompted(self.base_model, embeds, mask, labels, model_positions, token_type_ids, kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        adapter_names: list[str] | tuple[str, ...] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Generate with the base model's ``generate`` and its KV cache, each row with its own adapter
        (``adapter_names``, one per row of ``input_ids``, ``"__base__"`` for the plain model); the other arguments
        as :meth:`PromptTunedModel.generate <prompt_ops.models.attach.PromptTunedModel.generate>` takes them.

        Decoder-only models: returns ``cat(input_ids, new tokens)``. The prefill is a mixed forward (the module
        docstring: each row's prompt, mask and position ids); each row's generated tokens continue from its own last
        position and get its adapter's per-token treatment (DePT's and EPT's offset at their input positions while
        below the adapter's ``max_length``, none after; ADePT's FFN offset; nothing for prompt-tuning, LAMP and
        ``"__base__"`` rows),
        every copy of a row under beams or ``num_return_sequences`` its row's. So row ``b`` generates what its
        adapter attached alone generates from that row. Encoder-decoder models: the prompt goes to the encoder;
        returns what the base ``generate`` returns (the decoder's tokens). Every argument is checked before the model
        is touched, and the input embedding swapped in for decoding is put back however ``generate`` ends."""
        position_ids = kwargs.pop("position_ids", None)
        if kwargs.pop("source_lengths", None) is not None:
            raise ValueError(
                "MultiAdapterModel.generate does not take source_lengths: the input_ids given to generate are the "
                "source each LPT row's prompt is computed from"
            )
        batch, seq_len = check_generate_call(
            self.base_model, self.bank.num_slots, input_ids, position_ids, kwargs, "MultiAdapterModel"
        )
        index = self._adapter_index(adapter_names, input_ids)
        late = self._late_rows(adapter_names, input_ids, attention_mask, source_columns=self.bank.num_slots + seq_len)
        model_embedding(self.base_model)  # refuses a sharded table
        embeds, mask = self.bank(input_ids, attention_mask, index)
        if self.is_encoder_decoder:
            with self._late_active(late):
                return self.base_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        model_positions = self._model_positions(input_ids, attention_mask, position_ids, index)
        refusal = generate_refusal(self.base_model, self.shared_prompt, kwargs, batch)
        refusal = self._mixed_refusal(refusal or (LATE_REFUSAL if late is not None else None), index)
        if refusal is None:  # transformers prefills only the embeddings past the cache's length
            prompt = self._prompt_pass(embeds, mask, model_positions, index, False, 0)  # generate keeps no logits
            copies = generate_copies(self.base_model, kwargs)
            kwargs[cache_argument(self.base_model)] = prompt.batch_cache(batch * copies)
        else:
            log_fallback(refusal)
        if model_positions is not None:  # prefill as a forward; transformers continues each row from its last + 1
            kwargs["position_ids"] = model_positions
        start = next_input_positions(attention_mask, self.bank.positions, (batch, seq_len), input_ids.device)
        decode = DecodeEmbedding(self.bank.embedding, self.bank.embed_tokens, start, index)
        with self._late_active(late):
            return generate_decoding(self.base_model, decode, input_ids, embeds, mask, kwargs)

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}"


def attach_many(
    model: nn.Module,
    adapters: Mapping[str, AdapterSource],
    backend: str | None = None,
    positions: str = "tokens",
    shared_prompt: bool | None = None,
) -> MultiAdapterModel:
    """Freeze ``model`` and put the ``adapters`` (``{name: adapter folder or config}``, of any methods in
    :data:`~prompt_ops.models.bank.BANK_CONFIGS`) in one bank behind it: a :class:`MultiAdapterModel`.
    ``positions``: the bank's position convention, which every adapter's config must have. ``shared_prompt``: the
    shared prompt pass per adapter (the module docstring), as :func:`~prompt_ops.models.attach` takes it. Every
    name, folder and config is checked before the model is touched."""
    embedding = model_embedding(model)
    check_backend(backend)
    check_shared_prompt(shared_prompt, model, input_dependent=False)
    check_positions(positions)
    if not isinstance(adapters, Mapping):
        raise TypeError(
            f"adapters must be a mapping of adapter names to folders or configs, got {type(adapters).__name__}"
        )
    if not adapters:
        raise ValueError("adapters must name at least one adapter")
    resolved = {}
    for name, source in adapters.items():
        check_adapter_name(name, "adapters' keys")
        resolved[name] = _resolve(model, embedding, source, positions, f"adapters[{name!r}]")
    late_configs = {name: config for name, (config, _) in resolved.items() if isinstance(config, LPTConfig)}
    check_insertion(late_configs)
    late = LateAdapters(model, backend=backend, positions=positions) if late_configs else None  # checks the stack
    bank = AdapterBank(embedding, backend=backend, positions=positions, slots=slot_layout(model))
    for name, (config, tensors) in resolved.items():
        if name not in late_configs:
            bank.add(name, config, tensors)
    for name in late_configs:  # the hooks go on the model's stack with the first
        late.add(name, *resolved[name], f"adapters[{name!r}]")
    return MultiAdapterModel(model, bank, shared_prompt, late)


__all__ = ["BASE", "MultiAdapterModel", "attach_many", "slot_layout"]
