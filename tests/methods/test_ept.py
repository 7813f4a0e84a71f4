"""The EPT module: init that starts as plain prompt tuning, parameter count, forward contract, argument checks."""

import math

import pytest
import torch
from torch import nn

import prompt_ops
from prompt_ops.ops import reference

BACKENDS = ["torch", "triton"]


def test_defaults_and_init_start_as_plain_prompt_tuning():
    embedding = nn.Embedding(100, 768)
    module = prompt_ops.EPT(embedding)
    assert (module.num_tokens, module.rank, module.max_length, module.num_subspaces, module.subspace_rank) == (
        60, 30, 256, 4, 8,
    )  # fmt: skip
    assert module.scale == pytest.approx(8.0 / math.sqrt(30))
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == 129_028
    torch.testing.assert_close(module.full_prompt(), module.prompt.detach(), rtol=0, atol=0)
    ids = torch.randint(0, 100, (2, 10))
    out, _ = module(ids)
    plain, _ = prompt_ops.prompt_embed(ids, embedding.weight, module.prompt)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    assert not embedding.weight.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_reference_and_trains(backend):
    embedding = nn.Embedding(40, 24)
    module = prompt_ops.EPT(embedding, num_tokens=4, rank=5, max_length=12, num_subspaces=3, subspace_rank=2,
                            backend=backend)  # fmt: skip
    with torch.no_grad():
        for p in (module.lora_b, module.w_up, module.w_gate, module.b_gate):
            p.normal_(0, 0.3)
    ids, mask = torch.randint(0, 40, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    out, out_mask = module(ids, mask)
    params = (module.prompt, module.lora_a, module.lora_b, module.w_down, module.w_up, module.w_gate, module.b_gate)
    ref_out, ref_mask = reference.ept_embed(ids, embedding.weight, *params, module.scale, mask)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    assert torch.equal(out_mask, ref_mask)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"num_subspaces": 0}, ValueError, "num_subspaces must be >= 1"),
        ({"subspace_rank": 1.5}, TypeError, "subspace_rank must be an int"),
        ({"lora_alpha": -1}, ValueError, "lora_alpha must be a positive number"),
        ({"max_length": 0}, ValueError, "max_length must be >= 1"),
    ],
)
def test_module_arguments_are_checked(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        prompt_ops.EPT(nn.Embedding(10, 8), **kwargs)
