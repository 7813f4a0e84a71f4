"""Measure one op-level case: exact launches and bytes of every provider, the H100 projection, CPU wall time.

Providers:

- ``naive``: eager PyTorch written as the official code writes it (``prompt_ops.ops.reference``), counted by
  :class:`prompt_ops.profiling.EagerTraffic` (every aten op a launch, exact bytes).
- ``fused``: our Triton launcher with the shipped GPU tiles, counted under the interpreter by
  :func:`prompt_ops.profiling.kernel_traffic` (distinct addresses touched), plus any eager op around the launch.
- ``torch``: our eager backend. Timed on the CPU next to ``naive``; interpreter time is never reported.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

import prompt_ops
from prompt_ops.kernels import dept_embed as kernels
from prompt_ops.ops import reference
from prompt_ops.profiling import EagerTraffic, cpu_time, kernel_traffic, project_h100
from prompt_ops.profiling.ideal import dept_embed_backward_bytes, dept_embed_forward_bytes


@dataclasses.dataclass(frozen=True)
class EmbedShape:
    batch: int
    seq_len: int = 256
    num_prompt: int = 60
    hidden: int = 768
    rank: int = 30  # 0: vanilla prompt tuning
    max_length: int = 256
    vocab: int = 32128  # T5's vocabulary

    @property
    def op(self) -> str:
        return "dept_embed" if self.rank else "prompt_embed"


@dataclasses.dataclass
class Row:
    op: str
    mode: str
    batch: int
    seq_len: int
    hidden: int
    num_prompt: int
    rank: int
    dtype: str
    naive_launches: int
    naive_bytes: int
    fused_launches: int
    fused_bytes: int
    fused_requested_bytes: int
    ideal_bytes: int
    naive_h100_us: float
    fused_h100_us: float
    projected_speedup: float
    cpu_naive_ms: float
    cpu_torch_ms: float
    cpu_speedup: float
    correct: bool


@dataclasses.dataclass
class Inputs:
    input_ids: torch.Tensor
    weight: torch.Tensor
    prompt: torch.Tensor
    lora_a: torch.Tensor | None
    lora_b: torch.Tensor | None
    attention_mask: torch.Tensor
    scale: float

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p in (self.prompt, self.lora_a, self.lora_b) if p is not None]


def make_inputs(shape: EmbedShape, seed: int = 0) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq_len), generator=generator)
    weight = torch.randn(shape.vocab, shape.hidden, generator=generator)
    prompt = torch.randn(shape.num_prompt, shape.hidden, generator=generator).requires_grad_(True)
    lora_a = lora_b = None
    if shape.rank:
        lora_a = torch.randn(shape.max_length, shape.rank, generator=generator).requires_grad_(True)
        lora_b = torch.randn(shape.rank, shape.hidden, generator=generator).requires_grad_(True)
    mask = torch.ones(shape.batch, shape.seq_len, dtype=torch.int64)
    scale = 8.0 / shape.rank**0.5 if shape.rank else 0.0
    return Inputs(ids, weight, prompt, lora_a, lora_b, mask, scale)


def _naive(inputs: Inputs):
    return reference.dept_embed(
        inputs.input_ids, inputs.weight, inputs.prompt, inputs.lora_a, inputs.lora_b, inputs.scale,
        inputs.attention_mask,
    )  # fmt: skip


def _ours(inputs: Inputs, backend: str):
    if inputs.lora_a is None:
        return prompt_ops.prompt_embed(
            inputs.input_ids, inputs.weight, inputs.prompt, attention_mask=inputs.attention_mask, backend=backend
        )
    return prompt_ops.dept_embed(
        inputs.input_ids, inputs.weight, inputs.prompt, inputs.lora_a, inputs.lora_b, scale=inputs.scale,
        attention_mask=inputs.attention_mask, backend=backend,
    )  # fmt: skip


def _count_eager(fn) -> tuple[EagerTraffic, int]:
    with FlopCounterMode(display=False) as flops, EagerTraffic() as traffic:
        fn()
    return traffic, flops.get_total_flops()


def _count_fused(fn):
    with kernel_traffic(check_bounds=True) as kernel, EagerTraffic() as around:
        result = fn()
    launches = kernel.launches + around.launches
    return result, launches, kernel.unique_bytes + around.bytes, kernel.requested_bytes + around.bytes


def measure(shape: EmbedShape, mode: str, repeat: int = 10) -> Row:
    """One row: ``mode`` is ``"forward"`` or ``"backward"``."""
    inputs = make_inputs(shape)
    detached = [p.detach() for p in inputs.params]
    prompt, lora_a, lora_b = detached[0], *(detached[1:] if shape.rank else (None, None))
    total = shape.num_prompt + shape.seq_len
    grad = torch.randn(shape.batch, total, shape.hidden, generator=torch.Generator().manual_seed(1))
    forward_config = kernels.GPU_FWD_CONFIG
    backward_config = kernels.GPU_BWD_CONFIG

    if mode == "forward":
        naive_traffic, naive_flops = _count_eager(lambda: _naive(inputs))
        (out, mask), launches, unique, requested = _count_fused(
            lambda: kernels.dept_embed_fwd(
                inputs.input_ids,
                inputs.weight,
                prompt,
                lora_a,
                lora_b,
                inputs.attention_mask,
                inputs.scale,
                forward_config,
            )  # fmt: skip
        )
        ref_out, ref_mask = _naive(inputs)
        correct = torch.allclose(out, ref_out, rtol=1e-4, atol=1e-4) and torch.equal(mask, ref_mask)
        ideal = dept_embed_forward_bytes(shape.batch, shape.seq_len, shape.num_prompt, shape.hidden, shape.rank)
        fused_flops = 2 * shape.seq_len * shape.rank * shape.hidden
        naive_time = cpu_time(lambda: _naive(inputs), repeat=repeat)
        torch_time = cpu_time(lambda: _ours(inputs, "torch"), repeat=repeat)
    elif mode == "backward":
        ref_out, _ = _naive(inputs)
        naive_traffic, naive_flops = _count_eager(
            lambda: torch.autograd.grad(ref_out, inputs.params, grad, retain_graph=True)
        )
        grads, launches, unique, requested = _count_fused(
            lambda: kernels.dept_embed_bwd(grad, lora_a, lora_b, shape.num_prompt, inputs.scale, backward_config)
        )
        ref_grads = torch.autograd.grad(ref_out, inputs.params, grad, retain_graph=True)
        correct = all(
            torch.allclose(g, r, rtol=1e-4, atol=1e-3)
            for g, r in zip([g for g in grads if g is not None], ref_grads, strict=True)
        )
        ideal = dept_embed_backward_bytes(
            shape.batch, shape.seq_len, shape.num_prompt, shape.hidden, shape.rank, shape.max_length
        )
        fused_flops = 4 * shape.seq_len * shape.rank * shape.hidden
        our_out, _ = _ours(inputs, "torch")
        naive_time = cpu_time(
            lambda: torch.autograd.grad(ref_out, inputs.params, grad, retain_graph=True), repeat=repeat
        )
        torch_time = cpu_time(
            lambda: torch.autograd.grad(our_out, inputs.params, grad, retain_graph=True), repeat=repeat
        )
    else:
        raise ValueError(f"mode must be 'forward' or 'backward', got {mode!r}")

    naive_us = project_h100(naive_traffic.bytes, naive_flops, naive_traffic.launches) * 1e6
    fused_us = project_h100(unique, fused_flops, launches) * 1e6
    return Row(
        op=shape.op,
        mode=mode,
        batch=shape.batch,
        seq_len=shape.seq_len,
        hidden=shape.hidden,
        num_prompt=shape.num_prompt,
        rank=shape.rank,
        dtype="float32",
        naive_launches=naive_traffic.launches,
        naive_bytes=naive_traffic.bytes,
        fused_launches=launches,
        fused_bytes=unique,
        fused_requested_bytes=requested,
        ideal_bytes=ideal,
        naive_h100_us=naive_us,
        fused_h100_us=fused_us,
        projected_speedup=naive_us / fused_us,
        cpu_naive_ms=naive_time["median"] * 1e3,
        cpu_torch_ms=torch_time["median"] * 1e3,
        cpu_speedup=naive_time["median"] / torch_time["median"],
        correct=correct,
    )
