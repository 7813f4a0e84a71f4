"""LPT adapters in a mixed-adapter batch (:func:`prompt_ops.models.attach_many`): each LPT row gets exactly what its
adapter attached alone (:class:`~prompt_ops.models.late.LatePromptTunedModel`) gives it, the other rows theirs.

An LPT row has no prompt at the input: for the adapter bank it is a ``"__base__"`` row (every one of the ``m_max``
slots masked), so layers ``1..k`` see its plain input, as LPT alone runs them. After layer ``k`` every row of the
batch gets ``n_max`` (the longest LPT prompt) columns in front of its ``m_max + L`` (a batch has one length): an LPT
row's ``n_a`` generated prompt rows right-aligned in them, the rest masked; the other rows' inserted columns all
masked. Above ``k`` an LPT row's prompt is at positions ``0..n_a-1`` and its input's shift by ``n_a`` (as alone:
:func:`~prompt_ops.models.positions.prompted_positions`); the other rows keep theirs. A masked column is no attention
key, so each row's queries see the keys, at the positions, they see alone. The inserted columns are dropped after
the last layer (as alone), so outputs keep the mixed ``m_max + L`` columns. Under a KV cache (``generate``) the
layers above ``k`` hold the ``n_max`` inserted columns more, the lower ones not; each decode step rebuilds the upper
masks and positions per row (:class:`~prompt_ops.models.late.LateHooks`, shared with LPT alone).

**Limits.** The LPT adapters of one model share the insertion ``layer`` (one insertion point for the batch); an adapter
with another is refused naming it and both layers. Their generators are stacked zero-padded (``w_down (N, d, h_max)``,
``b_down (N, h_max)``, ``w_up (N, h_max, W_max)``, ``b_up (N, W_max)``, ``W`` being ``n*d`` for NPG and ``d`` for the
pooling generators), and run by one :func:`~prompt_ops.ops.mixed_lpt.mixed_lpt_prompt` call per generator mode present
in the batch, each row on its adapter's generator (one launch set per mode, whatever the number of distinct adapters;
the padding gets exactly zero gradient, and each adapter's gradients come from its own rows only, deterministically).
With dropout in training a row's mask differs from its adapter's alone. The source of a causal LPT row is what LPT alone
takes: the mixed forward's ``source_lengths`` (checked and refused as LPT alone checks and refuses it; a batch without
LPT rows refuses it), else token-level ``labels``, else the whole input (``generate``). A mixed batch with LPT rows runs
every row's prompt (the shared prompt pass is off: LPT's prompt is inside the stack). A model may hold LPT adapters
only: its adapter bank is then empty (``m_max = 0``, every row's plain tokens at the input).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from prompt_ops.methods.base import check_backend, check_sizes
from prompt_ops.models.adapters import check_adapter_tensors
from prompt_ops.models.bank import check_same_positions
from prompt_ops.models.configs import LPTConfig, check_config
from prompt_ops.models.late import (
    SOURCE_WITH_CACHE,
    LateHooks,
    StackPass,
    lpt_stack,
    output_hidden,
    read_index,
    source_from_labels,
)
from prompt_ops.models.stacks import bind
from prompt_ops.ops.mixed_lpt import mixed_lpt_prompt
from prompt_ops.ops.positions import check_positions, leading_pads

Tensor = torch.Tensor


def check_late_config(model: nn.Module, config: object, positions: str, argument: str = "config") -> LPTConfig:
    """A copy of the LPT ``config`` resolved for ``model``'s stack (``layer`` and ``read`` filled in), whose position
    convention is the bank's ``positions`` and whose fields all hold (checked on the meta device)."""
    config = check_config(config, (LPTConfig,))
    stack = lpt_stack(model)
    check_same_positions(config, positions, argument)
    try:
        config = config.resolved(len(stack.layers), stack.causal)
        with torch.device("meta"):
            config.build(nn.Embedding(1, model.get_input_embeddings().embedding_dim))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{argument}: {err}") from None
    return config.snapshot()


def check_insertion(configs: Mapping[str, LPTConfig], argument: str = "adapters") -> None:
    """The LPT ``configs`` (resolved, by adapter name) share one insertion ``layer``: a ``ValueError`` naming the
    first adapter whose layer differs from the first one's."""
    names = list(configs)
    for name in names[1:]:
        if configs[name].layer != configs[names[0]].layer:
            raise ValueError(
                f"{argument}: LPT adapter {name!r} has layer = {configs[name].layer}, but {names[0]!r} inserts its "
                f"prompt after layer {configs[names[0]].layer}: the LPT adapters of a mixed-adapter model share one "
                "insertion layer (a batch has one insertion point)"
            )


