"""The mixed-adapter bench (``bench/mixed.py``) on small shapes: the grid and its popularity patterns, the ideal byte
formula worked out by hand, the baselines and the fused op against the reference, the regression guard on the fused
launches and bytes, and the README-ready table rendered from the rows."""

import dataclasses

import pytest
import torch

from bench import mixed
from bench.measure import count_fused, outputs_close
from bench.mixed import BUDGET, MixedShape, adapter_assignment, grid, make_inputs, measure_mixed
from bench.report import render_mixed, render_readme
from bench.run import mixed_shapes
from prompt_ops.ops import reference
from prompt_ops.profiling.ideal import mixed_dept_embed_forward_bytes
from tests.conftest import INTERPRET

SMALL = dict(seq_len=24, hidden=64, max_length=32, vocab=500)
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="the CPU bench counts kernels under the interpreter")


def test_grid_covers_the_patterns_at_each_batch():
    cases = [(s.batch, s.adapters, s.pattern) for s in grid()]
    assert cases[:5] == [(8, 1, "identical"), (8, 2, "uniform"), (8, 2, "skewed"), (8, 8, "skewed"),
                         (8, 8, "distinct")]  # fmt: skip
    assert len(cases) == len(set(cases)) == 5 + 9 + 9
    assert {n for b, n, _ in cases if b == 256} == {1, 2, 8, 32, 256}
    assert all(n <= b for b, n, _ in cases) and {p for *_, p in cases} == set(mixed.PATTERNS)
    counted = [(s.batch, s.pattern) for s in grid() if mixed.triton_counted(s)]
    assert len(counted) == 15 and (256, "distinct") in counted
    assert [s.batch for s in mixed_shapes(quick=True)] == [8] * 5 and len(mixed_shapes()) == 23


def test_popularity_patterns():
    assert adapter_assignment(8, 1, "identical").tolist() == [0] * 8
    assert sorted(adapter_assignment(8, 8, "distinct").tolist()) == list(range(8))
    assert torch.bincount(adapter_assignment(64, 8, "uniform")).tolist() == [8] * 8
    skewed = adapter_assignment(256, 8, "skewed")
    assert torch.equal(skewed, adapter_assignment(256, 8, "skewed"))  # a fixed seed
    counts = torch.bincount(skewed, minlength=8)
    assert counts[0] == counts.max() and counts[0] > 256 / 2 > counts[1]  # P(0) = 1 / zeta-ish sum ~ 0.6
    with pytest.raises(ValueError, match="pattern must be one of"):
        adapter_assignment(8, 2, "bursty")
    with pytest.raises(ValueError, match="'distinct' needs adapters = batch = 8, got 4"):
        adapter_assignment(8, 4, "distinct")


def test_mixed_byte_floor_by_hand():
    """B=2, L=3, m_max=4, d=5; adapters m=(4, 2), r=(2, 1) reaching 3 and 2 rows of A; int64 ids, mask, index,
    starts, lengths; fp32 table and parameters."""
    # in: ids 48 + rows 120 + mask 48 + index 16 + starts 16 + prompts 120 + lengths 16
    #     + adapter 0: A 3x2, B 2x5 = 64, scale 4, L_a 8; adapter 1: A 2x1, B 1x5 = 28, scale 4, L_a 8
    # out: embeddings 2 x 7 x 5 x 4 = 280 + mask 2 x 7 x 8 = 112
    full = mixed_dept_embed_forward_bytes(2, 3, 4, 5, [4, 2], [2, 1], [3, 2], row_starts=True, max_lengths=True)
    assert full == 384 + 76 + 40 + 392
    # prompt tuning only: no scales, A, B or L_a; no starts; without a mask the output mask is int64
    assert mixed_dept_embed_forward_bytes(2, 3, 4, 5, [4, 2], [0, 0]) == 384 - 16 + 392
    assert mixed_dept_embed_forward_bytes(2, 3, 4, 5, [4, 2], [0, 0], mask_dtype=None) == 384 - 16 - 48 + 392
    with pytest.raises(ValueError, match="prompt_lengths and ranks must list the same adapters, got 2 and 1"):
        mixed_dept_embed_forward_bytes(2, 3, 4, 5, [4, 2], [2])
    with pytest.raises(ValueError, match=r"offset_rows must list one count per adapter \(2\), got 1"):
        mixed_dept_embed_forward_bytes(2, 3, 4, 5, [4, 2], [2, 1], [3])


@pytest.mark.parametrize("pattern, adapters", [("skewed", 3), ("distinct", 6)])
def test_baselines_match_the_reference(pattern, adapters):
    """The PEFT loop and the vLLM gather (written independently of the op) give the reference's rows and mask on a
    ragged bank with left padding; the PEFT loop runs one single-adapter path per distinct adapter."""
    x = make_inputs(MixedShape(6, adapters, pattern, **SMALL))
    want = reference.mixed_dept_embed(x.input_ids, x.weight, x.prompts, x.prompt_lengths, x.lora_a, x.lora_b,
                                      x.scales, x.adapter_index, attention_mask=x.attention_mask)  # fmt: skip
    for baseline in (mixed.peft_loop, mixed.vllm_gather):
        out, mask = baseline(x)
        assert outputs_close([out], [want[0]]) and torch.equal(mask, want[1]), baseline.__name__
    assert x.prompts[:, 10:].abs().sum() > 0 and x.prompts[1, 10:].abs().sum() == 0  # m = 60 / 10: ragged


