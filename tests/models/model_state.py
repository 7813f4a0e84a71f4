"""What a refused call must leave exactly as it was: a model's parameters (values and requires_grad), its input
embedding module, the hooks of every submodule, and torch's global grad mode."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


@dataclasses.dataclass
class ModelState:
    requires_grad: dict[str, bool]
    values: dict[str, torch.Tensor]
    embedding: nn.Module | None
    hooks: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
    grad_enabled: bool

    @classmethod
    def of(cls, model: nn.Module) -> ModelState:
        get_embedding = getattr(model, "get_input_embeddings", None)
        return cls(
            requires_grad={name: p.requires_grad for name, p in model.named_parameters()},
            values={name: value.detach().clone() for name, value in model.state_dict().items()},
            embedding=get_embedding() if get_embedding is not None else None,
            hooks={
                name: (tuple(module._forward_hooks), tuple(module._forward_pre_hooks))
                for name, module in model.named_modules()
            },
            grad_enabled=torch.is_grad_enabled(),
        )

    def assert_unchanged(self, model: nn.Module, context: str = "") -> None:
        """``model`` and the grad mode are exactly as when this state was taken."""
        now = ModelState.of(model)
        where = f" after {context}" if context else ""
        assert now.grad_enabled == self.grad_enabled, f"torch's grad mode changed{where}"
        assert now.requires_grad == self.requires_grad, f"requires_grad flags changed{where}"
        assert now.embedding is self.embedding, f"the input embedding module was replaced{where}"
        assert now.hooks == self.hooks, f"forward hooks changed{where}"
        assert now.values.keys() == self.values.keys(), f"the state_dict's keys changed{where}"
        for name, value in self.values.items():
            assert torch.equal(now.values[name], value), f"{name} changed{where}"
