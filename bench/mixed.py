"""Op-level bench of mixed-adapter batches (issue 14): one bank of prompt-tuning/DePT adapters, one adapter per row.

The fused op :func:`prompt_ops.ops.mixed_embed.mixed_dept_embed` against two baselines written here in plain eager
PyTorch (they are not part of ``prompt_ops``):

- ``peft_loop``: PEFT's way of mixing adapters in one batch (as it does for LoRA's ``adapter_names=``): a Python
  loop over the distinct adapters of the batch, each selecting its rows, running the single-adapter DePT path as the
  official code writes it (:func:`prompt_ops.ops.reference.dept_embed`, on the adapter's own unpadded tensors) and
  scattering the result back into the ``(B, m_max + L, d)`` output.
- ``vllm_gather``: vLLM's old prompt-adapter path: the prompts stacked in a zero-padded table, a per-token index
  built on the host at every call (numpy here, Python lists there), the embedding gathered for every column (the
  prompt columns hold placeholder ids), then a gather of table rows and a masked overwrite of the prompt columns.
  vLLM had no offsets of any kind; for DePT adapters this path adds them the same way: ``Q = s * bmm(A, B)`` for the
  whole bank, a host-built per-token index into its rows, a gather and a masked add. On a GPU the host-built indices
  and slot mask are three host-to-device copies per call, not counted here.

Providers ``torch`` (the op's eager backend) and both baselines are counted (:class:`prompt_ops.profiling.
EagerTraffic`, every aten op a launch) and timed on the CPU in alternating rounds; ``triton`` (the forward launcher,
row starts made beforehand as in the single-adapter bench) is counted under the interpreter and projected, never
timed. Forward only: serving is what mixes adapters, and vLLM's path has no backward.

Grid: B in {8, 64, 256}, a bank of n in {1, 2, 8, 32, B} adapters (n <= B), Punica's popularity patterns:
``identical`` (n = 1), ``distinct`` (n = B, every row its own adapter), ``uniform`` (the rows spread evenly over
the n adapters, in a seeded random order) and ``skewed`` (each row draws its adapter from a Zipf law, ``P(a) ~
1 / (a + 1)^1.5``, seed 0; at n = B too). Adapter ``a`` has prompt length ``PROMPT_LENGTHS[a % 4]`` and rank
``RANKS[a % 4]`` (so ``m_max = 60`` and ``r_max = 30``: DePT's defaults), ``A`` tables of ``L_max = 256`` rows and
``lora_alpha = 8``; L = 128, d = 768, fp32; row ``b`` has ``b % 4`` leading pads (the ``"tokens"`` convention).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bench.measure import Budget, count_eager, count_fused, outputs_close
from prompt_ops.kernels.runtime import interpreting
from prompt_ops.ops import reference
from prompt_ops.ops.mixed_embed import mixed_dept_embed
from prompt_ops.ops.positions import row_starts
from prompt_ops.profiling import interleaved_time, project_h100
from prompt_ops.profiling.ideal import mixed_dept_embed_forward_bytes

PROMPT_LENGTHS = (60, 10, 40, 20)
RANKS = (30, 4, 16, 8)
LORA_ALPHA = 8.0
ZIPF_EXPONENT = 1.5
PATTERNS = ("identical", "uniform", "skewed", "distinct")
PROVIDERS = ("peft_loop", "vllm_gather", "torch", "triton")
EAGER = ("peft_loop", "vllm_gather", "torch")
BATCHES = (8, 64, 256)
BANK_SIZES = (1, 2, 8, 32)  # and n = B
BUDGET = Budget(forward_launches=1, backward_launches=5, forward_bytes_over_ideal=1.1)
"""The fused mixed op's regression guard: one forward launch within 1.1x of the ideal bytes; backward one launch
plus two ``bmm`` and their two in-place scalings (``tests/test_bench_mixed.py``)."""


@dataclasses.dataclass(frozen=True)
class MixedShape:
    batch: int
    adapters: int  # n: the bank's size, the adapters the batch draws from
    pattern: str
    seq_len: int = 128
    hidden: int = 768
    max_length: int = 256
    vocab: int = 32128


def setup() -> dict:
    """What the report states about the grid (stored in the payload beside the rows)."""
    return {
        "prompt_lengths": list(PROMPT_LENGTHS),
        "ranks": list(RANKS),
        "max_length": MixedShape(1, 1, "identical").max_length,
        "lora_alpha": LORA_ALPHA,
        "zipf_exponent": ZIPF_EXPONENT,
        "triton_counted": "B <= 64 with every pattern, B = 256 with distinct only",
    }


def triton_counted(shape: MixedShape) -> bool:
    """The shapes whose Triton launch is counted in the interpreter (about 25 s a launch at B = 256): B <= 64 with
    every pattern, B = 256 with ``distinct`` only (the most bank traffic)."""
    return shape.batch <= 64 or shape.pattern == "distinct"


def grid(batches=BATCHES, bank_sizes=BANK_SIZES) -> list[MixedShape]:
    """Every (B, n, pattern): ``identical`` at n = 1, ``uniform`` and ``skewed`` at 1 < n < B, ``skewed`` and
    ``distinct`` at n = B (uniform over B adapters is distinct)."""
    shapes = []
    for batch in batches:
        for n in sorted({*(n for n in bank_sizes if n <= batch), batch}):
            patterns = ("identical",) if n == 1 else ("skewed", "distinct") if n == batch else ("uniform", "skewed")
            shapes += [MixedShape(batch, n, pattern) for pattern in patterns]
    return shapes


def adapter_assignment(batch: int, adapters: int, pattern: str, seed: int = 0) -> torch.Tensor:
    """``(B,)`` int64: each row's adapter under the popularity ``pattern`` (module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    if pattern == "identical":
        return torch.zeros(batch, dtype=torch.int64)
    if pattern == "distinct":
        if adapters != batch:
            raise ValueError(f"pattern 'distinct' needs adapters = batch = {batch}, got {adapters}")
        return torch.randperm(batch, generator=generator)
    if pattern == "uniform":
        return (torch.arange(batch) % adapters)[torch.randperm(batch, generator=generator)]
    if pattern == "skewed":
        weights = 1.0 / torch.arange(1, adapters + 1, dtype=torch.float64) ** ZIPF_EXPONENT
        return torch.multinomial(weights, batch, replacement=True, generator=generator)
    raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")


