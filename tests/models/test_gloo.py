"""The distributed tests' launcher (tests/models/gloo.py) turns a failed or hung rank into a failed test, fast.

The bodies live here, a module that imports only torch, so the spawned ranks start quickly."""

import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.models.gloo import run_ranks

pytestmark = pytest.mark.slow  # each test spawns 2 ranks


def _fails_on_rank_1(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("rank 1 fails")
    dist.barrier()  # rank 0 waits for a rank that is gone: the launcher must stop it


def _hangs(rank: int, world: int) -> None:
    time.sleep(3600)


def test_a_failing_rank_fails_the_run(capfd):
    start = time.monotonic()
    with pytest.raises(mp.ProcessExitedException, match="exit code 1"):
        run_ranks(_fails_on_rank_1)
    assert time.monotonic() - start < 100  # well before the gloo timeout (120 s) would free rank 0
    assert "ValueError: rank 1 fails" in capfd.readouterr().err


def test_a_hung_run_fails_at_its_timeout():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="_hangs: the 2 ranks did not finish within 5 s"):
        run_ranks(_hangs, timeout_s=5)
    assert time.monotonic() - start < 60  # the timeout, then killing the ranks, not the hour they would sleep
