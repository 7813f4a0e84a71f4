"""Every element an op returns is written by the op, never left to whatever fresh memory holds: while these tests
run, ``torch.empty``, ``torch.empty_like`` and ``Tensor.new_empty`` hand out tensors filled with NaN (integers: 77),
so an unwritten element (a mask bound one short, a partial sum that skips the rows past ``L``) shows up as a NaN or
a 77 against the reference instead of passing on zeroed pages. Both backends, forward and every gradient, with
``L < max_length`` so that ``d_lora_a`` has rows past the sequence, which must be exactly zero."""

import pytest
import torch

import prompt_ops
from prompt_ops.ops import dept_embed as dept_ops
from prompt_ops.ops import reference
from tests.helpers import make_adept_case, make_case, make_ept_case, make_lamp_case, run_public

BACKENDS = ["torch", "triton"]
TOL = {"rtol": 1e-4, "atol": 1e-4}  # fp32 with a dot inside (DESIGN.md §4)
GARBAGE_INT = 77


def _poison(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_floating_point():
        tensor.fill_(float("nan"))
    elif tensor.dtype != torch.bool:
        tensor.fill_(GARBAGE_INT)
    return tensor


@pytest.fixture(autouse=True)
def garbage_memory(monkeypatch):
    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty
    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: _poison(empty(*args, **kwargs)))
    monkeypatch.setattr(torch, "empty_like", lambda *args, **kwargs: _poison(empty_like(*args, **kwargs)))
    monkeypatch.setattr(
        torch.Tensor, "new_empty", lambda self, *args, **kwargs: _poison(new_empty(self, *args, **kwargs))
    )


def test_the_allocators_are_poisoned():
    """Guard: the fixture is in force, so a skipped write cannot read as zero."""
    assert torch.isnan(torch.empty(3)).all() and torch.isnan(torch.zeros(2).new_empty(2)).all()
    assert (torch.empty(2, dtype=torch.int64) == GARBAGE_INT).all()


def check(out, mask, params, ref_out, ref_mask, ref_params, names):
    torch.testing.assert_close(out, ref_out, **TOL)
    assert torch.equal(mask, ref_mask)
    grad = torch.randn(out.shape)
    got = torch.autograd.grad(out, params, grad)
    want = torch.autograd.grad(ref_out, ref_params, grad)
    for name, actual, expected in zip(names, got, want, strict=True):
        torch.testing.assert_close(actual, expected, **TOL, msg=f"grad of {name}")
    return dict(zip(names, got, strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seq_len", [0, 1, 7])
@pytest.mark.parametrize("rank", [0, 3])
def test_dept_and_prompt_embed(backend, seq_len, rank):
    case = make_case(3, seq_len, 4, 13, rank, max_length=11)
    out, mask = run_public(case, backend)
    ref_out, ref_mask, ref_params = case.reference()
    names = ("prompt", "lora_a", "lora_b")[: len(case.params)]
    grads = check(out, mask, case.params, ref_out, ref_mask, ref_params, names)
    if rank:
        assert torch.equal(grads["lora_a"][seq_len:], torch.zeros(11 - seq_len, rank))  # positions >= L: exactly 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seq_len", [0, 5])
def test_dept_backward_op_zeroes_the_rows_past_the_sequence(backend, seq_len):
    """The backward op's own contract: ``d_lora_a (L_max, r)`` with rows ``>= L`` exactly zero."""
    grad_out = torch.randn(2, 3 + seq_len, 8)
    lora_a, lora_b = torch.randn(9, 4), torch.randn(4, 8)
    grad_prompt, grad_a, grad_b = dept_ops.dept_embed_bwd_op(grad_out, lora_a, lora_b, 3, 0.5, backend)
    assert grad_a.shape == (9, 4) and grad_b.shape == (4, 8) and grad_prompt.shape == (3, 8)
    assert torch.equal(grad_a[seq_len:], torch.zeros(9 - seq_len, 4))
    summed = grad_out[:, 3:].sum(0)
    torch.testing.assert_close(grad_a[:seq_len], 0.5 * summed @ lora_b.T, **TOL)
    torch.testing.assert_close(grad_b, 0.5 * lora_a[:seq_len].T @ summed, **TOL)
    torch.testing.assert_close(grad_prompt, grad_out[:, :3].sum(0), **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seq_len", [0, 6])
def test_ept_embed(backend, seq_len):
    case = make_ept_case(2, seq_len, 3, 12, 4, 2, 3, max_length=10)
    out, mask = case.run(backend)
    ref_out, ref_mask, ref_params = case.reference()
    names = ("prompt", "lora_a", "lora_b", "w_down", "w_up", "w_gate", "b_gate")
    check(out, mask, case.params, ref_out, ref_mask, ref_params, names)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adept_embed(backend):
    case = make_adept_case(3, 6, 2, 12, 5)
    out, mask = case.run(backend)
    ref_out, ref_mask, ref_params = case.reference()
    check(out, mask, case.params, ref_out, ref_mask, ref_params, ("prompt", "w_down", "b_down", "w_up", "b_up"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lamp_embed(backend):
    case = make_lamp_case(2, 5, 12, 10, 3, 3)
    out, mask = case.run(backend)
    ref_out, ref_mask, ref_params = case.reference()
    check(out, mask, case.params, ref_out, ref_mask, ref_params, ("u", "q", "v"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["naive", "pool", "max"])
def test_lpt_insert(backend, mode):
    batch, seq_len, hidden_size, gen_rank, num_tokens = 3, 7, 10, 4, 3
    width = num_tokens * hidden_size if mode == "naive" else hidden_size
    hidden = torch.randn(batch, seq_len, hidden_size)
    params = [(torch.randn(*shape) / 2).requires_grad_(True)
              for shape in ((hidden_size, gen_rank), (gen_rank,), (gen_rank, width), (width,))]  # fmt: skip
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[2, 4:] = 0
    if mode == "naive":  # NPG reads one row and takes any mask: left padding puts a 0 right after the prompt
        mask[0, :2] = 0
    index = torch.tensor([0, 6, 3])
    kwargs = {"num_tokens": num_tokens, "index": index, "attention_mask": mask, "mode": mode, "backend": backend}
    out, out_mask = prompt_ops.lpt_insert(hidden, *params, **kwargs)
    fresh = [p.detach().clone().requires_grad_(True) for p in params]
    prompt = reference.lpt_prompt(hidden, *fresh, num_tokens, index, mask, mode)
    ref_out, ref_mask = reference.lpt_insert(prompt, hidden, mask)
    check(out, out_mask, params, ref_out, ref_mask, fresh, ("w_down", "b_down", "w_up", "b_up"))
    alone = prompt_ops.lpt_prompt(hidden, *params, **kwargs)
    torch.testing.assert_close(alone, prompt, **TOL)
