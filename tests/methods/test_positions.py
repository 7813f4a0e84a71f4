"""``embed_tokens(ids, start)``: what a full forward gives tokens at input positions ``start ..`` (used for the
tokens generated after the prefill), checked for windows that lie inside, straddle and lie past ``max_length``
against a per-position expectation written here: DePT's and EPT's offset ``scale * A[p] @ B`` while ``p <
max_length``, none after; ADePT's FFN offset whatever the position; a plain lookup for prompt tuning. ``start`` as
an int or a per-row tensor; the modules' forward follows their ``positions``."""

import pytest
import torch
from torch import nn

import prompt_ops
from prompt_ops.ops import reference

BACKENDS = ["torch", "triton"]
MAX_LENGTH = 6
TOL = {"rtol": 1e-5, "atol": 1e-5}


def module_off_init(cls: str, backend: str) -> nn.Module:
    embedding = nn.Embedding(30, 10)
    kwargs = {"rank": 3, "max_length": MAX_LENGTH}
    if cls == "EPT":
        kwargs.update(num_subspaces=2, subspace_rank=2)
    module = getattr(prompt_ops, cls)(embedding, num_tokens=2, backend=backend, **kwargs)
    with torch.no_grad():
        module.lora_b.normal_()
    return module


def expected_rows(module: nn.Module, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Token ``i`` at position ``p = start + i``: ``W[id] + scale * A[p] @ B`` if ``p < max_length``, else ``W[id]``."""
    rows = []
    for i in range(ids.shape[1]):
        position = start + i
        offset = module.scale * (module.lora_a[position] @ module.lora_b) if position < MAX_LENGTH else 0.0
        rows.append(module.embedding.weight[ids[:, i]] + offset)
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["DePT", "EPT"])
@pytest.mark.parametrize("start, count", [(0, 6), (2, 3), (4, 4), (5, 1), (6, 1), (6, 3), (9, 2)])
def test_position_offsets_stop_at_max_length(cls, backend, start, count):
    module = module_off_init(cls, backend)
    ids = torch.randint(0, 30, (3, count))
    got = module.embed_tokens(ids, start)
    expected = expected_rows(module, ids, start)
    assert got.shape == (3, count, 10)
    torch.testing.assert_close(got, expected, **TOL)
    grad = torch.randn(got.shape)
    params = [module.lora_a, module.lora_b]

    def grads_of(out):  # zeros for parameters the rows do not depend on (past max_length: none of them)
        if not out.requires_grad:
            return [torch.zeros_like(p) for p in params]
        return torch.autograd.grad(out, params, grad, allow_unused=True, materialize_grads=True)

    got_grads, want_grads = grads_of(got), grads_of(expected)
    for name, actual, want in zip(("lora_a", "lora_b"), got_grads, want_grads, strict=True):
        torch.testing.assert_close(actual, want, rtol=1e-4, atol=1e-4, msg=f"grad of {name}")
    outside = torch.ones(MAX_LENGTH, dtype=torch.bool)
    outside[start : start + count] = False
    assert torch.equal(got_grads[0][outside], torch.zeros_like(got_grads[0][outside]))  # rows of other positions


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["DePT", "EPT"])
def test_full_forward_agrees_with_embed_tokens_up_to_max_length(cls, backend):
    """The prefill (a full forward of ``max_length`` tokens) and token-by-token embedding agree position by
    position, so cached decoding sees what the full forward saw."""
    module = module_off_init(cls, backend)
    ids = torch.randint(0, 30, (2, MAX_LENGTH))
    full, _ = module(ids)
    for position in range(MAX_LENGTH):
        one = module.embed_tokens(ids[:, position : position + 1], position)
        torch.testing.assert_close(one[:, 0], full[:, 2 + position], **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adept_offset_ignores_the_position(backend):
    embedding = nn.Embedding(30, 10)
    module = prompt_ops.ADePT(embedding, num_tokens=2, rank=3, backend=backend)
    with torch.no_grad():
        for param in (module.b_down, module.w_up, module.b_up):
            param.normal_()
    module.train()  # embed_tokens never drops: generated tokens are embedded as in eval
    ids = torch.randint(0, 30, (2, 4))
    emb = embedding.weight[ids]
    expected = emb + torch.relu(emb @ module.w_down + module.b_down) @ module.w_up + module.b_up
    for start in (0, 3, 1000):
        torch.testing.assert_close(module.embed_tokens(ids, start), expected, rtol=1e-4, atol=1e-4)


def test_prompt_tuning_embeds_tokens_by_lookup():
    embedding = nn.Embedding(30, 10)
    module = prompt_ops.PromptTuning(embedding, num_tokens=2)
    ids = torch.randint(0, 30, (2, 4))
    assert torch.equal(module.embed_tokens(ids, 500), embedding.weight[ids])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["DePT", "EPT"])
def test_per_row_starts(cls, backend):
    """``start`` as a ``(B,)`` tensor: each row's tokens at its own positions, including rows straddling and past
    ``max_length``; int32 is taken too."""
    module = module_off_init(cls, backend)
    ids = torch.randint(0, 30, (4, 3))
    starts = torch.tensor([0, 2, 5, 8])
    expected = torch.cat([expected_rows(module, ids[row : row + 1], int(starts[row])) for row in range(4)])
    for start in (starts, starts.to(torch.int32)):
        torch.testing.assert_close(module.embed_tokens(ids, start), expected, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["DePT", "EPT"])
def test_left_padded_prefill_then_per_row_decoding(cls, backend):
    """After a left-padded prefill (``positions="tokens"``), the next token of row ``b`` is at position
    ``length[b]``: ``embed_tokens(next_ids, lengths)`` gives what a full forward of the longer batch gives it."""
    module = module_off_init(cls, backend)
    lengths = torch.tensor([4, 2, 5])
    ids = torch.randint(0, 30, (3, 6))
    mask = (torch.arange(6)[None, :] >= 6 - (lengths[:, None] + 1)).long()  # left-padded, the new token last
    full, _ = module(ids, mask)
    step = module.embed_tokens(ids[:, 5:], lengths)
    torch.testing.assert_close(step[:, 0], full[:, 2 + 5], **TOL)


@pytest.mark.parametrize("cls", ["DePT", "EPT"])
def test_forward_follows_the_modules_positions(cls):
    """The module passes its ``positions`` to the op: on a left-padded batch ``"tokens"`` and ``"absolute"``
    differ, each as the reference computes it."""
    embedding = nn.Embedding(30, 10)
    kwargs = {"rank": 3, "max_length": 6} | ({"num_subspaces": 2, "subspace_rank": 2} if cls == "EPT" else {})
    ids, mask = torch.randint(0, 30, (2, 5)), torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    outs = {}
    for positions in ("tokens", "absolute"):
        torch.manual_seed(0)
        module = getattr(prompt_ops, cls)(embedding, num_tokens=2, positions=positions, **kwargs)
        with torch.no_grad():
            module.lora_b.normal_()
        outs[positions], _ = module(ids, mask)
        prompt = module.full_prompt() if cls == "EPT" else module.prompt
        want, _ = reference.dept_embed(ids, embedding.weight, prompt, module.lora_a, module.lora_b, module.scale, mask,
                                       positions)  # fmt: skip
        torch.testing.assert_close(outs[positions], want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(outs["tokens"][0], outs["absolute"][0])
    torch.testing.assert_close(outs["tokens"][1], outs["absolute"][1], rtol=0, atol=0)  # no padding: the same


@pytest.mark.parametrize("cls", ["PromptTuning", "ADePT", "LAMP", "DePT"])
def test_every_module_takes_a_tensor_start_and_checks_it(cls):
    embedding = nn.Embedding(30, 10)
    module = getattr(prompt_ops, cls)(embedding, num_tokens=2, **({"rank": 2} if cls != "PromptTuning" else {}))
    ids = torch.randint(0, 30, (2, 3))
    assert module.embed_tokens(ids, torch.tensor([4, 0])).shape == (2, 3, 10)
    if cls != "DePT":  # no position term: the start changes nothing
        torch.testing.assert_close(module.embed_tokens(ids, torch.tensor([4, 0])), module.embed_tokens(ids, 0))
    with pytest.raises(TypeError, match=r"start must be an int >= 0 or a \(B,\) int64/int32 tensor, got a torch"):
        module.embed_tokens(ids, torch.zeros(2))
    with pytest.raises(ValueError, match=r"start must have shape \(B,\) = \(2,\) on input_ids' device"):
        module.embed_tokens(ids, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="start must be an int >= 0"):
        module.embed_tokens(ids, -1)


@pytest.mark.parametrize("cls", ["PromptTuning", "ADePT", "LAMP", "DePT", "EPT"])
def test_positions_set_after_construction_are_checked(cls):
    """The tuned models number positions from the module's ``positions``: a typo set later is refused by name (the
    methods without offsets never pass it to an op, so it was read as ``"tokens"``), a valid value is kept."""
    kwargs = {} if cls == "PromptTuning" else {"rank": 2}
    module = getattr(prompt_ops, cls)(nn.Embedding(30, 10), num_tokens=2, **kwargs)
    with pytest.raises(ValueError, match=r"^positions must be one of \('tokens', 'absolute'\), got 'Absolute'"):
        module.positions = "Absolute"
    assert module.positions == "tokens"
    module.positions = "absolute"
    assert module.positions == "absolute" and "positions='absolute'" in repr(module)
