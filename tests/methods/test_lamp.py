"""The LAMP module: SVD init, parameter budget, forward contract, argument checks."""

import pytest
import torch
from torch import nn

import prompt_ops
from prompt_ops.ops import reference

BACKENDS = ["torch", "triton"]


def test_defaults_budget_and_svd_init():
    embedding = nn.Embedding(100, 768)
    module = prompt_ops.LAMP(embedding, init_token_ids=list(range(10, 60)))
    assert (module.num_tokens, module.rank, module.pool, module.num_prompt_rows) == (100, 8, 2, 50)
    assert module.u.shape == (100, 8) and module.q.shape == (8,) and module.v.shape == (8, 768)
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == 6_952  # vs 76,800 for 100-token PT
    initial = embedding.weight.detach()[torch.arange(10, 60).repeat(2)]
    left, singular, right = torch.linalg.svd(initial, full_matrices=False)
    best_rank8 = (left[:, :8] * singular[:8]) @ right[:8]  # the optimal rank-8 approximation (Eckart-Young)
    torch.testing.assert_close((module.u * module.q) @ module.v, best_rank8, rtol=1e-4, atol=1e-4)
    assert torch.all(module.q[:-1] >= module.q[1:])  # singular values, descending
    assert not embedding.weight.requires_grad


def test_full_rank_without_pooling_reproduces_the_initial_prompt():
    embedding = nn.Embedding(30, 12)
    module = prompt_ops.LAMP(embedding, num_tokens=6, rank=6, pool=1, init_token_ids=[1, 2, 3, 4, 5, 6])
    torch.testing.assert_close(module.prompt(), embedding.weight.detach()[1:7], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_reference_and_trains(backend):
    embedding = nn.Embedding(40, 24)
    module = prompt_ops.LAMP(embedding, num_tokens=12, rank=4, pool=3, backend=backend)
    ids, mask = torch.randint(0, 40, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    out, out_mask = module(ids, mask)
    ref_out, ref_mask = reference.lamp_embed(ids, embedding.weight, module.u, module.q, module.v, 3, mask)
    assert out.shape == (3, 4 + 9, 24)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    assert torch.equal(out_mask, ref_mask)
    torch.testing.assert_close(module.prompt(), out[0, :4], rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"pool": 3}, ValueError, r"pool = 3 must divide num_tokens = 100"),
        ({"pool": 0}, ValueError, "pool must be >= 1"),
        ({"rank": 101}, ValueError, r"rank must be <= min\(num_tokens, hidden size\) = 16"),
        ({"rank": 17}, ValueError, r"rank must be <= min"),
        ({"num_tokens": 0}, ValueError, "num_tokens must be >= 1"),
    ],
)
def test_module_arguments_are_checked(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        prompt_ops.LAMP(nn.Embedding(50, 16), **kwargs)