def _width(config: LPTConfig, model_dim: int) -> int:
    """The generator's up-projection width: ``n * d`` for NPG, ``d`` for the pooling generators."""
    return config.num_tokens * model_dim if config.mode == "naive" else model_dim


@dataclasses.dataclass
class _Rows:
    """The LPT rows of one mixed call: ``index (B,)`` each row's LPT adapter (-1: not an LPT row); ``source_lengths
    (B,)`` each LPT row's source tokens (None: every real token; 0 on the other rows); ``given``: the caller gave
    them (``source_lengths``, refused for a pass that continues a filled cache, as LPT alone refuses it), rather
    than the labels; ``source_columns``: while generating, the columns of the input given (a pass over more columns
    recomputes without a cache: the source stays the input); ``frozen``: no row's adapter trains below layer ``k``
    (the other adapters' prompts enter at the input, and their gradients flow through layers ``1..k``), so those
    layers run without grad as LPT alone runs them."""

    index: Tensor
    source_lengths: Tensor | None = None
    given: bool = False
    source_columns: int | None = None
    frozen: bool = False  # every row is an LPT or "__base__" row: nothing below layer k trains


def _read_rows(configs: list[LPTConfig], adapter: Tensor, call: StackPass) -> Tensor | None:
    """NPG's read row of every row of the pass, by its adapter's ``read`` (``adapter (B,)``, clamped to ``>= 0``):
    the first real token, or the last source token (:func:`~prompt_ops.models.late.read_index`); None when every
    adapter reads the first (the op's default)."""
    reads_last = [config.read == "last" for config in configs]
    if not any(reads_last):
        return None
    last = read_index("last", call.mask, call.source_lengths)
    return torch.where(torch.tensor(reads_last, device=adapter.device)[adapter], last, leading_pads(call.mask))


