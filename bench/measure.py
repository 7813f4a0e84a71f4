"""Measure one op-level case: exact launches and bytes of every provider, the H100 projection, CPU wall time.

Providers:

- ``naive``: eager PyTorch written as the official code writes it (``prompt_ops.ops.reference``), counted by
  :class:`prompt_ops.profiling.EagerTraffic` (every aten op a launch, exact bytes).
- ``fused``: our Triton launchers, counted under the interpreter by :func:`prompt_ops.profiling.kernel_traffic`
  (distinct addresses touched), plus any eager op around the launch. Backward launches use the shipped GPU tiles
  wherever the tiling decides the traffic (the per-tile partials); ADePT's token tile ``block_n`` does not, so it
  is enlarged to keep the interpreter fast. Forward traffic does not depend on the tiling at all (every input read,
  every output written, once per distinct address), so forwards are counted with the interpreter's large tiles.
- ``torch``: our eager backend. Timed on the CPU next to ``naive``; interpreter time is never reported.

Each op family is a :class:`Family`: how to build its inputs and call each provider.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import prompt_ops
from prompt_ops.kernels import adept_embed as adept_kernels
from prompt_ops.kernels import dept_embed as dept_kernels
from prompt_ops.kernels import ept as ept_kernels
from prompt_ops.kernels import lamp as lamp_kernels
from prompt_ops.kernels import lpt as lpt_kernels
from prompt_ops.kernels.dept_embed import PromptFactors
from prompt_ops.kernels.runtime import interpreting
from prompt_ops.ops import reference
from prompt_ops.ops.lpt import slot_windows
from prompt_ops.ops.positions import row_starts
from prompt_ops.profiling import H100, EagerTraffic, cpu_time, kernel_traffic, project_h100
from prompt_ops.profiling.ideal import (
    adept_embed_backward_bytes,
    adept_embed_forward_bytes,
    dept_embed_backward_bytes,
    dept_embed_forward_bytes,
    ept_embed_backward_bytes,
    ept_embed_forward_bytes,
    lamp_embed_backward_bytes,
    lamp_embed_forward_bytes,
    lpt_insert_backward_bytes,
    lpt_insert_forward_bytes,
)


@dataclasses.dataclass(frozen=True)
class EmbedShape:
    batch: int
    seq_len: int = 256
    num_prompt: int = 60
    hidden: int = 768
    rank: int = 30
    max_length: int = 256
    vocab: int = 32128  # T5's vocabulary
    lamp_tokens: int = 100  # LAMP's prompt length l before pooling
    pool: int = 2  # LAMP's pooling window
    subspaces: int = 4  # EPT's K
    sub_rank: int = 8  # EPT's h
    lpt_tokens: int = 5  # LPT's n (its generator bottleneck h is ``rank``)


@dataclasses.dataclass
class Inputs:
    input_ids: torch.Tensor
    weight: torch.Tensor
    attention_mask: torch.Tensor
    params: dict[str, torch.Tensor]  # trainable, in the functional entry's order, prompt first
    pool: int = 1
    hidden_states: torch.Tensor | None = None  # LPT: the layer-k hidden states (B, L, d)
    windows: tuple[torch.Tensor, torch.Tensor] | None = None  # LPT: the generator's slot windows, made beforehand
    starts: torch.Tensor | None = None  # DePT/EPT: the left-padded mask's row starts, made beforehand

    def detached(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.params.values()]


@dataclasses.dataclass(frozen=True)
class Family:
    """How to run one op family under each provider."""

    op: str
    param_shapes: Callable[[EmbedShape], dict[str, tuple[int, ...]]]
    naive: Callable[[Inputs], tuple[torch.Tensor, torch.Tensor]]
    ours: Callable[[Inputs, str], tuple[torch.Tensor, torch.Tensor]]
    fused_forward: Callable[[Inputs], object]
    fused_backward: Callable[[Inputs, torch.Tensor, object], tuple]  # (inputs, grad, prepare(inputs))
    ideal_forward: Callable[[EmbedShape], int]
    ideal_backward: Callable[[EmbedShape], int]
    flops_forward: Callable[[EmbedShape], int]
    prompt_rows: Callable[[EmbedShape], int] = lambda s: s.num_prompt
    prepare_backward: Callable[[Inputs], object] = lambda x: None  # forward work a backward needs, not counted
    uses_hidden_states: bool = False  # LPT: inputs are layer-k hidden states, not token ids
    left_padded: bool = False  # DePT/EPT: a left-padded mask, so the offsets take the shifted (row-start) kernels


def _shifted_backward(x: Inputs) -> dict:
    """The fused backward's row-start arguments: the starts of a ``"tokens"`` mask are never positive, so the
    gather-sum covers ``A[:L]`` (as the op tells the launcher)."""
    return {"starts": x.starts, "offset_rows": x.input_ids.shape[1]}


def _prompt_family() -> Family:
    return Family(
        op="prompt_embed",
        param_shapes=lambda s: {"prompt": (s.num_prompt, s.hidden)},
        naive=lambda x: reference.prompt_embed(x.input_ids, x.weight, x.params["prompt"], x.attention_mask),
        ours=lambda x, backend: prompt_ops.prompt_embed(
            x.input_ids, x.weight, x.params["prompt"], attention_mask=x.attention_mask, backend=backend
        ),
        fused_forward=lambda x: dept_kernels.dept_embed_fwd(
            x.input_ids, x.weight, x.detached()[0], None, None, x.attention_mask, 0.0
        ),
        fused_backward=lambda x, g, _: dept_kernels.dept_embed_bwd(
            g, None, None, x.params["prompt"].shape[0], 0.0, dept_kernels.GPU_BWD_CONFIG
        )[:1],
        ideal_forward=lambda s: dept_embed_forward_bytes(s.batch, s.seq_len, s.num_prompt, s.hidden, 0),
        ideal_backward=lambda s: dept_embed_backward_bytes(s.batch, s.seq_len, s.num_prompt, s.hidden, 0, 0),
        flops_forward=lambda s: 0,
    )


def _dept_family() -> Family:
    def fused_forward(x: Inputs):
        prompt, lora_a, lora_b = x.detached()
        scale = 8.0 / lora_a.shape[1] ** 0.5
        return dept_kernels.dept_embed_fwd(
            x.input_ids, x.weight, prompt, lora_a, lora_b, x.attention_mask, scale, starts=x.starts
        )

    def fused_backward(x: Inputs, grad: torch.Tensor, _):
        prompt, lora_a, lora_b = x.detached()
        scale = 8.0 / lora_a.shape[1] ** 0.5
        return dept_kernels.dept_embed_bwd(
            grad, lora_a, lora_b, prompt.shape[0], scale, dept_kernels.GPU_BWD_CONFIG, **_shifted_backward(x)
        )

    def naive(x: Inputs):
        prompt, lora_a, lora_b = x.params.values()
        return reference.dept_embed(
            x.input_ids, x.weight, prompt, lora_a, lora_b, 8.0 / lora_a.shape[1] ** 0.5, x.attention_mask, x.starts
        )

    def ours(x: Inputs, backend: str):
        prompt, lora_a, lora_b = x.params.values()
        return prompt_ops.dept_embed(
            x.input_ids, x.weight, prompt, lora_a, lora_b, scale=8.0 / lora_a.shape[1] ** 0.5,
            attention_mask=x.attention_mask, backend=backend,
        )  # fmt: skip

    return Family(
        op="dept_embed",
        param_shapes=lambda s: {
            "prompt": (s.num_prompt, s.hidden),
            "lora_a": (s.max_length, s.rank),
            "lora_b": (s.rank, s.hidden),
        },
        naive=naive,
        ours=ours,
        fused_forward=fused_forward,
        fused_backward=fused_backward,
        ideal_forward=lambda s: dept_embed_forward_bytes(
            s.batch, s.seq_len, s.num_prompt, s.hidden, s.rank, row_starts=True
        ),
        ideal_backward=lambda s: dept_embed_backward_bytes(
            s.batch, s.seq_len, s.num_prompt, s.hidden, s.rank, s.max_length, row_starts=True
        ),
        flops_forward=lambda s: 2 * s.seq_len * s.rank * s.hidden,
        left_padded=True,
    )


def _adept_family() -> Family:
    def fused_backward(x: Inputs, grad: torch.Tensor, _):
        prompt, w_down, b_down, w_up, _ = x.detached()
        config = adept_kernels.GPU_CONFIG
        if interpreting():  # counted: the same traffic with fewer programs; on a GPU the shipped tile runs
            splits = adept_kernels.weight_splits(x.input_ids.numel(), w_down.shape[0], config)
            config = dataclasses.replace(config, block_n=128, splits=splits)
        return adept_kernels.adept_embed_bwd(
            grad, x.input_ids, x.weight, w_down, b_down, w_up, prompt.shape[0], 0.0, 0, config
        )

    return Family(
        op="adept_embed",
        param_shapes=lambda s: {
            "prompt": (s.num_prompt, s.hidden),
            "w_down": (s.hidden, s.rank),
            "b_down": (s.rank,),
            "w_up": (s.rank, s.hidden),
            "b_up": (s.hidden,),
        },
        naive=lambda x: reference.adept_embed(x.input_ids, x.weight, *x.params.values(), x.attention_mask),
        ours=lambda x, backend: prompt_ops.adept_embed(
            x.input_ids, x.weight, *x.params.values(), attention_mask=x.attention_mask, backend=backend
        ),
        fused_forward=lambda x: adept_kernels.adept_embed_fwd(
            x.input_ids, x.weight, *x.detached(), x.attention_mask, 0.0, 0
        ),
        fused_backward=fused_backward,
        ideal_forward=lambda s: adept_embed_forward_bytes(s.batch, s.seq_len, s.num_prompt, s.hidden, s.rank),
        ideal_backward=lambda s: adept_embed_backward_bytes(s.batch, s.seq_len, s.num_prompt, s.hidden, s.rank),
        flops_forward=lambda s: 4 * s.batch * s.seq_len * s.rank * s.hidden,
    )


def _lamp_family() -> Family:
    def factors(x: Inputs) -> PromptFactors:
        u, q, v = x.detached()
        return PromptFactors(u, q, v, x.pool)

    return Family(
        op="lamp_embed",
        param_shapes=lambda s: {"u": (s.lamp_tokens, s.rank), "q": (s.rank,), "v": (s.rank, s.hidden)},
        naive=lambda x: reference.lamp_embed(x.input_ids, x.weight, *x.params.values(), x.pool, x.attention_mask),
        ours=lambda x, backend: prompt_ops.lamp_embed(
            x.input_ids, x.weight, *x.params.values(), pool=x.pool, attention_mask=x.attention_mask, backend=backend
        ),
        fused_forward=lambda x: dept_kernels.dept_embed_fwd(
            x.input_ids, x.weight, factors(x), None, None, x.attention_mask, 0.0
        ),
        fused_backward=lambda x, g, _: lamp_kernels.lamp_embed_bwd(g, factors(x)),
        ideal_forward=lambda s: lamp_embed_forward_bytes(s.batch, s.seq_len, s.lamp_tokens, s.pool, s.hidden, s.rank),
        ideal_backward=lambda s: lamp_embed_backward_bytes(s.batch, s.seq_len, s.lamp_tokens, s.pool, s.hidden, s.rank),
        flops_forward=lambda s: 2 * (s.lamp_tokens // s.pool) * s.rank * s.hidden,
        prompt_rows=lambda s: s.lamp_tokens // s.pool,
    )


def _ept_family() -> Family:
    scale = lambda x: 8.0 / x.params["lora_a"].shape[1] ** 0.5  # noqa: E731

    def fused_forward(x: Inputs):
        params = x.detached()
        prompt, _, _, _ = ept_kernels.ept_prompt_fwd(*params, scale(x))
        return dept_kernels.dept_embed_fwd(
            x.input_ids, x.weight, prompt, *params[1:3], x.attention_mask, scale(x), starts=x.starts
        )

    def prepare_backward(x: Inputs):
        return ept_kernels.ept_prompt_fwd(*x.detached(), scale(x))[1:]

    def fused_backward(x: Inputs, grad: torch.Tensor, saved):
        params = x.detached()
        config, shift = dept_kernels.GPU_BWD_CONFIG, _shifted_backward(x)
        grad_prompt, grad_a, grad_b = dept_kernels.dept_embed_bwd(
            grad, params[1], params[2], params[0].shape[0], scale(x), config, **shift
        )
        builder = ept_kernels.ept_prompt_bwd(grad_prompt, *params[:6], *saved, scale(x), config=ept_kernels.GPU_CONFIG)
        return (builder[0], builder[1] + grad_a, builder[2] + grad_b, *builder[3:])

    def sizes(s: EmbedShape):
        return (s.batch, s.seq_len, s.num_prompt, s.hidden, s.rank, s.subspaces, s.sub_rank, s.max_length)

    return Family(
        op="ept_embed",
        param_shapes=lambda s: {
            "prompt": (s.num_prompt, s.hidden),
            "lora_a": (s.max_length, s.rank),
            "lora_b": (s.rank, s.hidden),
            "w_down": (s.subspaces, s.hidden, s.sub_rank),
            "w_up": (s.subspaces, s.sub_rank, s.hidden),
            "w_gate": (s.hidden, s.subspaces),
            "b_gate": (s.subspaces,),
        },
        naive=lambda x: reference.ept_embed(
            x.input_ids, x.weight, *x.params.values(), scale(x), x.attention_mask, x.starts
        ),
        ours=lambda x, backend: prompt_ops.ept_embed(
            x.input_ids,
            x.weight,
            *x.params.values(),
            scale=scale(x),
            attention_mask=x.attention_mask,
            backend=backend,
        ),  # fmt: skip
        fused_forward=fused_forward,
        fused_backward=fused_backward,
        ideal_forward=lambda s: ept_embed_forward_bytes(*sizes(s), row_starts=True),
        ideal_backward=lambda s: ept_embed_backward_bytes(*sizes(s), row_starts=True),
        flops_forward=lambda s: (
            2 * s.max_length * s.rank * s.hidden
            + 4 * s.num_prompt * s.max_length * s.hidden
            + 4 * s.num_prompt * s.hidden * s.subspaces * s.sub_rank
            + 2 * s.seq_len * s.rank * s.hidden
        ),
        prepare_backward=prepare_backward,
        left_padded=True,
    )


def _lpt_family() -> Family:
    """LPT's insertion at layer ``k`` (NPG, the official default): the naive path generates the prompt, then
    ``torch.cat``s it and the mask; the fused path writes both into one buffer."""

    def num_tokens(x: Inputs) -> int:
        return x.params["b_up"].shape[0] // x.hidden_states.shape[2]

    def naive(x: Inputs):  # reads the row the fused path reads (the windows' starts), as the official code is given
        prompt = reference.lpt_prompt(
            x.hidden_states, *x.params.values(), num_tokens(x), x.windows[0], x.attention_mask
        )
        return reference.lpt_insert(prompt, x.hidden_states, x.attention_mask)

    def fused_forward(x: Inputs):
        batch, seq_len, hidden = x.hidden_states.shape
        total = num_tokens(x) + seq_len
        out = torch.empty(batch, total, hidden, device=x.hidden_states.device)
        mask_out = torch.empty(batch, total, dtype=x.attention_mask.dtype, device=x.hidden_states.device)
        lpt_kernels.lpt_insert_fwd(x.hidden_states, x.attention_mask, *x.windows, *x.detached(), 0.0, 0, out, mask_out)
        return out, mask_out

    def prepare_backward(x: Inputs):
        prompt = torch.empty(x.hidden_states.shape[0], num_tokens(x), x.hidden_states.shape[2],
                             device=x.hidden_states.device)  # fmt: skip
        return lpt_kernels.lpt_generate_fwd(x.hidden_states, *x.windows, *x.detached(), 0.0, 0, prompt)

    def fused_backward(x: Inputs, grad: torch.Tensor, pre):
        grad_prompt = grad[:, : num_tokens(x)]
        return lpt_kernels.lpt_generate_bwd(grad_prompt, x.hidden_states, *x.windows, pre, x.params["w_up"], 0.0, 0)

    def sizes(s: EmbedShape):
        return (s.batch, s.seq_len, s.lpt_tokens, s.hidden, s.rank, "naive")

    return Family(
        op="lpt_insert",
        param_shapes=lambda s: {
            "w_down": (s.hidden, s.rank),
            "b_down": (s.rank,),
            "w_up": (s.rank, s.lpt_tokens * s.hidden),
            "b_up": (s.lpt_tokens * s.hidden,),
        },
        naive=naive,
        ours=lambda x, backend: prompt_ops.lpt_insert(
            x.hidden_states,
            *x.params.values(),
            num_tokens=num_tokens(x),
            attention_mask=x.attention_mask,
            backend=backend,
        ),  # fmt: skip
        fused_forward=fused_forward,
        fused_backward=fused_backward,
        ideal_forward=lambda s: lpt_insert_forward_bytes(*sizes(s)),
        ideal_backward=lambda s: lpt_insert_backward_bytes(*sizes(s)),
        flops_forward=lambda s: 2 * s.batch * s.rank * s.hidden * (1 + s.lpt_tokens),
        prompt_rows=lambda s: s.lpt_tokens,
        prepare_backward=prepare_backward,
        uses_hidden_states=True,
    )


FAMILIES = {
    f.op: f for f in (_prompt_family(), _dept_family(), _adept_family(), _lamp_family(), _ept_family(), _lpt_family())
}
DEFAULT_RANKS = {
    "prompt_embed": 0, "dept_embed": 30, "adept_embed": 19, "lamp_embed": 8, "ept_embed": 30, "lpt_insert": 128,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Budget:
    """What the fused path of an op family may cost: the regression guard (``tests/test_bench.py``)."""

    forward_launches: int
    backward_launches: int
    forward_bytes_over_ideal: float | None  # None: intermediates are real traffic (EPT's Q and attention)


BUDGETS = {
    "prompt_embed": Budget(1, 1, 1.1),
    "dept_embed": Budget(1, 2, 1.1),
    "adept_embed": Budget(1, 2, 1.1),  # backward: 3 when the tokens span several weight splits
    "lamp_embed": Budget(1, 2, 1.1),
    "ept_embed": Budget(4, 11, None),  # three prompt-builder launches, then DePT's; backward 2 + 7 + 2 adds
    "lpt_insert": Budget(3, 3, 1.1),  # the generator's two launches and the copy of the hidden states
}

PROVIDERS = ("naive", "compiled", "torch", "triton")
MODES = ("forward", "backward", "full")


@dataclasses.dataclass
class Row:
    """One (op, provider, mode, shape) measurement. ``None`` marks what cannot be measured here (see ``note``)."""

    op: str
    provider: str
    mode: str
    batch: int
    seq_len: int
    hidden: int
    num_prompt: int
    rank: int
    dtype: str
    device: str
    correct: bool | None  # output and gradients equal the reference (naive is the reference)
    launches: int | None  # kernel launches (eager: aten ops)
    bytes: int | None  # bytes moved (eager: exact per op; triton: distinct addresses touched)
    ideal_bytes: int
    h100_us: float | None  # projection from the counts, not a measurement
    cpu_ms: float | None = None  # real CPU wall time (median), for providers that run on the CPU
    cpu_p20_ms: float | None = None
    cpu_p80_ms: float | None = None
    gpu_ms: float | None = None  # triton.testing.do_bench median, with CUDA
    gpu_p20_ms: float | None = None
    gpu_p80_ms: float | None = None
    gbps: float | None = None  # ideal bytes / GPU time
    peak_bandwidth_pct: float | None = None
    peak_allocated_mb: float | None = None
    peak_reserved_mb: float | None = None
    note: str = ""


def make_inputs(family: Family, shape: EmbedShape, seed: int = 0, device: str = "cpu") -> Inputs:
    """Random inputs (drawn on the CPU, then moved to ``device``); parameters at a trained-looking scale so that no
    path is trivially zero."""
    inputs = _make_cpu_inputs(family, shape, seed)
    if device == "cpu":
        return inputs
    moved = {name: p.detach().to(device).requires_grad_(True) for name, p in inputs.params.items()}
    return dataclasses.replace(
        inputs, input_ids=inputs.input_ids.to(device), weight=inputs.weight.to(device),
        attention_mask=inputs.attention_mask.to(device), params=moved,
        hidden_states=None if inputs.hidden_states is None else inputs.hidden_states.to(device),
        windows=None if inputs.windows is None else tuple(w.to(device) for w in inputs.windows),
        starts=None if inputs.starts is None else inputs.starts.to(device),
    )  # fmt: skip


def _make_cpu_inputs(family: Family, shape: EmbedShape, seed: int) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq_len), generator=generator)
    weight = torch.randn(shape.vocab, shape.hidden, generator=generator)
    params = {
        name: (torch.randn(dims, generator=generator) / max(dims[0], 1) ** 0.5).requires_grad_(True)
        for name, dims in family.param_shapes(shape).items()
    }
    mask = torch.ones(shape.batch, shape.seq_len, dtype=torch.int64)
    starts = None
    if family.left_padded:  # row b has b % 4 leading pads (capped below L): rows start at different positions
        pads = torch.arange(shape.batch) % 4
        mask[torch.arange(shape.seq_len)[None, :] < pads.clamp(max=shape.seq_len - 1)[:, None]] = 0
        starts = row_starts(mask, "tokens")
    hidden_states, windows = None, None
    if family.uses_hidden_states:
        hidden_states = torch.randn(shape.batch, shape.seq_len, shape.hidden, generator=generator)
        windows = slot_windows(shape.batch, shape.seq_len, shape.lpt_tokens, "naive", None, None)
    return Inputs(ids, weight, mask, params, shape.pool, hidden_states, windows, starts)


def count_eager(fn) -> tuple[EagerTraffic, int]:
    """The eager launches and bytes of ``fn()`` and its flops."""
    with FlopCounterMode(display=False) as flops, EagerTraffic() as traffic:
        fn()
    return traffic, flops.get_total_flops()


def count_fused(fn):
    """``(result, launches, unique bytes, requested bytes)`` of Triton launches plus any eager op around them."""
    with kernel_traffic(check_bounds=True) as kernel, EagerTraffic() as around:
        result = fn()
    launches = kernel.launches + around.launches
    return result, launches, kernel.unique_bytes + around.bytes, kernel.requested_bytes + around.bytes


def outputs_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> bool:
    """The bench's correctness gate: same count, each pair within rtol 1e-4, atol 1e-3 (in fp32)."""
    return len(got) == len(want) and all(
        torch.allclose(g.flatten().float(), w.flatten().float(), rtol=1e-4, atol=1e-3)
        for g, w in zip(got, want, strict=True)
    )


