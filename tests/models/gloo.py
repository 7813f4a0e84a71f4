"""Run a test body in 2 CPU processes joined by the gloo backend, with every wait bounded.

A failed rendezvous or a hung collective raises after ``COLLECTIVE_TIMEOUT`` (the process group's timeout), and the
whole run fails after ``RUN_TIMEOUT_S`` whatever happens, so a broken distributed test fails instead of hanging the
suite. Each rank ends with ``os._exit`` after a barrier, skipping interpreter teardown: in torch 2.13 the gloo process
group can deadlock when a DDP reducer is destroyed at exit (the main thread joins gloo's worker thread while holding
the GIL that thread needs; seen as a rare hang of the whole suite).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)
RUN_TIMEOUT_S = 300.0  # generous: the suite runs with `-n 2` on 2 cores, and each rank imports torch and transformers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, body: Callable, args: tuple) -> None:
    """One rank: the environment ``torchrun`` would set, a gloo process group with a bounded timeout, the body, a
    barrier, then ``os._exit``. A failure prints its traceback (pytest shows it as captured stderr) and exits 1."""
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": "1",
        }
    )
    torch.set_num_threads(1)  # the ranks share 2 cores with the test process
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
        body(rank, world, *args)
        dist.barrier()  # every rank is done with the store and the collectives
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def run_ranks(body: Callable, *args, world: int = WORLD, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Run ``body(rank, world, *args)`` in ``world`` spawned processes (``body`` must be a module-level function).

    Raises ``torch.multiprocessing.ProcessExitedException`` as soon as a rank fails (the others are stopped; the
    failed rank's traceback is in the captured stderr), and ``TimeoutError`` when the ranks are not all done within
    ``timeout_s`` seconds (then every rank is killed)."""
    context = mp.start_processes(
        _rank_main, args=(world, free_port(), body, args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{body.__name__}: the {world} ranks did not finish within {timeout_s:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)
