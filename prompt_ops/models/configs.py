"""One config per method, PEFT-style: plain dataclasses whose fields are the module's keyword arguments.

Common field names across methods: ``num_tokens``, ``rank``, ``max_length``, ``lora_alpha``, ``dropout``, ``pool``.
Defaults are the modules' (the papers' official settings, see each module's docstring). Each config also records
its method's training recipe (:attr:`MethodConfig.recipe`: the official scripts' learning rates and weight decay),
the defaults of ``tuned.parameter_groups()``; it is not a field, so an adapter never saves it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch import nn

from prompt_ops.methods.adept import ADePT
from prompt_ops.methods.base import PromptModule, token_ids
from prompt_ops.methods.dept import DePT
from prompt_ops.methods.ept import EPT
from prompt_ops.methods.groups import Recipe
from prompt_ops.methods.lamp import LAMP
from prompt_ops.methods.lpt import LPT
from prompt_ops.methods.prompt_tuning import PromptTuning
from prompt_ops.ops.positions import check_positions


@dataclasses.dataclass
class MethodConfig:
    """Base: ``build(embedding)`` makes the method's module; ``method`` names it in saved adapters."""

    method: ClassVar[str]
    module_class: ClassVar[type[PromptModule]]
    positions: str = "tokens"  # "tokens" or "absolute": see prompt_ops.ops.positions

    @property
    def recipe(self) -> Recipe:
        """The method's training defaults from its official scripts (``lr``, ``offset_lr``, ``weight_decay``, and
        the ``source``; see the module's docstring): what ``parameter_groups()`` uses for a rate it is not given.
        Read-only here and never saved with an adapter: pass other rates to ``parameter_groups`` instead."""
        return self.module_class.RECIPE

    def build(self, embedding: nn.Embedding, backend: str | None = None) -> PromptModule:
        """The method's module over ``embedding``; the module checks every field (by its name) first."""
        return self.module_class(embedding, backend=backend, **dataclasses.asdict(self))

    def snapshot(self) -> MethodConfig:
        """A copy that later edits of this object do not reach, with ``init_token_ids`` (where the method has it)
        as a list of ints, as it is saved."""
        if not hasattr(self, "init_token_ids"):
            return dataclasses.replace(self)
        return dataclasses.replace(self, init_token_ids=token_ids(self.init_token_ids))

    def to_dict(self) -> dict:
        """The JSON-ready fields and the method's name (:func:`config_from_dict` reads it back)."""
        return {"method": self.method, **dataclasses.asdict(self.snapshot())}


@dataclasses.dataclass
class PromptTuningConfig(MethodConfig):
    method: ClassVar[str] = "prompt_tuning"
    module_class: ClassVar[type[PromptModule]] = PromptTuning
    num_tokens: int = 100
    init_token_ids: list[int] | None = None


@dataclasses.dataclass
class DePTConfig(MethodConfig):
    method: ClassVar[str] = "dept"
    module_class: ClassVar[type[PromptModule]] = DePT
    num_tokens: int = 60
    rank: int = 30
    max_length: int = 256
    lora_alpha: float = 8.0
    init_token_ids: list[int] | None = None


@dataclasses.dataclass
class ADePTConfig(MethodConfig):
    method: ClassVar[str] = "adept"
    module_class: ClassVar[type[PromptModule]] = ADePT
    num_tokens: int = 60
    rank: int = 19
    dropout: float = 0.1
    init_token_ids: list[int] | None = None


@dataclasses.dataclass
class LAMPConfig(MethodConfig):
    method: ClassVar[str] = "lamp"
    module_class: ClassVar[type[PromptModule]] = LAMP
    num_tokens: int = 100
    rank: int = 8
    pool: int = 2
    init_token_ids: list[int] | None = None