@dataclasses.dataclass
class MixedInputs:
    """A batch over a zero-padded bank, plus what the PEFT loop keeps on the host per adapter (its unpadded sizes and
    scale, as PEFT holds them in each adapter's config)."""

    input_ids: torch.Tensor
    weight: torch.Tensor
    attention_mask: torch.Tensor
    starts: torch.Tensor  # (B,) the "tokens" row starts, made beforehand for the launcher
    adapter_index: torch.Tensor
    prompts: torch.Tensor  # (N, m_max, d)
    prompt_lengths: torch.Tensor  # (N,)
    lora_a: torch.Tensor  # (N, L_max, r_max)
    lora_b: torch.Tensor  # (N, r_max, d)
    scales: torch.Tensor  # (N,) fp32
    max_lengths: torch.Tensor  # (N,) every adapter's L_a = L_max
    lengths: list[int]  # host copies: m_a, r_a, s_a of each adapter
    ranks: list[int]
    scale_values: list[float]


def make_inputs(shape: MixedShape, seed: int = 0) -> MixedInputs:
    """Random inputs at a trained-looking scale; the bank's padding zero."""
    generator = torch.Generator().manual_seed(seed)
    n, hidden = shape.adapters, shape.hidden
    lengths = [PROMPT_LENGTHS[a % 4] for a in range(n)]
    ranks = [RANKS[a % 4] for a in range(n)]
    slots, rank = max(lengths), max(ranks)
    prompts = torch.zeros(n, slots, hidden)
    lora_a = torch.zeros(n, shape.max_length, rank)
    lora_b = torch.zeros(n, rank, hidden)
    for a, (m, r) in enumerate(zip(lengths, ranks, strict=True)):
        prompts[a, :m] = torch.randn(m, hidden, generator=generator) / m**0.5
        lora_a[a, :, :r] = torch.randn(shape.max_length, r, generator=generator) / shape.max_length**0.5
        lora_b[a, :r] = torch.randn(r, hidden, generator=generator) / r**0.5
    scale_values = [LORA_ALPHA / r**0.5 for r in ranks]
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq_len), generator=generator)
    mask = torch.ones(shape.batch, shape.seq_len, dtype=torch.int64)
    pads = torch.arange(shape.batch) % 4
    mask[torch.arange(shape.seq_len)[None, :] < pads.clamp(max=shape.seq_len - 1)[:, None]] = 0
    return MixedInputs(
        input_ids=ids, weight=torch.randn(shape.vocab, hidden, generator=generator), attention_mask=mask,
        starts=row_starts(mask, "tokens"), adapter_index=adapter_assignment(shape.batch, n, shape.pattern, seed),
        prompts=prompts, prompt_lengths=torch.tensor(lengths), lora_a=lora_a, lora_b=lora_b,
        scales=torch.tensor(scale_values, dtype=torch.float32), max_lengths=torch.full((n,), shape.max_length),
        lengths=lengths, ranks=ranks, scale_values=scale_values,
    )  # fmt: skip


