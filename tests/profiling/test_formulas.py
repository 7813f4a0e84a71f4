"""The measurement formulas against values worked out by hand: the H100 projection when bytes and flops both
count, the CPU timer's statistics on a scripted clock, and the ideal byte floors of a small case (fp32 parameters,
int64 ids and masks, B=2, L=3, m=n=4, d=5, r=h=2, max_length=7)."""

import pytest
import torch

from prompt_ops.profiling import kernel_traffic, project_h100
from prompt_ops.profiling import timer as timer_module
from prompt_ops.profiling.ideal import (
    dept_embed_backward_bytes,
    dept_embed_forward_bytes,
    lpt_insert_backward_bytes,
    lpt_insert_forward_bytes,
)


def test_projection_takes_the_larger_of_memory_and_compute_time():
    assert project_h100(3.35e9, 67e9, 0) == pytest.approx(1e-3)  # 1 ms each: max, not the sum
    assert project_h100(3.35e9, 2 * 67e9, 5) == pytest.approx(2e-3 + 20e-6)  # compute-bound, plus 5 launches


def test_cpu_time_reports_median_and_inclusive_20_80_percentiles(monkeypatch):
    ticks = iter([0, 1, 10, 12, 20, 23, 30, 34, 40, 140])  # timed calls of 1, 2, 3, 4 and 100 s
    monkeypatch.setattr(timer_module.time, "perf_counter", lambda: next(ticks))
    calls = []
    stats = timer_module.cpu_time(lambda: calls.append(1), repeat=5, warmup=2)
    assert len(calls) == 7  # warm-up calls are made but not timed
    assert stats == pytest.approx({"median": 3.0, "p20": 1.8, "p80": 23.2})  # p80: 4 + 0.2 * (100 - 4)
    with pytest.raises(ValueError, match="repeat must be an int >= 2"):
        timer_module.cpu_time(lambda: None, repeat=1)


def test_interleaved_time_alternates_rounds_and_rotates_the_order(monkeypatch):
    """Three rounds of two functions: a, b, then b, a, then a, b; each function's own durations in its stats."""
    clock = iter(range(100))
    monkeypatch.setattr(timer_module.time, "perf_counter", lambda: next(clock))
    order = []

    def tick(name, extra):
        def fn():
            order.append(name)
            for _ in range(extra):  # a duration of 1 + extra ticks: each extra tick consumes one clock reading
                next(clock)

        return fn

    first, second = timer_module.interleaved_time([tick("a", 0), tick("b", 2)], repeat=3, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # one warm-up round, then the rotating rounds
    assert first["median"] == 1 and second["median"] == 3
    with pytest.raises(TypeError, match="fns must be a non-empty sequence of callables"):
        timer_module.interleaved_time([])


def test_dept_byte_floors():
    # forward: ids 48 + gathered rows 120 + prompt 80 + A[:L], B 64 + mask 48 in; embeddings 280 + mask 112 out
    assert dept_embed_forward_bytes(2, 3, 4, 5, 2) == 752
    assert dept_embed_forward_bytes(2, 3, 4, 5, 2, weight_dtype=torch.float16) == 752 - 60 - 140
    # backward: dX over all 7 rows 280 + A[:L], B 64 in; d_prompt 80 + all max_length rows of d_lora_a 56 + dB 40 out
    assert dept_embed_backward_bytes(2, 3, 4, 5, 2, 7) == 520
    assert dept_embed_backward_bytes(2, 3, 4, 5, 0, 7) == 160 + 80  # prompt tuning: the prompt rows only


def test_lpt_byte_floors():
    # forward: hidden + mask 168 + generator (NPG width n*d = 20: 288; APPG width d = 5: 108) in; buffer + mask 392 out
    assert lpt_insert_forward_bytes(2, 3, 4, 5, 2, "naive") == 168 + 288 + 392
    assert lpt_insert_forward_bytes(2, 3, 4, 5, 2, "pool") == 168 + 108 + 392
    # backward: prompt-row gradient 160 + rows read (NPG 2, APPG 6) + w_up in; the four gradients out
    assert lpt_insert_backward_bytes(2, 3, 4, 5, 2, "naive") == 160 + 40 + 160 + 288
    assert lpt_insert_backward_bytes(2, 3, 4, 5, 2, "pool") == 160 + 120 + 40 + 108


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: timer_module.cpu_time(None), TypeError, "fn must be a callable"),
        (lambda: timer_module.cpu_time(lambda: None, repeat="5"), TypeError, "repeat must be an int >= 2, got str"),
        (lambda: timer_module.cpu_time(lambda: None, warmup=-1), ValueError, "warmup must be an int >= 0, got -1"),
        (lambda: project_h100(-1, 0, 0), ValueError, "bytes_moved must be a finite number >= 0, got -1"),
        (lambda: project_h100(0, "x", 0), TypeError, "flops must be a number >= 0, got str"),
        (lambda: project_h100(0, 0, float("nan")), ValueError, "launches must be a finite number >= 0, got nan"),
        (lambda: project_h100(0, 0, 0, device=None), TypeError, "device must be a prompt_ops.profiling"),
        (lambda: kernel_traffic(check_bounds="no"), TypeError, "check_bounds must be a bool, got str"),
    ],
)
def test_measurement_helpers_refuse_bad_arguments_by_name(call, error, pattern):
    """Not Python's own "'NoneType' object is not callable" or a projection of negative bytes."""
    with pytest.raises(error, match=pattern):
        call()