_COMPILED: dict[str, Callable] = {}


def compiled_naive(family: Family) -> Callable:
    """``torch.compile`` of the naive path, one per family, with dynamic shapes (one compile serves every size)."""
    if family.op not in _COMPILED:
        # the backward timings call autograd.grad repeatedly on one graph (retain_graph=True), which buffer donation
        # forbids; donation only saves memory, not time
        torch._functorch.config.donated_buffer = False
        _COMPILED[family.op] = torch.compile(family.naive, dynamic=True)
    return _COMPILED[family.op]


class Case:
    """One op at one shape: inputs, the reference outputs and gradients, and each provider's callables."""

    def __init__(self, family: Family, shape: EmbedShape, device: str = "cpu"):
        self.family, self.shape, self.device = family, shape, device
        self.inputs = make_inputs(family, shape, device=device)
        self.params = list(self.inputs.params.values())
        total = family.prompt_rows(shape) + shape.seq_len
        grad = torch.randn(shape.batch, total, shape.hidden, generator=torch.Generator().manual_seed(1))
        self.grad = grad.to(device)
        self.ref_out, self.ref_mask = family.naive(self.inputs)
        self.ref_grads = torch.autograd.grad(self.ref_out, self.params, self.grad, retain_graph=True)

    def forward_fn(self, provider: str) -> Callable:
        x = self.inputs
        if provider == "naive":
            return lambda: self.family.naive(x)
        if provider == "compiled":
            compiled = compiled_naive(self.family)
            return lambda: compiled(x)
        return lambda: self.family.ours(x, provider)

    def check(self, provider: str) -> bool:
        """Outputs, mask and every gradient of an autograd-running provider against the reference."""
        out, mask = self.forward_fn(provider)()
        grads = torch.autograd.grad(out, self.params, self.grad)
        return (
            outputs_close([out], [self.ref_out])
            and torch.equal(mask, self.ref_mask)
            and outputs_close(grads, self.ref_grads)
        )

    def timed(self, provider: str, mode: str) -> Callable:
        """What a timing of ``mode`` runs: the forward, the backward of a forward made beforehand, or both."""
        forward = self.forward_fn(provider)
        if mode == "forward":
            return forward
        if mode == "backward":
            out, _ = forward()
            return lambda: torch.autograd.grad(out, self.params, self.grad, retain_graph=True)
        return lambda: torch.autograd.grad(forward()[0], self.params, self.grad)


