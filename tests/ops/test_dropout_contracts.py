"""Dropout on both backends against an independent expectation: the keep mask is read back from the op's own output
(never from the backend's mask helpers), then every kept value must be the eval value times ``1/(1-p)``, every
dropped value exactly 0, about ``1-p`` of the values kept, and the gradients those of the reference under that
mask. Covers LPT's generators (NPG, APPG and MPPG: dropout on the prompt) and ADePT (dropout on the FFN's
pre-activation)."""

import pytest
import torch

import prompt_ops
from prompt_ops.ops import reference
from tests.helpers import make_adept_case

BACKENDS = ["torch", "triton"]
TOL = {"rtol": 1e-4, "atol": 1e-4}  # fp32 with a dot inside (DESIGN.md §4)


def assert_kept_fraction(keep: torch.Tensor, dropout_p: float) -> None:
    """About ``1 - p`` kept: within five binomial standard deviations."""
    n = keep.numel()
    kept = keep.float().mean().item()
    assert abs(kept - (1 - dropout_p)) < 5 * (dropout_p * (1 - dropout_p) / n) ** 0.5, f"kept {kept:.3f} of {n}"


def lpt_inputs(mode: str, batch=4, seq_len=7, hidden_size=24, gen_rank=6, num_tokens=5):
    width = num_tokens * hidden_size if mode == "naive" else hidden_size
    hidden = torch.randn(batch, seq_len, hidden_size)
    params = [
        torch.randn(hidden_size, gen_rank) / hidden_size**0.5,
        torch.randn(gen_rank) + 0.5,
        torch.randn(gen_rank, width) / gen_rank**0.5,
        torch.randn(width),
    ]
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[1, seq_len - 3 :] = 0  # right padding
    index = torch.tensor([0, 3, 6, 2])[:batch]
    return hidden, [p.requires_grad_(True) for p in params], mask, index


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["naive", "pool", "max"])
@pytest.mark.parametrize("dropout_p", [0.3, 0.6])
def test_lpt_dropout_scales_kept_values_and_their_gradients(backend, mode, dropout_p):
    hidden, params, mask, index = lpt_inputs(mode)
    kwargs = {"num_tokens": 5, "index": index, "attention_mask": mask, "mode": mode, "backend": backend}
    out = prompt_ops.lpt_prompt(hidden, *params, dropout_p=dropout_p, training=True, seed=17, **kwargs)
    fresh = [p.detach().clone().requires_grad_(True) for p in params]
    plain = reference.lpt_prompt(hidden, *fresh, 5, index, mask, mode)  # no dropout
    assert plain.abs().min() > 0  # so a zero in ``out`` can only be a dropped value
    keep = out != 0
    assert_kept_fraction(keep, dropout_p)
    multipliers = keep.float() / (1 - dropout_p)
    torch.testing.assert_close(out, plain * multipliers, **TOL)  # kept values are scaled by exactly 1/(1-p)
    grad = torch.randn(out.shape)
    expected_grads = torch.autograd.grad(plain * multipliers, fresh, grad)
    for name, got, want in zip(("w_down", "b_down", "w_up", "b_up"), torch.autograd.grad(out, params, grad),
                               expected_grads, strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, **TOL, msg=f"grad of {name}")
    # the insertion drops exactly the same values for the same seed
    inserted, _ = prompt_ops.lpt_insert(hidden, *params, dropout_p=dropout_p, training=True, seed=17, **kwargs)
    torch.testing.assert_close(inserted[:, :5], out, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lpt_dropout_is_keyed_by_seed_and_off_in_eval(backend):
    hidden, params, mask, index = lpt_inputs("naive")
    kwargs = {"num_tokens": 5, "index": index, "mode": "naive", "dropout_p": 0.5, "backend": backend}
    first = prompt_ops.lpt_prompt(hidden, *params, training=True, seed=3, **kwargs)
    again = prompt_ops.lpt_prompt(hidden, *params, training=True, seed=3, **kwargs)
    other = prompt_ops.lpt_prompt(hidden, *params, training=True, seed=4, **kwargs)
    assert torch.equal(first, again) and not torch.equal(first == 0, other == 0)
    evaluated = prompt_ops.lpt_prompt(hidden, *params, training=False, seed=3, **kwargs)
    torch.testing.assert_close(evaluated, reference.lpt_prompt(hidden, *params, 5, index), **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lpt_module_drops_in_training_mode_only(backend):
    module = prompt_ops.LPT(16, num_tokens=3, hidden_size=8, dropout=0.5, backend=backend)
    hidden = torch.randn(6, 5, 16)
    module.train()
    trained = module.prompt(hidden, seed=9)
    assert_kept_fraction(trained != 0, 0.5)
    module.eval()
    assert (module.prompt(hidden, seed=9) != 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dropout_p", [0.25, 0.5])
def test_adept_dropout_acts_on_the_pre_activation_with_inverted_scaling(backend, dropout_p):
    """With ``w_up = [I_r | 0]``, ``b_up = 0`` and a positive pre-activation ``H = E @ w_down + b_down`` (so that the
    ReLU passes every kept value), the first ``r`` columns of the offset are ``H * D``: the multipliers ``D`` are
    read back from the output and must be 0 or ``1/(1-p)``."""
    rank = 6
    case = make_adept_case(5, 9, 3, 16, rank, mask=None)
    with torch.no_grad():
        case.b_down.fill_(4.0)  # |E @ w_down| < 4 for these draws: H > 0 everywhere
        case.w_up.zero_()
        case.w_up[:, :rank] = torch.eye(rank)
        case.b_up.zero_()
    out, _ = case.run(backend, dropout_p=dropout_p, training=True, seed=21)
    emb = case.weight[case.input_ids].reshape(-1, 16)
    pre = emb @ case.w_down.detach() + case.b_down.detach()
    assert pre.min() > 0
    offset = out[:, 3:].reshape(-1, 16) - emb
    multipliers = offset[:, :rank] / pre
    keep = multipliers > 0.5
    torch.testing.assert_close(multipliers, keep.float() / (1 - dropout_p), **TOL)
    torch.testing.assert_close(offset[:, rank:], torch.zeros_like(offset[:, rank:]), **TOL)
    assert_kept_fraction(keep, dropout_p)
    ref_out, _, ref_params = case.reference(dropout_scale=keep.float() / (1 - dropout_p))
    torch.testing.assert_close(out, ref_out, **TOL)
    grad = torch.randn(out.shape)
    for got, want in zip(torch.autograd.grad(out, case.params, grad), torch.autograd.grad(ref_out, ref_params, grad),
                         strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, **TOL)
