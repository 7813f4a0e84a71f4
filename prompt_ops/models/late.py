"""LPT inside a Hugging Face model: ``attach(model, LPTConfig(layer=k, ...)) -> LatePromptTunedModel``.

The model runs as usual; hooks on its layer stack (:mod:`prompt_ops.models.stacks`) do what the official code's
modified ``forward`` does:

1. on entering the stack, record the 2-D attention mask and the input's positions, and turn gradients off: the
   embeddings and layers ``1..k`` run under ``no_grad``, so autograd records nothing below layer ``k``;
2. after layer ``k``, restore the caller's grad mode and replace its output with :func:`prompt_ops.lpt_insert`'s
   ``(B, n+L, d)`` buffer (generated prompt, then the layer-``k`` hidden states);
3. before every layer above ``k``, swap in the mask (and the rotary or relative position bias) for ``n + L``;
4. after the last layer, drop the ``n`` prompt rows, so the model's output has the input's length. This is what
   the official code reads: RoBERTa's mask token at ``mask_pos + n``, GPT-2's logits ``[n:]``. Heads, losses and
   ``labels`` work unchanged, and ``token_type_ids`` act at the input as usual.

**Positions** follow the config's ``positions`` (:mod:`prompt_ops.ops.positions`). With ``"tokens"`` (the default)
a row's first real token is at position 0 however much padding precedes it: the stack gets these ``position_ids``
(families that take them; RoBERTa's numbering starts at ``padding_idx + 1``), and above ``k`` the prompt sits at
``0..n-1`` and the input at its own positions shifted by ``n`` (LLaMA's rotary tables, T5's relative bias, built per
row when rows differ). So a sequence gives the same outputs alone, left- or right-padded in a batch. ``"absolute"``
numbers the padded columns. The user's ``position_ids`` are always honoured (below ``k`` as given, above ``k``
shifted by ``n``).

**The source** (causal models). The prompt is computed after layer ``k`` and every position attends to it, so on a
causal LM it must be computed from the *source* only: a prompt that read a target token would show it to the
positions that predict it. The official GPT-2 LPT reads the last source token (``seq_lengths``). Here a row's source
is its first ``source_lengths[b]`` real tokens: NPG ``read="last"`` reads the last of them, APPG pools them.
``source_lengths`` is a forward keyword; without it, token-level ``labels`` tell it (the source is what carries
``-100`` from the row's first real token up to its first target); without either, the whole input is the source
(inference, and the input given to ``generate``). A row whose first real token is already a target has no source
and is refused. On bidirectional models every token sees every other below ``k`` anyway, so a source means nothing
there: ``source_lengths`` is refused, and labels (masked-LM targets sit at ``[MASK]`` tokens) tell nothing. NPG
``read="first"`` reads each row's first real token (the official RoBERTa ``<s>``).

**Generation** (decoder-only) uses the KV cache: the input given to ``generate`` is the source; at prefill the
prompt is computed from it and inserted after layer ``k``, so layers ``1..k`` cache the ``L + t`` tokens and the
layers above ``k`` cache ``n + L + t`` entries (the prompt rows stay in their cache). Each decode step runs the new
token through the stack with the rebuilt upper masks and rotary positions (each row continuing from its own length
under ``"tokens"``); nothing recomputes the prompt. A forward call given a cache continues the same way (it must be a
``DynamicCache`` filled by this model: its upper layers hold ``n`` more entries than its lower ones). Without a
cache (``use_cache=False``) every step recomputes the sequence with the source fixed to the input, so both give the
same tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

import torch
from torch import nn

from prompt_ops.methods.lpt import LPT
from prompt_ops.models.configs import LPTConfig, check_config
from prompt_ops.models.inputs import (
    check_generate_inputs,
    check_generate_kwargs,
    check_generated_length,
    check_generation_fits,
    check_ids,
    check_length,
    check_model_labels,
    check_position_ids,
    check_token_type_ids,
)
from prompt_ops.models.positions import input_positions, prompted_positions
from prompt_ops.models.stacks import LayerStack, bind, find_stack, with_argument
from prompt_ops.models.tuned import TunedModel, model_embedding
from prompt_ops.ops.backend import resolve_check_ids
from prompt_ops.ops.positions import check_positions
from prompt_ops.ops.validation import TOKEN_ID_DTYPES, check_ids_in_range, check_same_device

IGNORE_INDEX = -100
"""The label of a token no loss is computed for: on a causal LM, the source tokens."""
SOURCE_WITH_CACHE = (
    "source_lengths applies to a pass that computes the prompt (no cache, or an empty one); with a filled cache the "
    "prompt is already in it"
)
"""Why ``source_lengths`` is refused for a pass that continues a filled cache."""


@dataclasses.dataclass
class StackPass:
    """What the hooks share during one pass through the stack."""

    mask: torch.Tensor  # (B, past + L) 2-D keep mask of every position, the cached ones first
    positions: torch.Tensor  # (B or 1, L) positions of the L new tokens, from 0 (the prompt excluded)
    grad_enabled: bool  # the caller's grad mode, restored above layer k
    past: int = 0  # positions already in the cache (0: this pass generates and inserts the prompt)
    source_lengths: torch.Tensor | None = None  # (B,) real source tokens per row; None: every real token
    upper: dict | None = None  # arguments of the layers above k, built after layer k
    inserted: int = 0  # prompt rows in front of this pass's hidden states (dropped after the last layer)


@dataclasses.dataclass
class _Pending:
    """What the wrapper's ``forward`` hands to the next pass through the stack."""

    source_lengths: torch.Tensor | None = None
    labels: torch.Tensor | None = None  # token-level labels of a causal LM (the source is what carries -100)


