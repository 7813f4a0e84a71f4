"""Distributed training of an attached model in 2 CPU processes on the gloo backend: DDP, FSDP2 (``fully_shard``)
and Accelerate. Each run's adapter gradients and trained parameters equal a single-process run on the same global
batch; the runs are bounded by tests/models/gloo.py's timeouts."""

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from prompt_ops.models import DePTConfig, attach, load_adapter
from tests.models.gloo import run_ranks
from tests.models.test_attach import VOCAB, move_off_init, tiny

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # each test spawns 2 ranks (about 10 to 20 s of CPU); they run in `make test`

STEPS, BATCH, SEQ, LR = 3, 4, 9, 0.5
SHARDED = "input embedding weight is sharded"


def _tuned():
    """The same DePT-on-GPT-2 start in every process, its adapter moved off the zero init."""
    tuned = attach(tiny("gpt2"), DePTConfig(num_tokens=4, rank=3, max_length=16))
    torch.manual_seed(1)
    move_off_init(tuned)
    return tuned


def _batches() -> torch.Tensor:
    """``(STEPS, BATCH, SEQ)`` token ids: one global batch per step, no padding (equal token counts per rank)."""
    return torch.randint(1, VOCAB, (STEPS, BATCH, SEQ), generator=torch.Generator().manual_seed(2))


def _single_process_run() -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Per-step adapter gradients and the trained adapter of plain SGD on the whole global batches."""
    tuned = _tuned()
    optimizer = torch.optim.SGD(tuned.adapter_state_dict().values(), lr=LR)
    grads = []
    for ids in _batches():
        tuned(input_ids=ids, labels=ids).loss.backward()
        grads.append({name: param.grad.clone() for name, param in tuned.adapter_state_dict().items()})
        optimizer.step()
        optimizer.zero_grad()
    return grads, {name: param.detach().clone() for name, param in tuned.adapter_state_dict().items()}


def _assert_matches_single_process(out_dir: Path) -> None:
    """Rank 0's gradients and trained adapter (saved by the run) equal the single-process run's."""
    grads, params = _single_process_run()
    run = torch.load(out_dir / "run.pt", weights_only=True)
    assert len(run["grads"]) == STEPS
    for step in range(STEPS):
        for name in params:
            torch.testing.assert_close(run["grads"][step][name], grads[step][name], rtol=1e-5, atol=1e-6)
    for name, value in params.items():
        torch.testing.assert_close(run["params"][name], value, rtol=1e-5, atol=1e-6)


def _assert_saved_adapter_round_trips(out_dir: Path) -> None:
    """The adapter saved by rank 0 loads bitwise into a fresh model, and it trained: the loss on the training data
    is below the initial adapter's."""
    run = torch.load(out_dir / "run.pt", weights_only=True)
    loaded = load_adapter(tiny("gpt2"), out_dir / "adapter")
    for name, param in loaded.adapter_state_dict().items():
        assert torch.equal(param, run["params"][name]), name
    ids = _batches().flatten(0, 1)
    with torch.no_grad():
        assert loaded(input_ids=ids, labels=ids).loss < _tuned()(input_ids=ids, labels=ids).loss


# ----------------------------------------------------------------------------------------------------------------
# DDP
# ----------------------------------------------------------------------------------------------------------------


def _ddp_rank(rank: int, world: int, out_dir: str) -> None:
    tuned = _tuned()
    model = torch.nn.parallel.DistributedDataParallel(tuned)
    optimizer = torch.optim.SGD(tuned.adapter_state_dict().values(), lr=LR)
    grads = []
    for ids in _batches():
        shard = ids.chunk(world)[rank]
        model(input_ids=shard, labels=shard).loss.backward()
        grads.append({name: param.grad.clone() for name, param in tuned.adapter_state_dict().items()})
        optimizer.step()
        optimizer.zero_grad()
    if rank == 0:
        params = {name: param.detach().clone() for name, param in tuned.adapter_state_dict().items()}
        torch.save({"grads": grads, "params": params}, os.path.join(out_dir, "run.pt"))


