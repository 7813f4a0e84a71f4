"""The interpreter's byte counts depend on the shapes only, not on where the allocator put the tensors.

Two ``make bench`` runs of one commit once counted EPT's fused forward at B=32 differently: the counter merged raw
addresses, so an intermediate freed between two launches and an output later placed over (part of) its memory were
counted once or twice depending on the heap. The counter now attributes every access to the storage it belongs to.
"""

import numpy as np
import pytest
import torch

from bench.measure import FAMILIES, Case, EmbedShape, provider_counts
from prompt_ops.kernels import dept_embed as kernels
from prompt_ops.profiling import kernel_traffic
from tests.conftest import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="byte counting hooks the Triton interpreter")

BATCH, SEQ_LEN, NUM_PROMPT, HIDDEN, VOCAB = 2, 16, 4, 32, 100


def _embed_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ_LEN), generator=generator)
    return ids, torch.randn(VOCAB, HIDDEN, generator=generator), torch.ones(BATCH, SEQ_LEN, dtype=torch.int64)


def test_two_tensors_over_one_address_count_twice():
    """Two storages over one buffer stand for memory a freed tensor left and the next one took (the allocator decides
    whether that happens, so the test builds it): reading both counts both, reading one twice counts it once."""
    ids, weight, mask = _embed_inputs()
    buffer = np.random.default_rng(0).standard_normal((NUM_PROMPT, HIDDEN), dtype=np.float32)
    first, second = torch.from_numpy(buffer), torch.from_numpy(buffer)
    assert first.data_ptr() == second.data_ptr()
    with kernel_traffic() as same:
        kernels.dept_embed_fwd(ids, weight, first, None, None, mask, 0.0)
        kernels.dept_embed_fwd(ids, weight, first, None, None, mask, 0.0)
    with kernel_traffic() as aliased:
        kernels.dept_embed_fwd(ids, weight, first, None, None, mask, 0.0)
        kernels.dept_embed_fwd(ids, weight, second, None, None, mask, 0.0)
    assert aliased.load_unique_bytes - same.load_unique_bytes == buffer.nbytes


def test_an_output_freed_between_launches_keeps_its_count():
    """The first launch's outputs are dropped before the second allocates its own: both are written, whatever
    addresses the allocator hands out."""
    ids, weight, mask = _embed_inputs()
    prompt = torch.randn(NUM_PROMPT, HIDDEN, generator=torch.Generator().manual_seed(1))
    with kernel_traffic() as once:
        kernels.dept_embed_fwd(ids, weight, prompt, None, None, mask, 0.0)
    with kernel_traffic() as twice:
        for _ in range(2):
            kernels.dept_embed_fwd(ids, weight, prompt, None, None, mask, 0.0)  # the result is dropped at once
    total = NUM_PROMPT + SEQ_LEN
    assert once.store_unique_bytes == BATCH * total * (HIDDEN * 4 + 8)  # the embeddings and the int64 mask
    assert twice.store_unique_bytes == 2 * once.store_unique_bytes


def test_a_bench_case_counts_the_same_twice():
    """EPT, the family whose count varied (its prompt builder frees intermediates before DePT's launch): counted
    twice, the second time with the heap rearranged by held allocations of its intermediates' sizes."""
    shape = EmbedShape(batch=2, seq_len=16, num_prompt=6, hidden=64, rank=4, max_length=32, vocab=500, sub_rank=4)
    case = Case(FAMILIES["ept_embed"], shape)
    first = provider_counts(case, "triton")
    sizes = [shape.num_prompt * shape.max_length, shape.num_prompt * shape.hidden, shape.batch * 22 * shape.hidden]
    held = [torch.empty(n + k) for k in range(8) for n in sizes][::2]  # every other one freed: holes of each size
    second = provider_counts(case, "triton")
    assert held and first == second
    assert all(correct for _, _, correct in first.values())