def output_hidden(output):
    """The hidden states of a layer's output (a tensor, or the first entry of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def replace_hidden(output, hidden):
    """``output`` with its hidden states replaced by ``hidden`` (same kind: tensor or tuple)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def lpt_stack(model: nn.Module, attaching: bool = False) -> LayerStack:
    """The layer stack LPT hooks into, for a supported model without gradient checkpointing and without a
    :class:`LatePromptTunedModel` attached; ``attaching`` (a new LPT's hooks go on it): nor the LPT adapters of a
    mixed-adapter model (:mod:`prompt_ops.models.mixed_late`), which read their own adapter folders with this."""
    stack = find_stack(model)
    flag = (
        "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
    )
    if getattr(model, flag, False):
        raise ValueError("LPT does not support gradient checkpointing: layers above k re-run without their hooks")
    owners = [getattr(hook, "__self__", None) for hook in stack.entry._forward_pre_hooks.values()]
    owner = next((owner for owner in owners if isinstance(owner, LateHooks)), None)
    if isinstance(owner, TunedModel) or (attaching and owner is not None):
        remedy = "call unload() on it first" if isinstance(owner, TunedModel) else "delete its LPT adapters first"
        raise ValueError(
            f"model already has an LPT attached (a {type(owner).__name__} hooks its layer stack): {remedy}, or "
            "attach to a fresh copy of the model"
        )
    return stack


def read_index(read: str, mask: torch.Tensor, source_lengths: torch.Tensor | None) -> torch.Tensor | None:
    """NPG's row per sample: the first real token (None, the op's default) or (``read="last"``) the column of the
    last source token (``source_lengths[b]``-th real token; every real token when None) of the 2-D ``mask``."""
    if read == "first":
        return None
    valid = mask != 0
    lengths = valid.sum(1) if source_lengths is None else source_lengths
    return (valid.to(torch.int64).cumsum(1) < lengths[:, None]).sum(1)  # the column of the lengths[b]-th real token


