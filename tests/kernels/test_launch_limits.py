"""Sizes whose launch grid would exceed CUDA's per-axis limit get a ValueError naming them, not a failed launch."""

import pytest
import torch

import prompt_ops
from prompt_ops.kernels.common import MAX_GRID, launch_grid

pytestmark = pytest.mark.order_independent


def test_launch_grid_passes_sizes_within_the_limit():
    assert launch_grid(MAX_GRID[0], MAX_GRID[1], MAX_GRID[2], sizes="x") == MAX_GRID
    assert launch_grid(7, sizes="x") == (7,)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_launch_grid_names_the_sizes_past_the_limit(axis):
    dims = [1, 1, 1]
    dims[axis] = MAX_GRID[axis] + 1
    with pytest.raises(ValueError, match=rf"w_up's width 9 is too large for one launch: .* grid axis {axis}"):
        launch_grid(*dims, sizes="w_up's width 9")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_lpt_insert_with_more_rows_than_one_launch_takes(backend):
    """The shift kernel tiles L in 16-row programs on grid axis 1: L = 16 * 65535 + 1 rows is refused by the Triton
    backend, naming hidden's length; the torch backend has no grid and inserts the prompt."""
    seq_len = 16 * MAX_GRID[1] + 1
    hidden = torch.randn(1, seq_len, 1)
    params = [torch.randn(1, 2), torch.randn(2), torch.randn(2, 3), torch.randn(3)]
    if backend == "torch":
        out, mask = prompt_ops.lpt_insert(hidden, *params, num_tokens=3, backend=backend)
        assert out.shape == (1, seq_len + 3, 1) and torch.equal(out[:, 3:], hidden)
        return
    with pytest.raises(ValueError, match=rf"hidden's length L = {seq_len} is too large for one launch"):
        prompt_ops.lpt_insert(hidden, *params, num_tokens=3, backend=backend)
