"""Every method config's defaults are the official settings (reference/methods.md: DePT §1.4, ADePT §2, LPT §5.3)
or, for LAMP and EPT, the values their module docstrings define; and a default config builds the module that the
module's own defaults build."""

import dataclasses

import pytest
import torch
from torch import nn

from prompt_ops.models import ADePTConfig, DePTConfig, EPTConfig, LAMPConfig, LPTConfig, PromptTuningConfig

DOCUMENTED = {
    PromptTuningConfig: {"num_tokens": 100, "init_token_ids": None},
    DePTConfig: {"num_tokens": 60, "rank": 30, "max_length": 256, "lora_alpha": 8.0, "init_token_ids": None},
    ADePTConfig: {"num_tokens": 60, "rank": 19, "dropout": 0.1, "init_token_ids": None},
    LAMPConfig: {"num_tokens": 100, "rank": 8, "pool": 2, "init_token_ids": None},
    EPTConfig: {
        "num_tokens": 60,
        "rank": 30,
        "max_length": 256,
        "num_subspaces": 4,
        "subspace_rank": 8,
        "lora_alpha": 8.0,
        "init_token_ids": None,
    },  # fmt: skip
    LPTConfig: {"layer": None, "num_tokens": 5, "hidden_size": 128, "mode": "naive", "dropout": 0.1, "read": None},
}


@pytest.mark.parametrize("config_class", list(DOCUMENTED), ids=lambda c: c.__name__)
def test_defaults_are_the_documented_ones(config_class):
    defaults = {field.name: field.default for field in dataclasses.fields(config_class)}
    assert defaults == {"positions": "tokens", **DOCUMENTED[config_class]}  # positions: every config, batch-invariant


@pytest.mark.parametrize("config_class", list(DOCUMENTED), ids=lambda c: c.__name__)
def test_a_default_config_builds_the_default_module(config_class):
    embedding = nn.Embedding(120, 32)
    built = config_class().build(embedding)
    if config_class is LPTConfig:
        plain = config_class.module_class(embedding.embedding_dim)
    else:
        plain = config_class.module_class(nn.Embedding(120, 32))
    shapes = {name: tuple(p.shape) for name, p in plain.named_parameters()}
    assert {name: tuple(p.shape) for name, p in built.named_parameters()} == shapes
    for attribute in (
        "positions",
        "num_tokens",
        "rank",
        "max_length",
        "scale",
        "dropout",
        "pool",
        "hidden_size",
        "mode",
    ):
        if hasattr(plain, attribute):
            assert getattr(built, attribute) == getattr(plain, attribute), attribute
    assert all(p.dtype == torch.float32 for p in built.parameters())