class LateHooks:
    """The hooks on a :class:`~prompt_ops.models.stacks.LayerStack` that insert rows in front of the hidden states
    after layer ``k`` (the module docstring's steps), shared by :class:`LatePromptTunedModel` and the LPT adapters
    of a mixed-adapter model (:mod:`prompt_ops.models.mixed_late`). A subclass sets ``stack`` and ``_call`` and
    defines ``_enter`` (the stack's forward pre-hook: record a :class:`StackPass` and turn gradients off) and
    ``_insert`` (layer ``k``'s forward hook: through :meth:`_insert_rows` or :meth:`_continue_cached`)."""

    stack: LayerStack
    _call: StackPass | None

    def _install_hooks(self, layer: int) -> list:
        stack = self.stack
        handles = [
            stack.entry.register_forward_pre_hook(self._enter, with_kwargs=True),
            stack.entry.register_forward_hook(self._leave, always_call=True),
            stack.layers[layer - 1].register_forward_hook(self._insert),
            stack.layers[-1].register_forward_hook(self._drop_prompt_rows),
        ]
        handles += [block.register_forward_pre_hook(self._extend, with_kwargs=True) for block in stack.layers[layer:]]
        return handles  # the layer hooks act only within a pass through the stack (between _enter and _leave)

    def _check_source_lengths(self, source_lengths: object, batch: int | None) -> None:
        """``source_lengths``: a ``(B,)`` integer tensor, on a causal model (values: :meth:`_check_source_values`)."""
        if source_lengths is None:
            return
        if not self.stack.causal:
            raise ValueError(
                f"source_lengths applies to causal models (GPT-2, LLaMA), this is {self.stack.family}: its tokens "
                "all see each other below layer k, so a prompt computed from part of the input hides nothing"
            )
        if not isinstance(source_lengths, torch.Tensor):
            raise TypeError(f"source_lengths must be a torch.Tensor (B,) of ints, got {type(source_lengths).__name__}")
        if source_lengths.dtype not in TOKEN_ID_DTYPES:
            raise TypeError(f"source_lengths must be an int64 or int32 tensor, got {source_lengths.dtype}")
        if source_lengths.dim() != 1 or (batch is not None and source_lengths.shape[0] != batch):
            raise ValueError(f"source_lengths must have shape (B,) = ({batch},), got {tuple(source_lengths.shape)}")

    @staticmethod
    def _check_source_values(
        source_lengths: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``source_lengths (B,)`` as int64 on ``mask``'s device, each in ``[1, real tokens of its row]`` of the 2-D
        ``mask`` (only the rows where ``rows (B,)`` bool is set, when given): a ``ValueError`` naming the first
        row that is not."""
        lengths = source_lengths.to(device=mask.device, dtype=torch.int64)
        count = (mask != 0).sum(1)
        bad = (lengths < 1) | (lengths > count)
        if rows is not None:
            bad &= rows.to(mask.device)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"source_lengths[{row}] = {int(lengths[row])}, but row {row} has {int(count[row])} real tokens: "
                "source_lengths counts a row's source tokens from its first real token, each in [1, real tokens]"
            )
        return lengths

    def _cached_length(self, arguments: dict, layer: int, inserted: int) -> int:
        """Positions already in the cache given to a causal stack (0 without one): it must be a ``DynamicCache``
        that a pass of this model filled, whose layers above ``k = layer`` hold the ``inserted`` prompt rows more."""
        cache = arguments.get("cache", arguments.get("past_key_values"))
        if cache is None:
            cache = arguments.get("kwargs", {}).get("past_key_values")
        if cache is None or not self.stack.causal:
            return 0
        from transformers import DynamicCache

        if not isinstance(cache, DynamicCache):
            raise ValueError(
                f"the cache (past_key_values) must be a DynamicCache (generate's default) for LPT, got a "
                f"{type(cache).__name__}: its layers above k hold {inserted} entries (the prompt rows) more "
                "than the layers below"
            )
        past, upper = cache.get_seq_length(0), cache.get_seq_length(layer)
        if past and upper != past + inserted:
            raise ValueError(
                f"the cache (past_key_values) was not filled by this LPT model: its layers above k = "
                f"{layer} must hold the {inserted} prompt rows more than the {past} cached "
                f"positions below, they hold {upper}; start without a cache (the pass computes the prompt)"
            )
        return past

    def _pass_inputs(self, arguments: dict, layer: int, inserted: int):
        """``(shape (B, L), device, past, mask (B, past + L))`` of a pass through the stack with these bound
        ``arguments`` (the mask checked, ones when None), or None when it has neither ``input_ids`` nor
        ``inputs_embeds`` (the model itself refuses the call). ``layer``, ``inserted``: as :meth:`_cached_length`."""
        tokens, embeds = arguments.get("input_ids"), arguments.get("inputs_embeds")
        if tokens is None and embeds is None:
            return None
        if tokens is not None:
            shape, device = tuple(check_ids(tokens).shape), tokens.device
        else:
            shape, device = tuple(embeds.shape[:2]), embeds.device
        past = self._cached_length(arguments, layer, inserted)
        width = (shape[0], past + shape[1])
        mask = arguments.get("attention_mask")
        if mask is None:
            mask = torch.ones(width, dtype=torch.int64, device=device)
        elif not isinstance(mask, torch.Tensor) or mask.dim() != 2 or tuple(mask.shape) != width:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            cached = f" ({past} cached positions and {shape[1]} new ones)" if past else ""
            raise ValueError(f"LPT needs a 2-D attention_mask of shape {width}{cached}, got {got}")
        return shape, device, past, mask

    def _pass_positions(self, given: torch.Tensor | None, mask: torch.Tensor, past: int, convention: str):
        """``(B or 1, L)`` positions of a pass's ``L`` new tokens from 0: the ``position_ids`` given to the stack
        (in the model's numbering, from ``stack.first_position``), else by ``convention`` from the 2-D ``mask``."""
        if given is not None:
            return given.to(torch.int64) - self.stack.first_position
        return input_positions(mask, convention, tuple(mask.shape), mask.device)[:, past:]

    def _continue_cached(self, call: StackPass, keep: torch.Tensor, shift, hidden: torch.Tensor) -> None:
        """A pass with the prompt rows already in the upper layers' cache: their keep mask ``keep (B, n)`` in front
        of the pass's mask, the new tokens' positions shifted by ``shift`` (an int or ``(B, 1)``)."""
        keep = torch.cat([keep, call.mask], dim=1)
        call.upper = self.stack.upper_layer_inputs(keep, call.positions + shift, hidden)

    def _insert_rows(self, call: StackPass, output, buffer: torch.Tensor, keep: torch.Tensor, positions):
        """Layer ``k``'s output with its hidden states replaced by ``buffer (B, n + T, d)`` (the ``n`` inserted rows
        in front), ``keep (B, n + T)`` and ``positions`` the upper layers' mask and positions."""
        call.upper = self.stack.upper_layer_inputs(keep, positions, buffer)
        call.inserted = buffer.shape[1] - output_hidden(output).shape[1]
        return replace_hidden(output, buffer)

    def _leave(self, entry, args, output):
        """Registered with ``always_call=True``: runs however the pass ends, an exception included."""
        if self._call is not None:
            torch.set_grad_enabled(self._call.grad_enabled)
            self._call = None

    def _extend(self, layer, args, kwargs):
        if self._call is None or self._call.upper is None:
            return None
        bound = bind(layer, args, kwargs)
        for name, value in self._call.upper.items():
            if name in bound.signature.parameters:
                bound.arguments[name] = value
        return bound.args, bound.kwargs

    def _drop_prompt_rows(self, layer, args, output):
        if self._call is None or not self._call.inserted:
            return None
        return replace_hidden(output, output_hidden(output)[:, self._call.inserted :])


def source_from_labels(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` int64 count of each row's source tokens: its real tokens (``mask``) before its first real token
    whose label is not ``-100`` (all of them when none is). A ``ValueError`` naming ``labels`` for a row whose
    first real token is already a target: it has no source to generate the prompt from."""
    valid = mask != 0
    target = valid & (labels != IGNORE_INDEX)
    before = (target.to(torch.int64).cumsum(1) == 0) & valid  # real tokens before the first target
    lengths = before.sum(1)
    empty = (lengths == 0) & valid.any(1)
    if bool(empty.any()):
        row = int(empty.nonzero()[0, 0])
        column = int(valid[row].to(torch.int8).argmax())
        raise ValueError(
            f"labels: row {row}'s first real token (column {column}) is already a target (label "
            f"{int(labels[row, column])}, not -100), so LPT cannot tell its source: on a causal LM the prompt is "
            "computed from the source tokens only (it would show the targets to the positions that predict them). "
            "Mark the source tokens -100 in labels, or pass source_lengths (real source tokens per row)"
        )
    return lengths


class LatePromptTunedModel(LateHooks, TunedModel):
    """A frozen Hugging Face model with LPT's generator inside its stack. Only ``prompt_module`` trains."""

    def __init__(self, model: nn.Module, config: LPTConfig, backend: str | None = None):
        super().__init__()
        config = check_config(config, (LPTConfig,))
        embedding = model_embedding(model)
        self.stack: LayerStack = lpt_stack(model, attaching=True)
        self.config = config.resolved(len(self.stack.layers), self.stack.causal)
        self.prompt_module: LPT = self.config.build(embedding, backend=backend)  # checks every field first
        self.prompt_module.to(embedding.weight.device)
        model.requires_grad_(False)
        self.base_model = model
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False)) and self.stack.family == "t5"
        self._call: StackPass | None = None
        self._pending: _Pending | None = None
        self._source_columns: int | None = None  # while generating: the input's width (the source)
        self._handles = self._install_hooks(self.config.layer)
        self.train(model.training)  # the generator's dropout follows the model's mode

    @property
    def num_tokens(self) -> int:
        return self.prompt_module.num_tokens

    @property
    def positions(self) -> str:
        """The config's position convention, checked where it is read: the config is a plain dataclass that a
        user may edit after ``attach``."""
        return check_positions(self.config.positions, "config.positions")

    # ------------------------------------------------------------------------------------------------------------
    # Hooks
    # ------------------------------------------------------------------------------------------------------------

    def _enter(self, entry, args, kwargs):
        bound = bind(entry, args, kwargs)
        arguments = bound.arguments
        pending, self._pending = self._pending, None
        found = self._pass_inputs(arguments, self.config.layer, self.num_tokens)
        if found is None:
            return None  # the model itself refuses the call; nothing recorded, nothing to restore
        shape, _, past, mask = found
        tokens, embeds = arguments.get("input_ids"), arguments.get("inputs_embeds")
        if tokens is not None and resolve_check_ids(None):
            check_ids_in_range(tokens, self._embedding().num_embeddings)
        inputs = {"input_ids": tokens} if tokens is not None else {"inputs_embeds": embeds}
        if pending is not None:
            inputs["source_lengths"] = pending.source_lengths
        check_same_device(**inputs, attention_mask=mask, **{"the model's input embedding": self._embedding().weight})
        check_token_type_ids(arguments.get("token_type_ids"), shape)
        given = arguments.get("position_ids")
        check_position_ids(given, shape)
        positions = self._pass_positions(given, mask, past, self.positions)
        if given is None and self.stack.takes_position_ids and self.positions == "tokens":
            # "absolute": the model numbers its input itself, as before the option (RoBERTa skips pad ids)
            args, kwargs = with_argument(entry, args, kwargs, "position_ids", positions + self.stack.first_position)
        source = self._source_lengths(pending, mask, past)
        self._call = StackPass(mask, positions, torch.is_grad_enabled(), past, source)
        torch.set_grad_enabled(False)  # the embeddings and layers 1..k: nothing to train, nothing to record
        return args, kwargs

    def _source_lengths(self, pending: _Pending | None, mask: torch.Tensor, past: int) -> torch.Tensor | None:
        """Real source tokens per row for the pass that computes the prompt (None: every real token)."""
        pending = pending or _Pending()
        if past:
            if pending.source_lengths is not None:
                raise ValueError(SOURCE_WITH_CACHE)
            return None
        if pending.source_lengths is not None:
            return self._check_source_values(pending.source_lengths, mask)
        if pending.labels is not None:
            return source_from_labels(pending.labels.to(mask.device), mask)
        if self._source_columns is not None and mask.shape[1] > self._source_columns:
            return (mask[:, : self._source_columns] != 0).sum(1)  # generating without a cache: the input given
        return None

    def _insert(self, layer, args, output):
        call = self._call
        if call is None:  # the layer called on its own, outside a pass through the stack
            return None
        torch.set_grad_enabled(call.grad_enabled)
        hidden = output_hidden(output)
        num_tokens = self.num_tokens
        if call.past:  # the prompt rows are in the upper layers' cache
            self._continue_cached(call, call.mask.new_ones(call.mask.shape[0], num_tokens), num_tokens, hidden)
            return None
        index = read_index(self.config.read, call.mask, call.source_lengths)
        buffer, keep = self.prompt_module(
            hidden, attention_mask=call.mask, index=index, source_lengths=call.source_lengths
        )
        return self._insert_rows(call, output, buffer, keep, prompted_positions(call.positions, num_tokens))

    def unload(self) -> nn.Module:
        """Remove the hooks and return the base model as it was (still frozen)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return super().unload()

    # ------------------------------------------------------------------------------------------------------------
    # Calls
    # ------------------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _restoring(self):
        """However the call ends, the caller's grad mode is back and no pass is left half-recorded (the hooks
        restore it too; this also covers interrupts that skip them)."""
        grad_enabled = torch.is_grad_enabled()
        try:
            yield
        finally:
            torch.set_grad_enabled(grad_enabled)
            self._call = self._pending = self._source_columns = None

    def forward(self, *args, source_lengths: torch.Tensor | None = None, **kwargs):
        """The base model's forward, with LPT inside its stack. Outputs have the input's length.

        ``source_lengths (B,)`` (causal models): each row's count of source tokens from its first real token; the
        prompt is computed from them only. Without it, token-level ``labels`` tell the source (the tokens that carry
        ``-100`` before the row's first target); without either, the whole input is the source."""
        self._check_loaded()
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        shape = None
        if ids is not None:
            shape = tuple(check_ids(ids).shape)
        elif isinstance(embeds, torch.Tensor) and embeds.dim() == 3:
            shape = tuple(embeds.shape[:2])
        labels = kwargs.get("labels")
        token_labels = False
        if shape is not None:
            mask = kwargs.get("attention_mask")
            width = mask.shape[1] if isinstance(mask, torch.Tensor) and mask.dim() == 2 else shape[1]
            what = f"input_ids' {width} tokens" if width == shape[1] else f"attention_mask's {width} columns"
            check_length(self.base_model, width, what)
            token_labels = check_model_labels(labels, shape, self.base_model)
        self._check_source_lengths(source_lengths, None if shape is None else shape[0])
        pending = _Pending(source_lengths, labels if token_labels and self.stack.causal else None)
        with self._restoring():
            self._pending = pending
            return self.base_model(*args, **kwargs)

    @torch.no_grad()
    def generate(self, *args, **kwargs) -> torch.Tensor:
        """The base model's ``generate``. Decoder-only models: the input is the source; the prompt is computed from
        it at prefill and the KV cache holds it (``use_cache=False`` recomputes every step with the same source and
        gives the same tokens). Positions follow the config's ``positions`` (each row continues from its own length
        under ``"tokens"``), unless ``position_ids`` are given. T5: the prompt acts in the encoder, which runs once;
        the decoder caches."""
        self._check_loaded()
        if self.training:
            warnings.warn("generate() in training mode: LPT's dropout acts on the prompt; call .eval()", stacklevel=2)
        check_generate_kwargs(kwargs)
        for name in ("labels", "source_lengths"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"LatePromptTunedModel.generate does not take {name}: the input_ids given to generate are the "
                    "source the prompt is computed from"
                )
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None and not self.is_encoder_decoder:
            raise ValueError("LatePromptTunedModel.generate needs input_ids (LPT computes the prompt from them)")
        if ids is not None:
            check_generate_inputs(ids, kwargs.get("attention_mask"))
        check_generation_fits(self.base_model, ids.shape[0] if ids is not None else 1, kwargs)
        if self.is_encoder_decoder:
            with self._restoring():
                return self.base_model.generate(*args, **kwargs)
        check_generated_length(self.base_model, 0, ids.shape[1], kwargs)
        if kwargs.get("position_ids") is None:
            positions = input_positions(kwargs.get("attention_mask"), self.positions, ids.shape, ids.device)
            kwargs["position_ids"] = positions + self.stack.first_position  # generate numbers the next ones by +1
        with self._restoring():
            self._source_columns = ids.shape[1]
            return self.base_model.generate(*args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"method=lpt, layer={self.config.layer}, family={self.stack.family}, read={self.config.read!r}, "
            f"positions={self.config.positions!r}"
        )
