"""Parameter groups for ``torch.optim``: each method's split of its trainable tensors, with the training recipe of
its official scripts as defaults (reference/methods.md).

DePT's abstract names two learning rates as part of the method: the short prompt and the low-rank pair "are then
optimised with two different learning rates". The official scripts (DePT and ADePT ``train.py``) build
``AdamW([{the prompt}, {the offset tensors, lr=lora_embedding_lr}], lr=learning_rate)``. Every method module
declares its split as :class:`Group` entries (``GROUPS``, reasoning in each module's docstring) and its defaults as
a :class:`Recipe` (``RECIPE``); :meth:`ParameterGroups.parameter_groups` turns them into the list of dicts any
``torch.optim`` optimizer takes::

    optimizer = torch.optim.AdamW(module.parameter_groups(lr=3e-1, offset_lr=5e-4))

Each dict holds ``params``, ``lr``, ``weight_decay`` and the group's ``name`` (optimizers keep extra keys). Only
parameters that require grad are listed (a tensor frozen by hand is left out; a group left empty is dropped), and a
trainable parameter that no group names is refused: the groups partition the trainable parameters exactly. Groups
marked ``decay=False`` (biases, as the Hugging Face Trainer and LPT's official script exempt them) get weight decay
0 whatever ``weight_decay`` is. Nothing here is saved with an adapter: rates are the optimizer's business.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import ClassVar

from torch import nn

RATES = ("lr", "offset_lr")
"""The rate arguments a group can take: the first rate (the prompt's, or LPT's generator's) and the second (the
offset tensors', DePT's ``lora_embedding_lr``)."""


@dataclasses.dataclass(frozen=True)
class Group:
    """One parameter group of a method: its ``name``, the module's ``parameters`` it holds (by attribute name),
    which rate argument it takes (``rate``, one of :data:`RATES`) and whether weight decay applies (``decay``)."""

    name: str
    parameters: tuple[str, ...]
    rate: str = "lr"
    decay: bool = True


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A method's training defaults from its official scripts (``source`` says which): the first rate ``lr``, the
    second ``offset_lr`` (None for a method whose groups all take ``lr``) and ``weight_decay``. Defaults only: every
    call of :meth:`ParameterGroups.parameter_groups` may override each."""

    lr: float
    offset_lr: float | None
    weight_decay: float
    source: str


def check_rate(name: str, value: object) -> float:
    """A learning rate or weight decay: a finite real number ``>= 0`` (not a bool), as a float; a ``TypeError`` or
    ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number >= 0, got {type(value).__name__}")
    try:
        rate = float(value)
    except OverflowError:  # an int or Fraction past every float
        rate = math.inf
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return rate


@dataclasses.dataclass(frozen=True)
class Resolved:
    """One optimizer group with its settings decided: its ``name``, the owner's ``parameters`` it holds (full
    names), its ``lr`` and ``weight_decay``."""

    name: str
    parameters: tuple[str, ...]
    lr: float
    weight_decay: float


def group_settings(group: Group, rates: dict[str, float], weight_decay: float) -> tuple[float, float]:
    """``(lr, weight_decay)`` of ``group`` given the checked ``rates`` (each of :data:`RATES`) and weight decay:
    its rate argument's value, and no weight decay for a group marked ``decay=False``."""
    return rates[group.rate], weight_decay if group.decay else 0.0


def build_groups(
    owner: nn.Module,
    groups: tuple[Group, ...],
    rates: dict[str, float],
    weight_decay: float,
    prefix: str = "",
) -> list[dict]:
    """The optimizer groups of ``owner``'s trainable parameters: ``groups`` name them under ``prefix`` (the path of
    the method's module inside ``owner``), ``rates`` maps each of :data:`RATES` to its value (already checked);
    :func:`partition` checks that they hold every trainable parameter."""
    resolved = [
        Resolved(group.name, tuple(prefix + name for name in group.parameters), *group_settings(group, rates,
                 weight_decay))
        for group in groups
    ]  # fmt: skip
    return partition(owner, resolved)


def partition(owner: nn.Module, groups: list[Resolved]) -> list[dict]:
    """The optimizer group dicts (``params``, ``lr``, ``weight_decay``, ``name``) of ``groups``, each with the
    parameters that require grad (a group left with none is dropped).

    Every parameter of ``owner`` that requires grad must be in a group: one that is not (a base-model tensor
    unfrozen by hand) is a ``ValueError`` naming it, as the groups would silently leave it untrained."""
    parameters = dict(owner.named_parameters())
    result, grouped = [], set()
    for group in groups:
        params = [parameters[name] for name in group.parameters if parameters[name].requires_grad]
        grouped.update(group.parameters)
        if params:
            result.append({"params": params, "lr": group.lr, "weight_decay": group.weight_decay, "name": group.name})
    stray = [name for name, param in parameters.items() if param.requires_grad and name not in grouped]
    if stray:
        raise ValueError(
            f"{type(owner).__name__} has trainable parameters outside the adapter ({', '.join(stray[:5])}"
            f"{', ...' if len(stray) > 5 else ''}): parameter_groups covers the adapter's tensors only; freeze them "
            "(requires_grad_(False)) or give them to the optimizer as a group of your own"
        )
    return result


PROMPT = Group("prompt", ("prompt",))
"""The dense prompt rows of prompt tuning, DePT, ADePT and EPT: the first rate, as every official script gives it."""


class ParameterGroups:
    """Mixin of the method modules: ``GROUPS`` (the split) and ``RECIPE`` (the defaults) class attributes, and
    :meth:`parameter_groups`."""

    GROUPS: ClassVar[tuple[Group, ...]]
    RECIPE: ClassVar[Recipe]

    def parameter_groups(
        self, lr: float | None = None, offset_lr: float | None = None, weight_decay: float | None = None
    ) -> list[dict]:
        """``torch.optim`` parameter groups of this module (see :mod:`prompt_ops.methods.groups`): ``lr`` for the
        prompt's groups (LPT: the generator's), ``offset_lr`` for the offset tensors' (a method without them
        ignores it, after checking it), ``weight_decay`` for every group but the biases'. None takes the method's
        :attr:`RECIPE` default."""
        return recipe_groups(self, self.GROUPS, self.RECIPE, lr, offset_lr, weight_decay)


def recipe_groups(
    owner: nn.Module,
    groups: tuple[Group, ...],
    recipe: Recipe,
    lr: float | None,
    offset_lr: float | None,
    weight_decay: float | None,
    prefix: str = "",
) -> list[dict]:
    """:func:`build_groups` with the rates of :func:`recipe_rates`."""
    return build_groups(owner, groups, *recipe_rates(recipe, lr, offset_lr, weight_decay), prefix)


def recipe_rates(
    recipe: Recipe, lr: float | None, offset_lr: float | None, weight_decay: float | None
) -> tuple[dict[str, float], float]:
    """``({"lr": ..., "offset_lr": ...}, weight_decay)``, checked (by name), None filled in from ``recipe``;
    ``offset_lr`` defaults to ``lr`` for a method whose recipe has no second rate (its groups never read it)."""
    lr = check_rate("lr", recipe.lr if lr is None else lr)
    if offset_lr is None:
        offset_lr = lr if recipe.offset_lr is None else recipe.offset_lr
    offset_lr = check_rate("offset_lr", offset_lr)
    weight_decay = check_rate("weight_decay", recipe.weight_decay if weight_decay is None else weight_decay)
    return {"lr": lr, "offset_lr": offset_lr}, weight_decay
