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

import torch

from prompt_ops.methods.groups import check_rate


def trainer_optimizers(tuned, args, offset_lr: float | None = None) -> tuple[torch.optim.AdamW, None]:
    """``(optimizer, None)`` for ``transformers.Trainer(optimizers=...)``: AdamW over the groups of ``tuned`` (a
    model returned by :func:`prompt_ops.models.attach` or :func:`~prompt_ops.models.load_adapter`) with
    ``args.learning_rate`` for the first rate and ``offset_lr`` for the second (module docstring). Bad arguments
    are a ``TypeError``/``ValueError`` naming them, before anything is built."""
    from transformers import TrainingArguments

    from prompt_ops.models.tuned import TunedModel

    if not isinstance(tuned, TunedModel):
        raise TypeError(
            f"tuned must be a model returned by prompt_ops.models.attach or load_adapter, got {type(tuned).__name__}"
        )
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"args must be a transformers.TrainingArguments, got {type(args).__name__}")
    lr = check_rate("args.learning_rate", args.learning_rate)
    weight_decay = check_rate("args.weight_decay", args.weight_decay)
    groups = tuned.parameter_groups(lr=lr, offset_lr=offset_lr, weight_decay=weight_decay)
    optimizer = torch.optim.AdamW(groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    return optimizer, None