def provider_counts(case: Case, provider: str) -> dict[str, tuple[int | None, int | None, bool | None]]:
    """``{mode: (launches, bytes, correct)}``: forward and backward counted once each, ``full`` their sum.
    ``correct`` is the Triton kernels' own check (the autograd providers are checked by :meth:`Case.check`)."""
    family, x = case.family, case.inputs
    if provider == "compiled":
        return dict.fromkeys(MODES, (None, None, None))
    if provider in ("naive", "torch"):
        forward, _ = count_eager(case.forward_fn(provider))
        out, _ = case.forward_fn(provider)()
        backward, _ = count_eager(lambda: torch.autograd.grad(out, case.params, case.grad, retain_graph=True))
        counts = {"forward": (forward.launches, forward.bytes), "backward": (backward.launches, backward.bytes)}
        correct = {"forward": None, "backward": None}
    else:
        count = count_fused if interpreting() else _run_uncounted
        (out, mask), fwd_launches, fwd_bytes, _ = count(lambda: family.fused_forward(x))
        prepared = family.prepare_backward(x)
        grads, bwd_launches, bwd_bytes, _ = count(lambda: family.fused_backward(x, case.grad, prepared))
        if family.op == "adept_embed":
            from prompt_ops.ops.adept_embed import split_ffn_grads

            grads = (grads[0], *split_ffn_grads(grads[1], case.shape.hidden, case.shape.rank))
        counts = {"forward": (fwd_launches, fwd_bytes), "backward": (bwd_launches, bwd_bytes)}
        correct = {
            "forward": outputs_close([out], [case.ref_out]) and torch.equal(mask, case.ref_mask),
            "backward": outputs_close([g for g in grads if g is not None], list(case.ref_grads)),
        }
    result = {mode: (*counts[mode], correct[mode]) for mode in ("forward", "backward")}
    full_correct = None if correct["forward"] is None else correct["forward"] and correct["backward"]
    if counts["forward"][0] is None:
        result["full"] = (None, None, full_correct)
    else:
        result["full"] = (counts["forward"][0] + counts["backward"][0], counts["forward"][1] + counts["backward"][1],
                          full_correct)  # fmt: skip
    return result