def peft_loop(x: MixedInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT-style: per distinct adapter (grouped on the host), its rows through the single-adapter path, scattered
    back behind the ``m_max - m_a`` zero slots."""
    batch, seq_len = x.input_ids.shape
    slots = x.prompts.shape[1]
    out = x.weight.new_zeros((batch, slots + seq_len, x.weight.shape[1]))
    mask = x.attention_mask.new_zeros((batch, slots + seq_len))
    rows_of: dict[int, list[int]] = {}
    for row, adapter in enumerate(x.adapter_index.tolist()):
        rows_of.setdefault(adapter, []).append(row)
    for adapter, rows in rows_of.items():
        index = torch.tensor(rows, device=x.input_ids.device)
        m, r, table = x.lengths[adapter], x.ranks[adapter], int(x.max_lengths[adapter])
        embeds, sub_mask = reference.dept_embed(
            x.input_ids[index], x.weight, x.prompts[adapter, :m], x.lora_a[adapter, :table, :r],
            x.lora_b[adapter, :r], x.scale_values[adapter], x.attention_mask[index], "tokens",
        )  # fmt: skip
        out[index, slots - m :] = embeds
        mask[index, slots - m :] = sub_mask
    return out, mask


def _host_indices(x: MixedInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vLLM's per-token indices, built on the host: for every column of every row, the row of the flattened prompt
    table it shows (or -1) and the row of the flattened ``Q`` table it adds (or -1), and the slot mask. Slot ``c``
    of a row of adapter ``a`` shows table row ``(c + m_a) % m_max``: a zero padding row in front of the prompt,
    then the prompt's rows."""
    adapters = x.adapter_index.cpu().numpy()
    lengths = x.prompt_lengths.cpu().numpy()[adapters]
    pads = np.argmax(x.attention_mask.cpu().numpy() != 0, axis=1)  # "tokens": positions from the first real token
    slots, table = x.prompts.shape[1], x.lora_a.shape[1]
    batch, seq_len = x.input_ids.shape
    column = np.arange(slots)[None, :]
    prompt_rows = adapters[:, None] * slots + (column + lengths[:, None]) % slots  # (B, m_max)
    position = np.arange(seq_len)[None, :] - pads[:, None]  # (B, L)
    reach = x.max_lengths.cpu().numpy()[adapters][:, None]
    q_rows = np.where((position >= 0) & (position < reach), adapters[:, None] * table + position, -1)
    prompt_index = np.concatenate([prompt_rows, np.full((batch, seq_len), -1)], axis=1).reshape(-1)
    q_index = np.concatenate([np.full((batch, slots), -1), q_rows], axis=1).reshape(-1)
    return prompt_index, q_index, column >= slots - lengths[:, None]


def vllm_gather(x: MixedInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM-style: embed every column (placeholder id 0 on the prompt columns), overwrite the prompt columns with
    table rows by a host-built per-token index, then add DePT's offsets by the same gather of ``Q`` rows."""
    device, hidden = x.input_ids.device, x.weight.shape[1]
    prompt_index, q_index, slot_mask = (torch.from_numpy(a).to(device) for a in _host_indices(x))
    batch, slots = slot_mask.shape
    ids = torch.cat([x.input_ids.new_zeros((batch, slots)), x.input_ids], dim=1)
    embeds = torch.nn.functional.embedding(ids, x.weight).view(-1, hidden)  # (B * (m_max + L), d)
    shown = prompt_index != -1
    embeds[shown] = x.prompts.reshape(-1, hidden)[prompt_index[shown]]
    q = torch.bmm(x.lora_a, x.lora_b) * x.scales[:, None, None]  # (N, L_max, d), the whole bank at every call
    offset = q_index != -1
    embeds[offset] += q.reshape(-1, hidden)[q_index[offset]]
    mask = torch.cat([slot_mask.to(x.attention_mask.dtype), x.attention_mask], dim=1)
    return embeds.view(batch, slots + x.input_ids.shape[1], hidden), mask


def ours(x: MixedInputs, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The op as the bank calls it (``max_lengths`` given), data checks off: a server validates its bank once."""
    return mixed_dept_embed(
        x.input_ids, x.weight, x.prompts, x.prompt_lengths, x.lora_a, x.lora_b, x.scales, x.adapter_index,
        attention_mask=x.attention_mask, backend=backend, check_ids=False, max_lengths=x.max_lengths,
    )  # fmt: skip


def fused_forward(x: MixedInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward launcher alone (row starts made beforehand)."""
    from prompt_ops.kernels.mixed_embed import mixed_embed_fwd_triton

    return mixed_embed_fwd_triton(
        x.input_ids, x.weight, x.prompts, x.prompt_lengths, x.lora_a, x.lora_b, x.scales, x.adapter_index,
        x.attention_mask, x.starts, x.max_lengths,
    )  # fmt: skip


def run(x: MixedInputs, provider: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of ``provider`` (see :data:`PROVIDERS`)."""
    if provider == "peft_loop":
        return peft_loop(x)
    if provider == "vllm_gather":
        return vllm_gather(x)
    if provider == "torch":
        return ours(x, "torch")
    if provider == "triton":
        return fused_forward(x)
    raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")


def ideal_bytes(x: MixedInputs) -> int:
    """:func:`mixed_dept_embed_forward_bytes` of the adapters the batch uses, each reaching the ``A`` rows of its
    rows' real tokens (``L`` minus the fewest leading pads among its rows)."""
    batch, seq_len = x.input_ids.shape
    used = sorted(set(x.adapter_index.tolist()))
    reach = [seq_len + int(x.starts[x.adapter_index == a].max()) for a in used]  # starts are -pads
    return mixed_dept_embed_forward_bytes(
        batch, seq_len, x.prompts.shape[1], x.weight.shape[1], [x.lengths[a] for a in used],
        [x.ranks[a] for a in used], [min(j, int(x.max_lengths[a])) for j, a in zip(reach, used, strict=True)],
        row_starts=True, max_lengths=True,
    )  # fmt: skip


@dataclasses.dataclass
class MixedRow:
    """One (shape, provider) forward measurement. ``None`` marks what is not measured (see ``note``)."""

    batch: int
    adapters: int  # the bank's size n
    present: int  # distinct adapters in the batch
    pattern: str
    seq_len: int
    hidden: int
    num_slots: int  # m_max
    provider: str
    correct: bool | None
    launches: int | None
    bytes: int | None
    ideal_bytes: int
    h100_us: float | None  # projection, not a measurement
    cpu_ms: float | None = None
    cpu_p20_ms: float | None = None
    cpu_p80_ms: float | None = None
    note: str = ""


_NOTES = {
    "triton": "counted in the Triton interpreter; not timed (interpreter time is not kernel speed)",
    "vllm_gather": "host-built indices: 3 host-to-device copies per call on a GPU, not counted",
}


def _triton_flops(x: MixedInputs) -> int:
    """An upper bound of the fused forward's flops: every token's offset over all ``r_max`` ranks."""
    batch, seq_len = x.input_ids.shape
    return 2 * batch * seq_len * x.lora_a.shape[2] * x.weight.shape[1]


def measure_mixed(shape: MixedShape, providers=PROVIDERS, repeat: int = 5, count_triton: bool | None = None):
    """Every provider's forward row at ``shape``, each checked against :func:`reference.mixed_dept_embed` (a
    provider that differs is reported with ``correct=False`` and not timed). ``count_triton``: None follows
    :func:`triton_counted`; the launch is counted only under the interpreter."""
    x = make_inputs(shape)
    with torch.no_grad():
        want = reference.mixed_dept_embed(
            x.input_ids, x.weight, x.prompts, x.prompt_lengths, x.lora_a, x.lora_b, x.scales, x.adapter_index,
            attention_mask=x.attention_mask,
        )  # fmt: skip
        ideal = ideal_bytes(x)
        common = {"batch": shape.batch, "adapters": shape.adapters, "present": len(set(x.adapter_index.tolist())),
                  "pattern": shape.pattern, "seq_len": shape.seq_len, "hidden": shape.hidden,
                  "num_slots": x.prompts.shape[1], "ideal_bytes": ideal}  # fmt: skip
        rows, timed = [], []
        for provider in providers:
            row = MixedRow(provider=provider, correct=None, launches=None, bytes=None, h100_us=None,
                           note=_NOTES.get(provider, ""), **common)  # fmt: skip
            if provider == "triton":
                counted = triton_counted(shape) if count_triton is None else count_triton
                if counted and interpreting():
                    got, row.launches, row.bytes, _ = count_fused(lambda: fused_forward(x))
                    flops = _triton_flops(x)
                elif counted:
                    got, row.note = None, "not counted: no Triton interpreter here (the CPU bench counts it)"
                else:
                    got, row.note = None, "not counted at this shape (see bench.mixed.triton_counted)"
            else:
                got = run(x, provider)
                traffic, flops = count_eager(lambda p=provider: run(x, p))
                row.launches, row.bytes = traffic.launches, traffic.bytes
            if got is not None:
                row.correct = outputs_close([got[0]], [want[0]]) and torch.equal(got[1], want[1])
                row.h100_us = project_h100(row.bytes, flops, row.launches) * 1e6
            if row.correct and provider in EAGER:
                timed.append(row)
            rows.append(row)
        if timed:
            fns = [lambda p=row.provider: run(x, p) for row in timed]
            # each provider has run twice above (result, count): one warm-up round is enough
            for row, timing in zip(timed, interleaved_time(fns, repeat=repeat, warmup=1), strict=True):
                row.cpu_ms, row.cpu_p20_ms, row.cpu_p80_ms = (timing[k] * 1e3 for k in ("median", "p20", "p80"))
    return rows