@needs_interpreter
def test_every_provider_within_budget():
    """The regression guard: the fused forward is one launch within 1.1x of the ideal bytes, and every provider
    matches the reference; the eager providers are counted and timed, triton counted and projected only. The PEFT
    loop's launches grow with the adapters the batch uses; the fused op's do not."""
    rows = {r.provider: r for r in measure_mixed(MixedShape(6, 3, "uniform", **SMALL), repeat=2, count_triton=True)}
    assert list(rows) == list(mixed.PROVIDERS) and all(r.correct for r in rows.values())
    fused = rows["triton"]
    assert fused.launches == BUDGET.forward_launches
    assert fused.bytes <= BUDGET.forward_bytes_over_ideal * fused.ideal_bytes
    assert fused.cpu_ms is None and fused.h100_us > 0 and fused.present == 3
    assert all(rows[p].cpu_ms > 0 and rows[p].launches > 1 and rows[p].h100_us > 0 for p in mixed.EAGER)
    one = {r.provider: r for r in measure_mixed(MixedShape(6, 1, "identical", **SMALL), repeat=2, count_triton=False)}
    assert rows["peft_loop"].launches > one["peft_loop"].launches
    assert one["triton"].launches is None and one["triton"].correct is None and "not counted" in one["triton"].note


@needs_interpreter
def test_fused_backward_launch_budget():
    """The backward launcher (1 Triton launch, 2 bmm, 2 in-place scalings) gives the reference's gradients."""
    from prompt_ops.kernels.mixed_embed import mixed_embed_bwd_triton

    x = make_inputs(MixedShape(4, 3, "skewed", **SMALL))
    params = [t.clone().requires_grad_(True) for t in (x.prompts, x.lora_a, x.lora_b)]
    out, _ = reference.mixed_dept_embed(x.input_ids, x.weight, params[0], x.prompt_lengths, *params[1:], x.scales,
                                        x.adapter_index, attention_mask=x.attention_mask)  # fmt: skip
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    want = torch.autograd.grad(out, params, grad)
    got, launches, _, _ = count_fused(
        lambda: mixed_embed_bwd_triton(
            grad,
            x.prompt_lengths,
            x.lora_a,
            x.lora_b,
            x.scales,
            x.adapter_index,
            x.starts,
            x.prompts.shape[1],
            x.max_lengths,
        )  # fmt: skip
    )
    assert launches == BUDGET.backward_launches and outputs_close(list(got), list(want))


@needs_interpreter
def test_a_wrong_provider_is_reported_and_not_timed(monkeypatch):
    def wrong(x):
        out, mask = mixed.peft_loop(x)
        return out * 1.01, mask

    monkeypatch.setattr(mixed, "vllm_gather", wrong)
    rows = {r.provider: r for r in measure_mixed(MixedShape(4, 2, "uniform", **SMALL), providers=mixed.EAGER,
                                                 repeat=2)}  # fmt: skip
    assert rows["vllm_gather"].correct is False and rows["vllm_gather"].cpu_ms is None
    assert rows["peft_loop"].correct and rows["peft_loop"].cpu_ms > 0


def test_table_is_rendered_from_the_rows():
    """One line per (B, n, pattern) with every number taken from the rows, and README's section carries it."""
    base = dict(batch=8, adapters=2, present=2, pattern="uniform", seq_len=128, hidden=768, num_slots=60,
                correct=True, ideal_bytes=8_000_000, note="")  # fmt: skip
    rows = [
        dataclasses.asdict(mixed.MixedRow(provider=p, launches=n, bytes=b, h100_us=h, cpu_ms=c, **base))
        for p, n, b, h, c in [("peft_loop", 42, 53_320_000, 183.9, 5.46), ("vllm_gather", 17, 48_220_000, 82.4, 4.3),
                              ("torch", 44, 37_630_000, 187.2, 3.18), ("triton", 1, 8_180_000, 6.4, None)]
    ]  # fmt: skip
    lines = render_mixed(rows, mixed.setup())
    assert "| 8 | uniform | 2 (2) | 42 / 17 / 44 / 1 | 53.32 / 48.22 / 37.63 / 8.18 / 8.00 | 1.02 " \
        "| 183.9 / 82.4 / 187.2 / 6.4 | 5.46 / 4.30 / 3.18 | yes |" in lines  # fmt: skip
    assert "[60, 10, 40, 20][a % 4]" in lines[1] and "B = 256 with distinct only" in lines[1]
    rows[1]["correct"] = False
    rows[3].update(launches=None, bytes=None, h100_us=None, correct=None)
    assert "| 8 | uniform | 2 (2) | 42 / 17 / 44 / - | 53.32 / 48.22 / 37.63 / - / 8.00 | - " \
        "| 183.9 / 82.4 / 187.2 / - | 5.46 / 4.30 / 3.18 | **NO** |" in render_mixed(rows, mixed.setup())  # fmt: skip
    assert render_mixed([], {}) == []
    payload = {"environment": {"cpu": "test", "torch": "t", "triton": "t", "commit": "abc", "date": "today"},
               "reference_shape": {"batch": 8, "seq_len": 1, "hidden": 1, "num_prompt": 1, "max_length": 1,
                                   "lamp_tokens": 1, "pool": 1, "lpt_tokens": 1},
               "ranks": {}, "rows": [], "mixed": rows, "mixed_setup": mixed.setup()}  # fmt: skip
    assert "| 8 | uniform | 2 (2) | 42 / 17 / 44 / - |" in render_readme(payload)