def _run_uncounted(fn):
    """On a GPU the kernels run compiled: no interpreter to count them (the CPU bench's counts stand)."""
    return fn(), None, None, None


def peak_bandwidth(device: str) -> float:
    """Bytes/s the memory of CUDA ``device`` can move at most: double data rate x memory clock x bus width, from the
    device properties (H100 SXM: 2 x 2.619 GHz x 640 bytes = 3.35 TB/s); the H100's figure where torch does not
    report them."""
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else H100.hbm_bytes_per_s


def gpu_time(fn: Callable, ideal_bytes: int, device: str) -> dict[str, float]:
    """``triton.testing.do_bench`` median and 20/80 percentiles in ms (after its own warm-up), the effective
    bandwidth ``ideal_bytes / median`` and its share of the device's peak (:func:`peak_bandwidth`), and peak memory
    of one call."""
    import triton.testing

    median, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    gbps = ideal_bytes / (median * 1e-3) / 1e9
    return {
        "gpu_ms": median, "gpu_p20_ms": p20, "gpu_p80_ms": p80, "gbps": gbps,
        "peak_bandwidth_pct": 100 * gbps * 1e9 / peak_bandwidth(device),
        "peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 1e6,
        "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 1e6,
    }  # fmt: skip


_GPU_NOTES = {
    "compiled": "timed, not counted: inductor fuses the naive ops",
    "triton": "timed with do_bench; launches and bytes come from the CPU bench (the interpreter counts them)",
}
_NOTES = {
    "compiled": "timed, not counted: inductor's CPU loops are not kernel launches",
    "triton": "counted in the Triton interpreter; not timed (interpreter time is not kernel speed)",
}