class LateAdapters(LateHooks, nn.Module):
    """``LateAdapters(model, backend=None, positions="tokens")``: the named LPT adapters of a mixed-adapter model,
    their generators stacked (the module docstring), and the hooks on ``model``'s layer stack that act while
    :meth:`active` rows are set. Built before any adapter is added; the hooks go on with the first adapter and come
    off with the last. Adding or deleting an adapter re-stacks the parameters (build the optimizer again)."""

    w_down: nn.Parameter | None
    b_down: nn.Parameter | None
    w_up: nn.Parameter | None
    b_up: nn.Parameter | None
    prompt_lengths: Tensor | None

    def __init__(self, model: nn.Module, backend: str | None = None, positions: str = "tokens"):
        super().__init__()
        self.stack = lpt_stack(model, attaching=True)
        self.backend = check_backend(backend)
        self.positions = check_positions(positions)
        weight = model.get_input_embeddings().weight
        self.model_dim, self._device = weight.shape[1], weight.device
        self._configs: dict[str, LPTConfig] = {}
        self._handles: list = []
        self._call: StackPass | None = None
        self._rows: _Rows | None = None
        for name in ("w_down", "b_down", "w_up", "b_up"):
            self.register_parameter(name, None)
        self.register_buffer("prompt_lengths", None)

    @property
    def names(self) -> list[str]:
        """The LPT adapters' names, in the order of their index in the stacked tensors."""
        return list(self._configs)

    @property
    def num_slots(self) -> int:
        """``n_max``: the columns inserted after layer ``k`` (the longest LPT prompt; 0 without adapters)."""
        return max((config.num_tokens for config in self._configs.values()), default=0)

    @property
    def layer(self) -> int | None:
        """The shared insertion layer (None without adapters)."""
        return next(iter(self._configs.values())).layer if self._configs else None

    def config(self, name: str) -> LPTConfig:
        """The (resolved) config of adapter ``name`` (a copy)."""
        return dataclasses.replace(self._configs[name])

    def adapter_state_dict(self, name: str) -> dict[str, Tensor]:
        """Adapter ``name``'s generator, unpadded, under :class:`~prompt_ops.methods.lpt.LPT`'s names (views of the
        stacked parameters): what an adapter file holds."""
        index, config = self.names.index(name), self._configs[name]
        hidden, width = config.hidden_size, _width(config, self.model_dim)
        return {
            "w_down": self.w_down[index, :, :hidden],
            "b_down": self.b_down[index, :hidden],
            "w_up": self.w_up[index, :hidden, :width],
            "b_up": self.b_up[index, :width],
        }

    def add(self, name: str, config: LPTConfig, state: Mapping[str, Tensor] | None = None, argument="config") -> None:
        """Add adapter ``name`` of the resolved ``config`` (:func:`check_late_config`; its layer must be the other
        adapters', :func:`check_insertion`), initialised as :class:`~prompt_ops.methods.lpt.LPT` initialises it or
        with ``state`` (its tensors under the module's names). Everything is checked before anything changes."""
        check_insertion({**self._configs, name: config}, argument)
        module = config.build(nn.Embedding(1, self.model_dim))
        expected = dict(module.named_parameters())
        if state is not None:
            check_adapter_tensors("state", expected, dict(state))
            expected = dict(state)
        adapters = {key: (self._configs[key], self._detached(key)) for key in self._configs}
        adapters[name] = (config, {key: tensor.detach() for key, tensor in expected.items()})
        self._restack(adapters)

    def delete(self, name: str) -> None:
        """Remove adapter ``name`` (the others keep their values); the hooks come off with the last one."""
        adapters = {key: (self._configs[key], self._detached(key)) for key in self._configs if key != name}
        self._restack(adapters)

    def _detached(self, name: str) -> dict[str, Tensor]:
        return {key: tensor.detach().clone() for key, tensor in self.adapter_state_dict(name).items()}

    def _restack(self, adapters: dict[str, tuple[LPTConfig, dict[str, Tensor]]]) -> None:
        """Stack ``adapters`` into new zero-padded parameters; hooks installed or removed to match."""
        count, model_dim = len(adapters), self.model_dim
        hidden = max((config.hidden_size for config, _ in adapters.values()), default=0)
        width = max((_width(config, model_dim) for config, _ in adapters.values()), default=0)
        check_sizes(
            w_down={"adapters": count, "model width": model_dim, "largest hidden_size": hidden},
            w_up={"adapters": count, "largest hidden_size": hidden, "widest up-projection": width},
        )
        tables = {
            "w_down": torch.zeros(count, model_dim, hidden),
            "b_down": torch.zeros(count, hidden),
            "w_up": torch.zeros(count, hidden, width),
            "b_up": torch.zeros(count, width),
        }
        for index, (_, tensors) in enumerate(adapters.values()):
            for key, tensor in tensors.items():
                tables[key][(index, *(slice(0, size) for size in tensor.shape))] = tensor
        for key, table in tables.items():
            setattr(self, key, nn.Parameter(table.to(self._device)) if count else None)
        lengths = [config.num_tokens for config, _ in adapters.values()]
        self.prompt_lengths = torch.tensor(lengths, dtype=torch.int64, device=self._device) if count else None
        layer = next(iter(adapters.values()))[0].layer if count else None
        if layer != self.layer or not count:
            for handle in self._handles:
                handle.remove()
            self._handles = self._install_hooks(layer) if count else []
        self._configs = {name: config for name, (config, _) in adapters.items()}

    # ------------------------------------------------------------------------------------------------------------
    # A mixed call
    # ------------------------------------------------------------------------------------------------------------

    def bank_names(self, names: object) -> object:
        """``names`` with each LPT adapter's name replaced by ``"__base__"`` (the bank's view of an LPT row);
        anything but a list or tuple as it is (the bank refuses it)."""
        if not isinstance(names, (list, tuple)):
            return names
        return [("__base__" if name in self._configs else name) if isinstance(name, str) else name for name in names]

    def rows(
        self,
        names: Sequence[str],
        device: torch.device,
        attention_mask: Tensor,
        labels: Tensor | None = None,
        source_lengths: object = None,
        source_columns: int | None = None,
    ) -> _Rows | None:
        """The LPT rows of a call whose rows are the adapters ``names`` (checked by the bank), or None when none
        is an LPT row. ``attention_mask (B, L)``: the caller's (ones when it gave none). Each LPT row's source as
        LPT alone takes it: ``source_lengths (B,)`` (causal models; checked here as LPT alone checks it, its values on
        the LPT rows only: the other rows' are not read), else ``labels (B, L)``, token-level labels of a causal LM
        (:func:`~prompt_ops.models.late.source_from_labels`); ``source_columns``: as :class:`_Rows` takes it."""
        known = {name: index for index, name in enumerate(self._configs)}
        index = torch.tensor([known.get(name, -1) for name in names], dtype=torch.int64, device=device)
        late = index >= 0
        if not bool(late.any()):
            return None
        self._check_source_lengths(source_lengths, index.shape[0])
        lengths = None
        if source_lengths is not None:
            lengths = self._check_source_values(source_lengths, attention_mask, late).to(device).masked_fill(~late, 0)
        elif labels is not None and self.stack.causal:
            rows = late.nonzero().squeeze(1)
            found = source_from_labels(labels[rows], attention_mask.to(labels.device)[rows])
            lengths = torch.zeros_like(index).index_copy(0, rows, found.to(device))
        frozen = all(name in self._configs or name == "__base__" for name in names)
        return _Rows(index, lengths, source_lengths is not None, source_columns, frozen)

    @contextlib.contextmanager
    def active(self, rows: _Rows | None) -> Iterator[None]:
        """The hooks act on the passes through the stack within this context (none when ``rows`` is None);
        however it ends, no pass is left half-recorded and the caller's grad mode is back."""
        grad_enabled = torch.is_grad_enabled()
        self._rows = rows
        try:
            yield
        finally:
            torch.set_grad_enabled(grad_enabled)
            self._rows = self._call = None

    def _per_row(self, value: Tensor | None, batch: int) -> Tensor | None:
        """A call's ``(B,)`` value for the ``batch`` rows of a pass: ``generate`` expands each row into consecutive
        copies (beams, return sequences)."""
        return None if value is None else value.repeat_interleave(batch // self._rows.index.shape[0])

    def _enter(self, entry, args, kwargs):
        rows = self._rows
        if rows is None:
            return None
        arguments = bind(entry, args, kwargs).arguments
        found = self._pass_inputs(arguments, self.layer, self.num_slots)
        if found is None:
            return None
        shape, _, past, mask = found
        positions = self._pass_positions(arguments.get("position_ids"), mask, past, self.positions)
        if past and rows.given:
            raise ValueError(SOURCE_WITH_CACHE)
        source = None
        if not past and rows.source_lengths is not None:
            source = self._per_row(rows.source_lengths, shape[0])
        elif not past and rows.source_columns is not None and mask.shape[1] > rows.source_columns:
            source = (mask[:, : rows.source_columns] != 0).sum(1)  # generating without a cache: the input given
        self._call = StackPass(mask, positions, torch.is_grad_enabled(), past, source)
        if rows.frozen:
            torch.set_grad_enabled(False)  # the embeddings and layers 1..k: nothing to train, nothing to record
        return None

    def _insert(self, layer, args, output):
        call = self._call
        if call is None:
            return None
        torch.set_grad_enabled(call.grad_enabled)
        hidden = output_hidden(output)
        batch, slots = hidden.shape[0], self.num_slots
        index = self._per_row(self._rows.index, batch)
        lengths = torch.where(index >= 0, self.prompt_lengths[index.clamp(min=0)], 0)  # (B,) n_a, 0 for other rows
        column = torch.arange(slots, device=hidden.device)[None, :] - (slots - lengths[:, None])  # prompt row
        inside = column >= 0  # (B, n_max): the row's prompt columns, right-aligned
        keep = inside.to(call.mask.dtype)
        if call.past:  # the prompt rows are in the upper layers' cache
            self._continue_cached(call, keep, lengths[:, None], hidden)
            return None
        buffer = torch.cat([self._prompts(hidden, call, index), hidden], dim=1)
        positions = torch.cat([column.clamp(min=0), call.positions.expand(batch, -1) + lengths[:, None]], dim=1)
        return self._insert_rows(call, output, buffer, torch.cat([keep, call.mask], dim=1), positions)

    def _prompts(self, hidden: Tensor, call: StackPass, index: Tensor) -> Tensor:
        """``(B, n_max, d)``: each LPT row's generated prompt right-aligned, zeros elsewhere. One
        :func:`~prompt_ops.ops.mixed_lpt.mixed_lpt_prompt` call per generator mode among the batch's LPT rows, on the
        stacked generators (each row on its adapter's; the other modes' rows at ``-1``), whatever the number of
        distinct adapters."""
        configs = list(self._configs.values())
        adapter = index.clamp(min=0)
        tokens, dropout = [config.num_tokens for config in configs], [config.dropout for config in configs]
        prompts = []
        for mode in sorted({configs[a].mode for a in set(index.tolist()) - {-1}}):
            of_mode = torch.tensor([config.mode == mode for config in configs], device=index.device)[adapter]
            prompt = mixed_lpt_prompt(
                hidden, self.w_down, self.b_down, self.w_up, self.b_up, torch.where(of_mode, index, -1), tokens,
                index=_read_rows(configs, adapter, call) if mode == "naive" else None, attention_mask=call.mask,
                source_lengths=call.source_lengths, mode=mode, dropout_p=dropout, training=self.training,
                backend=self.backend,
            )  # fmt: skip
            prompts.append(prompt.to(hidden.dtype))
        return sum(prompts[1:], prompts[0])  # each row is non-zero in one mode's prompt only

    def extra_repr(self) -> str:
        adapters = ", ".join(f"{name}: n={config.num_tokens}" for name, config in self._configs.items())
        return f"adapters=[{adapters}], layer={self.layer}, family={self.stack.family}, backend={self.backend!r}"


__all__ = ["LateAdapters", "check_insertion", "check_late_config"]
