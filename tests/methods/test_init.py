"""Every method's initialisation against its documented definition (DESIGN.md §7, reference/methods.md, the module
docstrings): shapes, fp32 masters, the distribution and bound of each random tensor, exact zeros where defined, and
the starting output the definition implies. Distribution checks use enough samples that a wrong bound, a wrong
fan-in, a uniform for a normal (or the reverse) or a wrong scale fails by many standard errors."""

import math

import pytest
import torch
from torch import nn

import prompt_ops
from prompt_ops.ops import reference


def assert_uniform(tensor: torch.Tensor, bound: float) -> None:
    """``tensor`` looks like U(-bound, bound): inside the bound, reaching it, mean 0 and std ``bound / sqrt(3)``."""
    values = tensor.detach().flatten().double()
    n = values.numel()
    assert values.abs().max() <= bound, f"values beyond the bound {bound}"
    assert values.abs().max() >= bound * (1 - 12 / n), f"max |x| = {values.abs().max():.5f}, bound {bound:.5f}"
    std = bound / math.sqrt(3)
    assert abs(values.mean()) < 5 * std / math.sqrt(n)
    assert abs(values.std() / std - 1) < 5 * 0.9 / math.sqrt(n)  # the std of a sample std of a uniform is ~0.45/sqrt(n)


def assert_normal(tensor: torch.Tensor, std: float) -> None:
    """``tensor`` looks like N(0, std^2): mean 0, that std, and tails past 3 std that a uniform never has."""
    values = tensor.detach().flatten().double()
    n = values.numel()
    assert abs(values.mean()) < 5 * std / math.sqrt(n)
    assert abs(values.std() / std - 1) < 5 / math.sqrt(2 * n)
    beyond = (values.abs() > 2 * std).double().mean()  # 4.55% for a normal, 0 for a uniform of that std
    assert abs(beyond - 0.0455) < 5 * math.sqrt(0.0455 * 0.9545 / n)