def _ideal(family: Family, shape: EmbedShape, mode: str) -> int:
    forward = family.ideal_forward(shape) if mode in ("forward", "full") else 0
    return forward + (family.ideal_backward(shape) if mode in ("backward", "full") else 0)


def measure_case(
    op: str, shape: EmbedShape, modes=MODES, providers=PROVIDERS, repeat: int = 10, device: str = "cpu"
) -> list[Row]:
    """Every (provider, mode) row of ``op`` at ``shape``. A provider whose outputs or gradients differ from the
    reference is reported with ``correct=False`` and not timed."""
    family = FAMILIES[op]
    case = Case(family, shape, device)
    on_gpu = device.startswith("cuda")
    rows = []
    for provider in providers:
        correct, note = True, _NOTES.get(provider, "")
        if provider in ("compiled", "torch"):
            try:
                correct = case.check(provider)
            except Exception as err:  # a compile failure (no C++ compiler, an unsupported op) is reported, not fatal
                correct, note = False, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        counts = provider_counts(case, provider) if correct or provider == "triton" else {}
        for mode in modes:
            launches, total_bytes, kernel_correct = counts.get(mode, (None, None, None))
            row_correct = kernel_correct if provider == "triton" else correct
            flops = {"forward": 1, "backward": 2, "full": 3}[mode] * family.flops_forward(shape)
            row = Row(
                op=op, provider=provider, mode=mode, batch=shape.batch, seq_len=shape.seq_len, hidden=shape.hidden,
                num_prompt=family.prompt_rows(shape), rank=shape.rank, dtype="float32", device=device,
                correct=row_correct, launches=launches, bytes=total_bytes, ideal_bytes=_ideal(family, shape, mode),
                h100_us=None if launches is None else project_h100(total_bytes, flops, launches) * 1e6, note=note,
            )  # fmt: skip
            if row_correct and on_gpu:
                for key, value in gpu_time(case.timed(provider, mode), row.ideal_bytes, device).items():
                    setattr(row, key, value)
                row.note = _GPU_NOTES.get(provider, "")
            elif row_correct and provider != "triton":  # the Triton kernels run in the interpreter here: not timed
                timing = cpu_time(case.timed(provider, mode), repeat=repeat)
                row.cpu_ms, row.cpu_p20_ms, row.cpu_p80_ms = (timing[k] * 1e3 for k in ("median", "p20", "p80"))
            rows.append(row)
    return rows


