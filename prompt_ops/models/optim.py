"""The methods' two learning rates in a Hugging Face ``Trainer``, in one line::

    trainer = transformers.Trainer(
        model=tuned, args=args, train_dataset=data, optimizers=trainer_optimizers(tuned, args, offset_lr=5e-4)
    )

:func:`trainer_optimizers` builds ``torch.optim.AdamW`` (the algorithm of the official DePT, ADePT and LPT scripts'
``transformers.AdamW``; DePT's and ADePT's ran it at that class's default ``eps`` 1e-6, LPT's at 1e-8, the
``adam_epsilon`` default) over ``tuned.parameter_groups(...)`` (:mod:`prompt_ops.methods.groups`):
``args.learning_rate`` is the first rate (the prompt's, LPT's generator's; the official scripts' ``--learning_rate``;
``TrainingArguments``' default 5e-5 is no recipe's, so set it), ``offset_lr`` the second (DePT's
``--lora_embedding_lr``; None takes the config's recipe), ``args.weight_decay`` the weight decay (biases spared),
``args.adam_beta1``, ``adam_beta2`` and ``adam_epsilon`` Adam's constants (``args.optim`` is not read: the
optimizer is AdamW whatever it names). The scheduler slot is None, so the
Trainer builds ``args.lr_scheduler_type`` with ``args``' warmup once it knows the number of steps; it scales every
group's rate by the same factor, so the two rates keep their ratio. Only the adapter's parameters are in the
optimizer, so only the adapter moves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prompt_ops.methods.groups import Resolved, check_rate, group_settings, partition, recipe_rates
from prompt_ops.models.bank import TABLES
from prompt_ops.models.configs import LPTConfig, MethodConfig


def _parameter_names(config: MethodConfig) -> dict[str, str]:
    """Each tensor of ``config``'s method -> the mixed model's parameter holding it stacked."""
    if isinstance(config, LPTConfig):
        return {key: f"late.{key}" for group in type(config).module_class.GROUPS for key in group.parameters}
    return {key: f"bank.{table}" for key, table in TABLES[type(config)].items()}


def mixed_groups(
    owner: nn.Module,
    configs: Sequence[MethodConfig],
    lr: float | None,
    offset_lr: float | None,
    weight_decay: float | None,
) -> list[dict]:
    """The ``torch.optim`` groups of a mixed-adapter model (``owner``, holding the adapters of ``configs`` in its
    stacked tables: ``bank.<table>`` per :data:`~prompt_ops.models.bank.TABLES`, LPT's generators as
    ``late.<tensor>``). Each method's split and recipe (:mod:`prompt_ops.methods.groups`) decide the rate and weight
    decay of each table it uses, the rates given here overriding every method's; tables with the same group and
    settings share one dict, named by the group and its methods (e.g. ``"offset (dept, ept)"``). A table two
    methods share (the prompts; DePT's and EPT's pair) must get the same settings from both: their recipes agree,
    and an override applies to both, so only a future recipe could clash (a ``ValueError`` naming the table)."""
    settings: dict[str, tuple[str, float, float]] = {}  # parameter -> (group, lr, weight decay)
    methods: dict[tuple[str, float, float], list[str]] = {}  # settings -> the methods with a group of them
    for config in configs:
        module_class = type(config).module_class
        rates, decay = recipe_rates(module_class.RECIPE, lr, offset_lr, weight_decay)
        names = _parameter_names(config)
        for group in module_class.GROUPS:
            setting = (group.name, *group_settings(group, rates, decay))
            users = methods.setdefault(setting, [])
            users.extend([] if config.method in users else [config.method])
            for key in group.parameters:
                if settings.setdefault(names[key], setting) != setting:
                    raise ValueError(
                        f"{names[key]} holds tensors of methods whose recipes give it different settings "
                        f"({settings[names[key]]} and {setting}, {config.method}'s); pass lr, offset_lr and "
                        "weight_decay explicitly"
                    )
    resolved = [
        Resolved(f"{setting[0]} ({', '.join(users)})", tuple(name for name, kept in settings.items() if kept ==
                 setting), *setting[1:])
        for setting, users in methods.items()
    ]  # fmt: skip
    return partition(owner, resolved)


def _check_adam(name: str, value: object, below_one: bool) -> float:
    """One of Adam's constants from ``TrainingArguments``: a finite number ``>= 0`` (:func:`check_rate`), and
    ``< 1`` for a beta; a ``ValueError`` naming it otherwise (torch's own says "index 0")."""
    value = check_rate(name, value)
    if below_one and value >= 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def trainer_optimizers(tuned, args, offset_lr: float | None = None) -> tuple[torch.optim.AdamW, None]:
    """``(optimizer, None)`` for ``transformers.Trainer(optimizers=...)``: AdamW over the groups of ``tuned`` (a
    model returned by :func:`prompt_ops.models.attach`, :func:`~prompt_ops.models.load_adapter` or
    :func:`~prompt_ops.models.attach_many`: any module with ``parameter_groups``) with
    ``args.learning_rate`` for the first rate and ``offset_lr`` for the second (module docstring). Bad arguments
    are a ``TypeError``/``ValueError`` naming them, before anything is built."""
    from transformers import TrainingArguments

    if not isinstance(tuned, nn.Module) or not callable(getattr(tuned, "parameter_groups", None)):
        raise TypeError(
            "tuned must be a model returned by prompt_ops.models.attach, load_adapter or attach_many (a module with "
            f"parameter_groups), got {type(tuned).__name__}"
        )
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"args must be a transformers.TrainingArguments, got {type(args).__name__}")
    lr = check_rate("args.learning_rate", args.learning_rate)
    weight_decay = check_rate("args.weight_decay", args.weight_decay)
    groups = tuned.parameter_groups(lr=lr, offset_lr=offset_lr, weight_decay=weight_decay)
    betas = tuple(_check_adam("args." + name, getattr(args, name), below_one=True) for name in ("adam_beta1",
                  "adam_beta2"))  # fmt: skip
    eps = _check_adam("args.adam_epsilon", args.adam_epsilon, below_one=False)
    optimizer = torch.optim.AdamW(groups, betas=betas, eps=eps)
    return optimizer, None