def assert_zeros(tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert tuple(tensor.shape) == shape and tensor.dtype == torch.float32
    assert torch.equal(tensor.detach(), torch.zeros(shape))


def assert_fp32_trainable(module: nn.Module, embedding: nn.Embedding) -> None:
    for name, param in module.named_parameters():
        if name.startswith("embedding."):
            assert not param.requires_grad, f"{name}: the word embedding is frozen"
        else:
            assert param.requires_grad and param.dtype == torch.float32, f"{name}: a trainable fp32 master"
    assert not embedding.weight.requires_grad


SOFT_PROMPT_METHODS = {
    "PromptTuning": {},
    "DePT": {"rank": 6, "max_length": 32},
    "ADePT": {"rank": 6},
    "EPT": {"rank": 6, "max_length": 32, "num_subspaces": 3, "subspace_rank": 4},
}


@pytest.mark.parametrize("cls", sorted(SOFT_PROMPT_METHODS))
def test_random_prompt_init_is_standard_normal(cls):
    """PEFT's RANDOM init (``nn.Embedding``'s default): N(0, 1), whatever the table's dtype and scale."""
    embedding = nn.Embedding(50, 256).to(torch.bfloat16)
    with torch.no_grad():
        embedding.weight.mul_(0.02)  # a real model's table scale must not leak into the random init
    module = getattr(prompt_ops, cls)(embedding, num_tokens=40, **SOFT_PROMPT_METHODS[cls])
    assert module.prompt.shape == (40, 256)
    assert_normal(module.prompt, 1.0)
    assert_fp32_trainable(module, embedding)


@pytest.mark.parametrize("cls", sorted(SOFT_PROMPT_METHODS))
def test_text_prompt_init_copies_vocabulary_rows_in_fp32(cls):
    embedding = nn.Embedding(50, 12).to(torch.bfloat16)
    module = getattr(prompt_ops, cls)(embedding, num_tokens=5, init_token_ids=[7, 3], **SOFT_PROMPT_METHODS[cls])
    expected = embedding.weight.detach()[[7, 3, 7, 3, 7]].float()
    assert module.prompt.dtype == torch.float32 and torch.equal(module.prompt.detach(), expected)


def test_prompt_tuning_starts_as_its_prompt_and_the_table():
    embedding = nn.Embedding(50, 16)
    module = prompt_ops.PromptTuning(embedding, num_tokens=4)
    ids = torch.randint(0, 50, (3, 7))
    out, mask = module(ids)
    expected, expected_mask = reference.prompt_embed(ids, embedding.weight, module.prompt.detach())
    assert torch.equal(out, expected) and torch.equal(mask, expected_mask)


@pytest.mark.parametrize("cls", ["DePT", "EPT"])
def test_low_rank_pair_is_kaiming_uniform_and_zeros(cls):
    """DePT's ``A (L_max, r)``: kaiming_uniform(a=sqrt(5)), fan_in = r, so U(-1/sqrt(r), 1/sqrt(r)); ``B`` zeros."""
    embedding = nn.Embedding(20, 24)
    module = getattr(prompt_ops, cls)(embedding, num_tokens=3, rank=5, max_length=2000)
    assert module.lora_a.shape == (2000, 5)
    assert_uniform(module.lora_a, 1 / math.sqrt(5))
    assert_zeros(module.lora_b, (5, 24))
    assert module.scale == pytest.approx(8.0 / math.sqrt(5))
    assert_fp32_trainable(module, embedding)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dept_starts_as_prompt_tuning(backend):
    embedding = nn.Embedding(30, 16)
    module = prompt_ops.DePT(embedding, num_tokens=3, rank=4, max_length=12, backend=backend)
    ids = torch.randint(0, 30, (2, 12))
    out, _ = module(ids)
    expected, _ = reference.prompt_embed(ids, embedding.weight, module.prompt.detach())
    assert torch.equal(out, expected)


def test_adept_ffn_init():
    """``w_down (d, r)`` kaiming_uniform(a=sqrt(5)) with fan_in = r; ``b_down``, ``w_up``, ``b_up`` zeros."""
    embedding = nn.Embedding(20, 1000)
    module = prompt_ops.ADePT(embedding, num_tokens=2, rank=7)
    assert module.w_down.shape == (1000, 7)
    assert_uniform(module.w_down, 1 / math.sqrt(7))
    assert_zeros(module.b_down, (7,))
    assert_zeros(module.w_up, (7, 1000))
    assert_zeros(module.b_up, (1000,))
    assert_fp32_trainable(module, embedding)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_adept_starts_as_prompt_tuning_whatever_w_down_holds(backend):
    embedding = nn.Embedding(30, 16)
    module = prompt_ops.ADePT(embedding, num_tokens=3, rank=4, backend=backend).eval()
    with torch.no_grad():
        module.w_down.normal_(0, 5.0)
    ids = torch.randint(0, 30, (2, 9))
    out, _ = module(ids)
    expected, _ = reference.prompt_embed(ids, embedding.weight, module.prompt.detach())
    assert torch.equal(out, expected)


def test_ept_init():
    """``Wd (K, d, h)`` N(0, 1/d); ``Wu (K, h, d)``, ``Wg (d, K)``, ``bg (K,)`` zeros (module docstring)."""
    embedding = nn.Embedding(20, 400)
    module = prompt_ops.EPT(embedding, num_tokens=3, rank=4, max_length=10, num_subspaces=5, subspace_rank=6)
    assert module.w_down.shape == (5, 400, 6)
    assert_normal(module.w_down, 1 / math.sqrt(400))
    assert_zeros(module.w_up, (5, 6, 400))
    assert_zeros(module.w_gate, (400, 5))
    assert_zeros(module.b_gate, (5,))
    assert_fp32_trainable(module, embedding)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_ept_starts_as_prompt_tuning_whatever_w_down_holds(backend):
    """With ``B = 0`` and ``Wu = 0`` the fusion adds the mean of zero rows and every subspace term is zero: the
    prompt is ``Ps`` and the tokens get no offset, for any ``Wd`` (and any ``A``)."""
    embedding = nn.Embedding(30, 16)
    module = prompt_ops.EPT(embedding, num_tokens=4, rank=3, max_length=12, num_subspaces=2, subspace_rank=3,
                            backend=backend)  # fmt: skip
    with torch.no_grad():
        module.w_down.normal_(0, 3.0)
        module.lora_a.normal_(0, 3.0)
    torch.testing.assert_close(module.full_prompt(), module.prompt.detach(), rtol=0, atol=0)
    ids = torch.randint(0, 30, (2, 12))
    out, _ = module(ids)
    expected, _ = reference.prompt_embed(ids, embedding.weight, module.prompt.detach())
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["naive", "pool", "max"])
def test_lpt_generator_is_linear_default_init(mode):
    """``nn.Linear``'s default, as the official code leaves it: weights and biases U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) with fan_in = d for the down projection and h for the up projection."""
    model_dim, hidden_size, num_tokens = 256, 48, 5
    module = prompt_ops.LPT(model_dim, num_tokens=num_tokens, hidden_size=hidden_size, mode=mode)
    width = num_tokens * model_dim if mode == "naive" else model_dim
    shapes = {"w_down": (model_dim, hidden_size), "b_down": (hidden_size,), "w_up": (hidden_size, width),
              "b_up": (width,)}  # fmt: skip
    assert {name: tuple(p.shape) for name, p in module.named_parameters()} == shapes
    assert all(p.dtype == torch.float32 and p.requires_grad for p in module.parameters())
    for name in ("w_down", "w_up", "b_up"):  # b_down has too few entries for the distribution checks
        fan_in = model_dim if name.endswith("down") else hidden_size
        assert_uniform(getattr(module, name), 1 / math.sqrt(fan_in))
    assert module.b_down.abs().max() <= 1 / math.sqrt(model_dim)
    assert (module.num_tokens, module.hidden_size, module.dropout) == (5, 48, 0.1)
    default = prompt_ops.LPT(64)
    assert (default.num_tokens, default.hidden_size, default.mode, default.dropout) == (5, 128, "naive", 0.1)