@dataclasses.dataclass
class FoldRow:
    """ADePT inference with the FFN run per token vs folded into the table (prompt tuning's cost)."""

    batch: int
    unfolded_launches: int
    unfolded_bytes: int
    folded_launches: int
    folded_bytes: int
    unfolded_h100_us: float
    folded_h100_us: float
    cpu_unfolded_ms: float
    cpu_folded_ms: float
    outputs_match: bool


def measure_folding(shape: EmbedShape, repeat: int = 10) -> FoldRow:
    """Eval-mode ADePT, fused kernels counted and the torch backend timed, unfolded vs :meth:`ADePT.fold`."""
    embedding = torch.nn.Embedding(shape.vocab, shape.hidden)
    module = prompt_ops.ADePT(embedding, num_tokens=shape.num_prompt, rank=shape.rank, backend="torch").eval()
    with torch.no_grad():
        for p in (module.b_down, module.w_up, module.b_up):
            p.normal_(0, 0.05)
    folded = module.fold()
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq_len), generator=torch.Generator().manual_seed(2))
    ffn = [p.detach() for p in (module.prompt, module.w_down, module.b_down, module.w_up, module.b_up)]
    (out, _), unfolded_launches, unfolded_bytes, _ = count_fused(
        lambda: adept_kernels.adept_embed_fwd(ids, embedding.weight, *ffn, None, 0.0, 0)
    )
    (folded_out, _), folded_launches, folded_bytes, _ = count_fused(
        lambda: dept_kernels.dept_embed_fwd(ids, folded.embedding.weight, ffn[0], None, None, None, 0.0)
    )
    flops = 4 * shape.batch * shape.seq_len * shape.rank * shape.hidden
    with torch.no_grad():
        unfolded_time = cpu_time(lambda: module(ids), repeat=repeat)
        folded_time = cpu_time(lambda: folded(ids), repeat=repeat)
    return FoldRow(
        batch=shape.batch,
        unfolded_launches=unfolded_launches,
        unfolded_bytes=unfolded_bytes,
        folded_launches=folded_launches,
        folded_bytes=folded_bytes,
        unfolded_h100_us=project_h100(unfolded_bytes, flops, unfolded_launches) * 1e6,
        folded_h100_us=project_h100(folded_bytes, 0, folded_launches) * 1e6,
        cpu_unfolded_ms=unfolded_time["median"] * 1e3,
        cpu_folded_ms=folded_time["median"] * 1e3,
        outputs_match=torch.allclose(out, folded_out, rtol=1e-5, atol=1e-5),
    )
