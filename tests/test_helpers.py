"""The scale-aware comparison of long reductions passes a reordered sum and still fails the bugs it must catch."""

import pytest
import torch

from tests.helpers import assert_grads_close, assert_reduction_close


def batch_sequence_gradient(batch: int = 32, seq_len: int = 256, hidden: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight gradient ``X^T G`` summed over B*L rows (entries in the hundreds), and its per-sample terms."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, seq_len, hidden, generator=gen, device="cpu")
    g = torch.randn(batch, seq_len, hidden, generator=gen, device="cpu")
    terms = torch.einsum("bld,ble->bde", x, g)  # (B, d, d)
    return terms, terms.sum(0)


def test_reordered_fp32_sum_passes():
    """The same sum in another order (reversed batch, pairwise halves) is within tolerance: only the order moved."""
    terms, total = batch_sequence_gradient()
    assert float(total.abs().max()) > 100
    reordered = terms.flip(0)[:16].sum(0) + terms.flip(0)[16:].sum(0)
    assert not torch.equal(reordered, total)  # the order did change the float result
    assert_reduction_close(reordered, total, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "bug",
    ["missed batch row", "wrong scale", "one wrong entry", "transposed", "zeroed row"],
)
def test_plausible_bugs_fail(bug):
    terms, total = batch_sequence_gradient()
    wrong = {
        "missed batch row": terms[1:].sum(0),
        "wrong scale": total * 1.01,
        "one wrong entry": total.clone().index_put_((torch.tensor([3]), torch.tensor([5])), total[3, 5] + 0.5),
        "transposed": total.t(),
        "zeroed row": total.clone().index_fill_(0, torch.tensor([7]), 0.0),
    }[bug]
    with pytest.raises(AssertionError):
        assert_reduction_close(wrong, total, rtol=1e-4, atol=1e-4)


def test_small_tensors_keep_the_plain_tolerance():
    """Where the reference's scale is at most 1 the comparison is torch's assert_close with DESIGN.md §4's numbers."""
    expected = torch.full((4, 4), 0.5, device="cpu")
    assert_reduction_close(expected + 0.9e-5, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(AssertionError):
        assert_reduction_close(expected + 2e-5, expected, rtol=1e-5, atol=1e-5)


def test_grads_close_names_the_gradient_and_checks_shapes():
    got = [torch.zeros(2, 3, device="cpu"), torch.ones(3, device="cpu")]
    with pytest.raises(AssertionError, match="grad of b_up"):
        assert_grads_close(got, [torch.zeros(2, 3, device="cpu"), torch.zeros(3, device="cpu")], ("w_up", "b_up"))
    with pytest.raises(AssertionError, match="shape"):
        assert_grads_close(got, [torch.zeros(3, 2, device="cpu"), torch.ones(3, device="cpu")], ("w_up", "b_up"))
    with pytest.raises(AssertionError, match="2 gradients against 1"):
        assert_grads_close(got, got[:1])
