"""EPT's Triton prompt builder vs ops/reference.py: the prompt and all seven gradients, bounds-checked."""

import pytest
import torch

import prompt_ops
from prompt_ops.kernels import ept as kernels
from prompt_ops.ops import ept as ops
from prompt_ops.ops import reference
from tests.helpers import EPT_NAMES, assert_close, assert_grads_close, make_ept_case

# (s, d, r, K, h) with L_max = 7: one row, odd widths, r = 30 (two rank chunks), K * h = 64 (the widest).
SHAPES = [(1, 3, 1, 1, 1), (6, 40, 5, 3, 7), (17, 70, 30, 2, 5), (5, 33, 4, 8, 8)]


def check_builder(case, prompt, grads):
    params = [p.detach().clone().requires_grad_(True) for p in case.params]
    expected = reference.ept_prompt(*params, case.scale)
    assert_close(prompt, expected, torch.float32, dot=True)
    grad = torch.randn(prompt.shape, generator=torch.Generator(prompt.device).manual_seed(3), device=prompt.device)
    assert_grads_close(grads(grad), torch.autograd.grad(expected, params, grad), EPT_NAMES)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_public_builder_matches_reference(shape, device):
    num_prompt, hidden, rank, subspaces, sub_rank = shape
    case = make_ept_case(1, 4, num_prompt, hidden, rank, subspaces, sub_rank, device=device)
    prompt = prompt_ops.ept_prompt(*case.params, scale=case.scale, backend="triton")
    assert prompt.dtype == torch.float32
    check_builder(case, prompt, lambda grad: torch.autograd.grad(prompt, case.params, grad))


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
def test_gpu_tiles(shape, device):
    """The shipped GPU tiles: several programs per row, key and column tile."""
    num_prompt, hidden, rank, subspaces, sub_rank = shape
    case = make_ept_case(1, 40, num_prompt, hidden, rank, subspaces, sub_rank, device=device)
    params = [p.detach() for p in case.params]
    config = kernels.GPU_CONFIG
    prompt, fused, probs, gate = kernels.ept_prompt_fwd(*params, case.scale, config=config)
    assert probs.shape == (num_prompt, 43) and gate.shape == (subspaces,)
    torch.testing.assert_close(probs.sum(1), torch.ones(num_prompt), rtol=1e-5, atol=1e-5)

    def grads(grad):
        return kernels.ept_prompt_bwd(grad, *params[:6], fused, probs, gate, case.scale, config=config)

    check_builder(case, prompt, grads)


def test_realistic_shape(device):
    """s=60, d=768, L_max=256, r=30, K=4, h=8 (the module defaults)."""
    case = make_ept_case(1, 4, 60, 768, 30, 4, 8, max_length=256, device=device)
    prompt = prompt_ops.ept_prompt(*case.params, scale=case.scale, backend="triton")
    check_builder(case, prompt, lambda grad: torch.autograd.grad(prompt, case.params, grad))


def test_opcheck(device):
    case = make_ept_case(1, 4, 5, 20, 3, 2, 4, device=device)
    params = [p.detach() for p in case.params]
    torch.library.opcheck(ops.ept_prompt_fwd_op, (*case.params, case.scale))
    _, fused, probs, gate = ops.ept_prompt_fwd_op(*params, case.scale)
    grad = torch.randn(5, 20, device=device)
    torch.library.opcheck(ops.ept_prompt_bwd_op, (grad, *params[:6], fused, probs, gate, case.scale))


def test_triton_refuses_wide_subspaces():
    case = make_ept_case(1, 4, 3, 16, 2, 5, 13)  # K * h = 65
    with pytest.raises(ValueError, match=r"num_subspaces \* subspace_rank <= 64, got 5 \* 13 = 65"):
        prompt_ops.ept_prompt(*case.params, scale=1.0, backend="triton")
    assert prompt_ops.ept_prompt(*case.params, scale=1.0, backend="torch").shape == (3, 16)


def test_embed_with_row_starts_bounds_checked(bounds_checked, device):
    """``ept_embed`` on a left-padded batch (``positions="tokens"``): DePT's shifted kernel adds the offsets, one
    launch after the builder's three; the backward is DePT's two launches and the builder's seven; outputs and all
    seven gradients as the reference's."""
    case = make_ept_case(3, 6, 4, 24, 5, 2, 3, max_length=8, device=device)
    case.attention_mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]], device=device)
    launches = bounds_checked.launches if bounds_checked is not None else 0
    out, mask = case.run("triton")
    if bounds_checked is not None:
        assert bounds_checked.launches - launches == 4
        launches = bounds_checked.launches
    grad = torch.randn(out.shape, device=device)
    grads = torch.autograd.grad(out, case.params, grad)
    if bounds_checked is not None:
        assert bounds_checked.launches - launches == 9
    ref_out, ref_mask, ref_params = case.reference()
    assert_close(out, ref_out, torch.float32, dot=True)
    assert torch.equal(mask, ref_mask)
    assert_grads_close(grads, torch.autograd.grad(ref_out, ref_params, grad), EPT_NAMES)