@dataclasses.dataclass
class EPTConfig(MethodConfig):
    method: ClassVar[str] = "ept"
    module_class: ClassVar[type[PromptModule]] = EPT
    num_tokens: int = 60
    rank: int = 30
    max_length: int = 256
    num_subspaces: int = 4
    subspace_rank: int = 8
    lora_alpha: float = 8.0
    init_token_ids: list[int] | None = None


@dataclasses.dataclass
class LPTConfig(MethodConfig):
    """Late Prompt Tuning: the generator goes after layer ``layer`` (1-indexed; None: half the layers, as the
    official scripts do). ``hidden_size`` is the generator's bottleneck ``h``; ``read`` picks NPG's input row
    (``"first"`` token or ``"last"`` non-padding token; None: first for bidirectional models, last for causal).
    ``mode`` is the official ``generator_type``: ``"naive"`` (NPG, the official default: one row through a
    bottleneck to ``n * d``), ``"pool"`` (APPG: the projected rows average-pooled into ``n`` windows) or ``"max"``
    (MPPG: max-pooled)."""

    method: ClassVar[str] = "lpt"
    module_class: ClassVar[type[nn.Module]] = LPT
    layer: int | None = None
    num_tokens: int = 5
    hidden_size: int = 128
    mode: str = "naive"
    dropout: float = 0.1
    read: str | None = None

    def build(self, embedding: nn.Embedding, backend: str | None = None) -> LPT:
        generator = {name: getattr(self, name) for name in ("num_tokens", "hidden_size", "mode", "dropout")}
        return LPT(embedding.embedding_dim, backend=backend, **generator)

    def resolved(self, num_layers: int, causal: bool) -> LPTConfig:
        """A copy with ``layer`` and ``read`` checked and filled in for a stack of ``num_layers`` layers, and
        ``positions`` checked."""
        if num_layers < 2:
            raise ValueError(
                f"LPT needs a model with at least 2 layers (it inserts the prompt between layer k and k+1, "
                f"1 <= k < N), the model has {num_layers}"
            )
        layer = self.layer if self.layer is not None else num_layers // 2
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= num_layers - 1:
            raise ValueError(
                f"layer must be an int in [1, {num_layers - 1}] for a model with {num_layers} layers, got {layer!r}"
            )
        read = self.read if self.read is not None else ("last" if causal else "first")
        if read not in ("first", "last"):
            raise ValueError(f"read must be 'first', 'last' or None, got {read!r}")
        check_positions(self.positions)  # the other configs' modules check it; LPT's module takes none
        return dataclasses.replace(self, layer=layer, read=read)


CONFIGS: dict[str, type[MethodConfig]] = {
    cls.method: cls for cls in (PromptTuningConfig, DePTConfig, ADePTConfig, LAMPConfig, EPTConfig, LPTConfig)
}


def check_config(config: object, allowed: tuple[type[MethodConfig], ...] = tuple(CONFIGS.values())) -> MethodConfig:
    """``config`` must be an instance of one of ``allowed``; a ``TypeError`` naming ``config`` otherwise."""
    if isinstance(config, allowed):
        return config
    names = [cls.__name__ for cls in allowed]
    names = " or ".join(names) if len(names) <= 2 else f"{', '.join(names[:-1])} or {names[-1]}"
    got = f"the class {config.__name__} (pass an instance)" if isinstance(config, type) else type(config).__name__
    raise TypeError(f"config must be a prompt_ops.models config ({names}), got {got}")


def config_from_dict(data: dict, source: str) -> MethodConfig:
    """Rebuild a config saved by :meth:`MethodConfig.to_dict`; ``source`` names the file in errors."""
    method = data.get("method")
    if method not in CONFIGS:
        raise ValueError(f"{source}: unknown method {method!r}; expected one of {sorted(CONFIGS)}")
    cls = CONFIGS[method]
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in data.items() if k != "method"}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{source}: fields {unknown} are not {cls.__name__} fields {sorted(fields)}")
    return cls(**values)
