"""``pytest bench/``: the op-level cases of ``make bench`` through pytest-benchmark.

Each test checks the provider against the reference first (the correctness gate), then times it with the
``benchmark`` fixture and stores the exact counts in ``extra_info``: the provider's launches and bytes, the fused
kernels' launches and bytes, and the ideal. Shape: the bench's reference (B=8, L=256, d=768), or
``PROMPT_OPS_BENCH_BATCH`` / ``PROMPT_OPS_BENCH_SEQ_LEN`` / ``PROMPT_OPS_BENCH_HIDDEN``. On a CPU the Triton kernels
run in the interpreter, so the triton provider is counted, not timed (its test is skipped for timing).
"""

import dataclasses
import os

import pytest
import torch

from bench.measure import DEFAULT_RANKS, FAMILIES, MODES, Case, EmbedShape, provider_counts

SHAPE = EmbedShape(
    batch=int(os.environ.get("PROMPT_OPS_BENCH_BATCH", 8)),
    seq_len=int(os.environ.get("PROMPT_OPS_BENCH_SEQ_LEN", 256)),
    hidden=int(os.environ.get("PROMPT_OPS_BENCH_HIDDEN", 768)),
)
TIMED_HERE = ("naive", "compiled", "torch") + (("triton",) if torch.cuda.is_available() else ())
_CASES: dict[str, Case] = {}


def case_for(op: str) -> Case:
    if op not in _CASES:
        _CASES[op] = Case(FAMILIES[op], dataclasses.replace(SHAPE, rank=DEFAULT_RANKS[op]))
    return _CASES[op]


@pytest.mark.parametrize("provider", ("naive", "compiled", "torch", "triton"))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", sorted(FAMILIES))
def test_op(benchmark, op, mode, provider):
    case = case_for(op)
    triton_counts = provider_counts(case, "triton")[mode]
    assert triton_counts[2], f"{op} {mode}: the fused kernels differ from the reference"
    benchmark.extra_info.update(
        {"op": op, "mode": mode, "provider": provider, "batch": SHAPE.batch, "seq_len": SHAPE.seq_len,
         "hidden": SHAPE.hidden, "triton_launches": triton_counts[0], "triton_bytes": triton_counts[1],
         "ideal_bytes": FAMILIES[op].ideal_forward(case.shape) if mode == "forward" else None}
    )  # fmt: skip
    if provider not in TIMED_HERE:
        pytest.skip("the Triton kernels run in the interpreter here: counted (extra_info), never timed")
    if provider != "naive":
        assert case.check(provider), f"{op} {provider}: differs from the reference"
    if provider != "compiled":
        launches, moved, _ = provider_counts(case, provider)[mode]
        benchmark.extra_info.update({"launches": launches, "bytes": moved})
    benchmark(case.timed(provider, mode))
