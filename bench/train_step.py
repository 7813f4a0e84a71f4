"""End to end on the CPU: one training step (forward, backward, AdamW) of a prompt-tuning method on a real model.

Reported per method: the median step time with its 20/80 percentiles, tokens per second, and the activations saved
for backward (:mod:`prompt_ops.profiling.memory`; the CPU has no peak-memory counter). Methods run on our eager
``torch`` backend, the one that executes on a CPU (the Triton kernels only run in the interpreter here).
"""

from __future__ import annotations

import dataclasses

import torch

from prompt_ops.models import LPTConfig, MethodConfig, PromptTuningConfig, attach
from prompt_ops.profiling import cpu_time
from prompt_ops.profiling.memory import saved_activations

METHODS: dict[str, MethodConfig] = {
    "prompt_tuning": PromptTuningConfig(num_tokens=100),  # the vanilla baseline
    "lpt": LPTConfig(),  # NPG, n=5, h=128, after half the layers: the official scripts
    "lpt_pool": LPTConfig(mode="pool"),  # APPG
}


@dataclasses.dataclass
class TrainRow:
    model: str
    method: str
    trainable_params: int
    batch: int
    seq_len: int
    step_ms: float
    step_p20_ms: float
    step_p80_ms: float
    tokens_per_s: float
    activation_mb: float
    backend: str = "torch"


def measure_train_step(
    model: torch.nn.Module, model_name: str, method: str, batch: int, seq_len: int, repeat: int = 5
) -> TrainRow:
    """Attach ``METHODS[method]`` to ``model`` (an encoder: the loss is the mean square of its last hidden state,
    which exercises every trainable path) and time full training steps on random token ids."""
    tuned = attach(model, METHODS[method], backend="torch").train()
    trainable = [p for p in tuned.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=generator)
    mask = torch.ones(batch, seq_len, dtype=torch.int64)

    def loss() -> torch.Tensor:
        return tuned(input_ids=ids, attention_mask=mask).last_hidden_state.square().mean()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    with saved_activations(exclude=model.parameters()) as saved:
        loss()
    timing = cpu_time(step, repeat=repeat, warmup=2)
    if hasattr(tuned, "unload"):
        tuned.unload()  # leave the model's layers without LPT's hooks for the next method
    return TrainRow(
        model=model_name,
        method=method,
        trainable_params=sum(p.numel() for p in trainable),
        batch=batch,
        seq_len=seq_len,
        step_ms=timing["median"] * 1e3,
        step_p20_ms=timing["p20"] * 1e3,
        step_p80_ms=timing["p80"] * 1e3,
        tokens_per_s=batch * seq_len / timing["median"],
        activation_mb=saved.bytes / 1e6,
    )