def test_ddp_training_equals_single_process_training(tmp_path):
    run_ranks(_ddp_rank, str(tmp_path))
    _assert_matches_single_process(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# FSDP2
# ----------------------------------------------------------------------------------------------------------------


def _fsdp_rank(rank: int, world: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    mesh = init_device_mesh("cpu", (world,))

    # Sharded before attach: refused, and the model is left as it was.
    model = fully_shard(tiny("gpt2"), mesh=mesh)
    with pytest.raises(ValueError, match=SHARDED):
        attach(model, DePTConfig(num_tokens=4, rank=3))
    assert all(param.requires_grad for param in model.parameters())

    # The base model sharded on its own: the prompt code would read the table sharded, so forward refuses.
    tuned = _tuned()
    fully_shard(tuned.base_model, mesh=mesh)
    ids = _batches()[0].chunk(world)[rank]
    with pytest.raises(ValueError, match=SHARDED):
        tuned(input_ids=ids, labels=ids)

    # The embedding module sharded on its own, then the root: FSDP2 refuses at its lazy init in the first forward
    # (the table is shared with the method).
    tuned = _tuned()
    fully_shard(tuned.base_model.transformer.wte, mesh=mesh)
    fully_shard(tuned, mesh=mesh)
    with pytest.raises(ValueError, match="shared with a parameter already managed by another FSDP group"):
        tuned(input_ids=ids, labels=ids)

    # The supported layout: the blocks sharded, then the tuned model as the root (the table sits in its group).
    tuned = _tuned()
    for block in tuned.base_model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(tuned, mesh=mesh)
    for weight in (tuned.base_model.transformer.h[0].attn.c_attn.weight, tuned.prompt_module.embedding.weight):
        assert isinstance(weight, DTensor) and weight.placements == (Shard(0),)
    optimizer = torch.optim.SGD(tuned.adapter_state_dict().values(), lr=LR)
    grads = []
    for ids in _batches():
        shard = ids.chunk(world)[rank]
        tuned(input_ids=shard, labels=shard).loss.backward()
        grads.append({name: param.grad.full_tensor() for name, param in tuned.adapter_state_dict().items()})
        optimizer.step()
        optimizer.zero_grad()
    params = {name: param.full_tensor() for name, param in tuned.adapter_state_dict().items()}
    with pytest.raises(ValueError, match=SHARDED):  # outside a forward the table is sharded again
        tuned.save_adapter(os.path.join(out_dir, "refused"))
    tuned.unshard()  # gathers the root's parameters (the adapter and the table) on every rank
    if rank == 0:
        tuned.save_adapter(os.path.join(out_dir, "adapter"))
        torch.save({"grads": grads, "params": params}, os.path.join(out_dir, "run.pt"))
    tuned.reshard()
    dist.barrier()


def test_fsdp2_training_equals_single_process_training(tmp_path):
    run_ranks(_fsdp_rank, str(tmp_path))
    _assert_matches_single_process(tmp_path)
    _assert_saved_adapter_round_trips(tmp_path)
    assert not (tmp_path / "refused").exists()  # the refused save created nothing


# ----------------------------------------------------------------------------------------------------------------
# Accelerate
# ----------------------------------------------------------------------------------------------------------------


def _accelerate_rank(rank: int, world: int, out_dir: str) -> None:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    accelerator = Accelerator(cpu=True)  # joins the gloo group already set up, as under `accelerate launch`
    assert accelerator.distributed_type == DistributedType.MULTI_CPU and accelerator.num_processes == world
    tuned = _tuned()
    optimizer = torch.optim.SGD(tuned.adapter_state_dict().values(), lr=LR)
    # per-process batches of BATCH // world rows; process r gets the r-th of every `world` consecutive batches, so a
    # step's global batch is one of _batches()
    loader = torch.utils.data.DataLoader(_batches().flatten(0, 1), batch_size=BATCH // world)
    model, optimizer, loader = accelerator.prepare(tuned, optimizer, loader)
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
    grads = []
    for ids in loader:
        accelerator.backward(model(input_ids=ids, labels=ids).loss)
        grads.append({name: param.grad.clone() for name, param in tuned.adapter_state_dict().items()})
        optimizer.step()
        optimizer.zero_grad()
    unwrapped = accelerator.unwrap_model(model)
    assert unwrapped is tuned
    if accelerator.is_main_process:
        unwrapped.save_adapter(os.path.join(out_dir, "adapter"))
        params = {name: param.detach().clone() for name, param in unwrapped.adapter_state_dict().items()}
        torch.save({"grads": grads, "params": params}, os.path.join(out_dir, "run.pt"))
    accelerator.wait_for_everyone()


def test_accelerate_training_equals_single_process_training(tmp_path):
    run_ranks(_accelerate_rank, str(tmp_path))
    _assert_matches_single_process(tmp_path)
    _assert_saved_adapter_round_trips(tmp_path)