@pytest.mark.parametrize("init_token_ids", [None, list(range(3, 23))])
def test_lamp_init_is_the_truncated_svd_of_the_initial_prompt(init_token_ids):
    """``U`` orthonormal columns, ``V`` orthonormal rows, ``q`` the top singular values (descending, positive), and
    ``(U * q) @ V`` the best rank-r approximation of the initial prompt, whose pooled rows are the first prompt."""
    embedding = nn.Embedding(40, 48).to(torch.bfloat16)
    torch.manual_seed(5)
    module = prompt_ops.LAMP(embedding, num_tokens=20, rank=6, pool=4, init_token_ids=init_token_ids)
    assert_fp32_trainable(module, embedding)
    u, q, v = (p.detach() for p in (module.u, module.q, module.v))
    assert u.shape == (20, 6) and q.shape == (6,) and v.shape == (6, 48)
    torch.testing.assert_close(u.T @ u, torch.eye(6), rtol=0, atol=1e-5)
    torch.testing.assert_close(v @ v.T, torch.eye(6), rtol=0, atol=1e-5)
    assert torch.all(q[:-1] >= q[1:]) and q[-1] > 0
    if init_token_ids is None:
        torch.manual_seed(5)
        initial = torch.randn(20, 48)  # PEFT's RANDOM init, drawn as the module draws it
    else:
        initial = embedding.weight.detach()[init_token_ids].float()
    singular = torch.linalg.svdvals(initial.double())
    torch.testing.assert_close(q.double(), singular[:6], rtol=1e-5, atol=1e-5)
    approx = (u * q) @ v
    residual = torch.linalg.matrix_norm(initial.double() - approx.double())
    torch.testing.assert_close(residual, singular[6:].square().sum().sqrt(), rtol=1e-4, atol=1e-4)  # Eckart-Young
    torch.testing.assert_close(module.prompt(), approx.view(5, 4, 48).mean(1), rtol=1e-5, atol=1e-5)
