"""Shared test helpers: input builders and dtype-aware comparisons (tolerances from DESIGN.md §4)."""

from __future__ import annotations

import dataclasses

import torch

from prompt_ops.ops import reference

LOW_PRECISION = (torch.float16, torch.bfloat16)


def random_mask(batch: int, seq_len: int, dtype_name: str | None, device: str | None) -> torch.Tensor | None:
    """A ``(B, L)`` attention mask with about 30% zeros in the named dtype, or None."""
    if dtype_name is None:
        return None
    return (torch.rand(batch, seq_len, device=device) > 0.3).to(getattr(torch, dtype_name))


def padded_mask(lengths: list[int], seq_len: int, side: str) -> torch.Tensor:
    """``(B, L)`` int64 ones over each row's ``lengths[b]`` real tokens, zeros on the ``side`` padding."""
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.int64)
    for row, length in enumerate(lengths):
        if side == "left":
            mask[row, seq_len - length :] = 1
        else:
            mask[row, :length] = 1
    return mask


def assert_deterministic(run, params: list[torch.Tensor], grad: torch.Tensor) -> None:
    """Two runs of ``run() -> (out, mask)`` give bitwise the same outputs and parameter gradients."""
    runs = []
    for _ in range(2):
        out, mask = run()
        runs.append((out, mask, *torch.autograd.grad(out, params, grad)))
    for first, second in zip(*runs, strict=True):
        assert torch.equal(first, second)


def tolerances(dtype: torch.dtype, dot: bool = False) -> dict[str, float]:
    """DESIGN.md §4: fp32 ``1e-5`` (``1e-4`` where a dot is involved); fp16/bf16 ``rtol=1.6e-2, atol=1e-2``."""
    if dtype in LOW_PRECISION:
        return {"rtol": 1.6e-2, "atol": 1e-2}
    return {"rtol": 1e-4, "atol": 1e-4} if dot else {"rtol": 1e-5, "atol": 1e-5}


def assert_reduction_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, msg: str = ""):
    """Compare the result of a long reduction (a gradient summed over a batch and a sequence, a matmul over ``d``)
    with a scale-aware tolerance: ``|actual - expected| <= atol * max(1, rms(expected)) + rtol * |expected|``.

    fp32 sums taken in another order (torch's CPU kernels add differently under ``ATEN_CPU_CAPABILITY=default``,
    ``avx2`` and ``avx512``) differ by a few ulps of the partial sums, which are of the tensor's overall scale, not
    of each element's own value: an element that is the small difference of large terms carries an error far above
    ``atol`` when the gradient's entries reach hundreds. Scaling ``atol`` by the reference's root-mean-square (as
    flash-linear-attention relates the error to the reference's norm) keeps DESIGN.md §4's numbers meaningful and
    the same on every CPU: a wrong kernel (a dropped term, a missed batch row, a wrong scale, one wrong row) errs by
    a sizeable fraction of that scale and still fails. For tensors of rms <= 1 this is exactly
    ``torch.testing.assert_close`` with the given tolerances."""
    actual, expected = actual.detach().float(), expected.detach().float()
    rms = float(expected.square().mean().sqrt()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * max(1.0, rms), msg=msg or None)


def assert_grads_close(
    got: list[torch.Tensor] | tuple[torch.Tensor, ...],
    want: list[torch.Tensor] | tuple[torch.Tensor, ...],
    names: list[str] | tuple[str, ...] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> None:
    """Every parameter gradient against the reference's, scale-aware (:func:`assert_reduction_close`), named in the
    failure message. The default is DESIGN.md §4's fp32 tolerance with a dot; pass ``**tolerances(dtype, dot)``
    for others."""
    assert len(got) == len(want), f"{len(got)} gradients against {len(want)} expected"
    names = names if names is not None else [f"parameter {i}" for i in range(len(want))]
    for name, actual, expected in zip(names, got, want, strict=True):
        assert actual.shape == expected.shape, f"grad of {name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        assert_reduction_close(actual, expected, rtol=rtol, atol=atol, msg=f"grad of {name}")


@dataclasses.dataclass
class EmbedCase:
    """Inputs of one prompt_embed / dept_embed call (``rank=0``: no offset)."""

    input_ids: torch.Tensor
    weight: torch.Tensor
    prompt: torch.Tensor
    lora_a: torch.Tensor | None
    lora_b: torch.Tensor | None
    attention_mask: torch.Tensor | None
    scale: float

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p in (self.prompt, self.lora_a, self.lora_b) if p is not None]

    def reference(self):
        """Reference ``(out, mask, params)`` on fresh leaf copies of the parameters, so that its gradients can be
        taken separately. A fp16/bf16 table is upcast: the reference is computed in fp32 from the same inputs."""
        weight = self.weight.float() if self.weight.dtype in LOW_PRECISION else self.weight
        params = [p.detach().clone().requires_grad_(True) for p in self.params]
        prompt = params[0]
        lora_a, lora_b = (params[1], params[2]) if self.lora_a is not None else (None, None)
        out, mask = reference.dept_embed(
            self.input_ids, weight, prompt, lora_a, lora_b, self.scale, self.attention_mask
        )
        return out, mask, params


def make_case(
    batch: int,
    seq_len: int,
    num_prompt: int,
    hidden: int,
    rank: int,
    *,
    vocab: int = 50,
    max_length: int | None = None,
    dtype: torch.dtype = torch.float32,
    mask: str | None = "int64",
    ids_dtype: torch.dtype = torch.int64,
    device: str | None = None,
    param_dtype: torch.dtype = torch.float32,
) -> EmbedCase:
    """Random inputs; ``mask`` is a dtype name or None. Parameters are fp32 leaves that require grad."""
    max_length = max_length if max_length is not None else seq_len + 3
    ids = torch.randint(0, vocab, (batch, seq_len), dtype=ids_dtype, device=device)
    weight = torch.randn(vocab, hidden, device=device).to(dtype)
    prompt = torch.randn(num_prompt, hidden, device=device, dtype=param_dtype, requires_grad=True)
    lora_a = lora_b = None
    if rank:
        lora_a = torch.randn(max_length, rank, device=device, dtype=param_dtype, requires_grad=True)
        lora_b = (0.3 * torch.randn(rank, hidden, device=device, dtype=param_dtype)).requires_grad_(True)
    attention_mask = random_mask(batch, seq_len, mask, device)
    return EmbedCase(ids, weight, prompt, lora_a, lora_b, attention_mask, 0.73 if rank else 0.0)


def run_public(case: EmbedCase, backend: str):
    """Call the public entry for the case."""
    import prompt_ops

    if case.lora_a is None:
        return prompt_ops.prompt_embed(
            case.input_ids, case.weight, case.prompt, attention_mask=case.attention_mask, backend=backend
        )
    return prompt_ops.dept_embed(
        case.input_ids,
        case.weight,
        case.prompt,
        case.lora_a,
        case.lora_b,
        scale=case.scale,
        attention_mask=case.attention_mask,
        backend=backend,
    )


def grads_of(out: torch.Tensor, grad: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, params, grad))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, dot: bool = False, msg=""):
    """Outputs at DESIGN.md §4's tolerances for ``dtype``; with ``dot`` (a matmul over ``d`` or ``r`` inside) the
    fp32 comparison is scale-aware, since the summation order of that dot depends on the CPU."""
    if dot and dtype not in LOW_PRECISION:
        assert_reduction_close(actual, expected, **tolerances(dtype, dot), msg=msg)
        return
    torch.testing.assert_close(actual.float(), expected.float(), **tolerances(dtype, dot), msg=msg or None)


@dataclasses.dataclass
class AdeptCase:
    """Inputs of one adept_embed call; FFN parameters moved off their zero init so every path is exercised."""

    input_ids: torch.Tensor
    weight: torch.Tensor
    prompt: torch.Tensor
    w_down: torch.Tensor
    b_down: torch.Tensor
    w_up: torch.Tensor
    b_up: torch.Tensor
    attention_mask: torch.Tensor | None

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.prompt, self.w_down, self.b_down, self.w_up, self.b_up]

    def run(self, backend: str, **kwargs):
        import prompt_ops

        return prompt_ops.adept_embed(
            self.input_ids, self.weight, *self.params, attention_mask=self.attention_mask, backend=backend, **kwargs
        )

    def reference(self, dropout_scale: torch.Tensor | None = None):
        """Reference ``(out, mask, params)`` on fresh leaf copies, fp32 table for fp16/bf16 (as ``EmbedCase``)."""
        weight = self.weight.float() if self.weight.dtype in LOW_PRECISION else self.weight
        params = [p.detach().clone().requires_grad_(True) for p in self.params]
        out, mask = reference.adept_embed(
            self.input_ids, weight, *params, attention_mask=self.attention_mask, dropout_scale=dropout_scale
        )
        return out, mask, params


def make_adept_case(
    batch: int,
    seq_len: int,
    num_prompt: int,
    hidden: int,
    rank: int,
    *,
    vocab: int = 50,
    dtype: torch.dtype = torch.float32,
    mask: str | None = "int64",
    device: str | None = None,
    param_dtype: torch.dtype = torch.float32,
) -> AdeptCase:
    def param(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device=device, dtype=param_dtype)).requires_grad_(True)

    ids = torch.randint(0, vocab, (batch, seq_len), device=device)
    weight = torch.randn(vocab, hidden, device=device).to(dtype)
    attention_mask = random_mask(batch, seq_len, mask, device)
    return AdeptCase(
        ids,
        weight,
        param(num_prompt, hidden),
        param(hidden, rank, scale=hidden**-0.5),
        param(rank, scale=0.5),
        param(rank, hidden, scale=hidden**-0.5),
        param(hidden, scale=0.5),
        attention_mask,
    )


@dataclasses.dataclass
class LampCase:
    """Inputs of one lamp_embed call, with SVD-like factor scales (orthonormal-ish u, v; singular values ~ 1-5)."""

    input_ids: torch.Tensor
    weight: torch.Tensor
    u: torch.Tensor
    q: torch.Tensor
    v: torch.Tensor
    pool: int
    attention_mask: torch.Tensor | None

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.u, self.q, self.v]

    def run(self, backend: str):
        import prompt_ops

        return prompt_ops.lamp_embed(
            self.input_ids, self.weight, *self.params, pool=self.pool, attention_mask=self.attention_mask,
            backend=backend,
        )  # fmt: skip

    def reference(self):
        weight = self.weight.float() if self.weight.dtype in LOW_PRECISION else self.weight
        params = [p.detach().clone().requires_grad_(True) for p in self.params]
        out, mask = reference.lamp_embed(self.input_ids, weight, *params, self.pool, self.attention_mask)
        return out, mask, params


def make_lamp_case(
    batch: int,
    seq_len: int,
    rows: int,
    hidden: int,
    rank: int,
    pool: int,
    *,
    vocab: int = 50,
    dtype: torch.dtype = torch.float32,
    mask: str | None = "int64",
    device: str | None = None,
    param_dtype: torch.dtype = torch.float32,
) -> LampCase:
    def param(tensor):
        return tensor.to(param_dtype).requires_grad_(True)

    ids = torch.randint(0, vocab, (batch, seq_len), device=device)
    weight = torch.randn(vocab, hidden, device=device).to(dtype)
    attention_mask = random_mask(batch, seq_len, mask, device)
    return LampCase(
        ids,
        weight,
        param(torch.randn(rows, rank, device=device) / rows**0.5),
        param(1 + 4 * torch.rand(rank, device=device)),
        param(torch.randn(rank, hidden, device=device) / hidden**0.5),
        pool,
        attention_mask,
    )


EPT_NAMES = ("prompt", "lora_a", "lora_b", "w_down", "w_up", "w_gate", "b_gate")


@dataclasses.dataclass
class EptCase:
    """Inputs of one ept_embed call, every parameter away from its init so that every path carries signal."""

    input_ids: torch.Tensor
    weight: torch.Tensor
    params: list[torch.Tensor]  # in EPT_NAMES order
    scale: float
    attention_mask: torch.Tensor | None

    def run(self, backend: str):
        import prompt_ops

        return prompt_ops.ept_embed(
            self.input_ids, self.weight, *self.params, scale=self.scale, attention_mask=self.attention_mask,
            backend=backend,
        )  # fmt: skip

    def reference(self):
        weight = self.weight.float() if self.weight.dtype in LOW_PRECISION else self.weight
        params = [p.detach().clone().requires_grad_(True) for p in self.params]
        out, mask = reference.ept_embed(self.input_ids, weight, *params, self.scale, self.attention_mask)
        return out, mask, params


def make_ept_case(
    batch: int,
    seq_len: int,
    num_prompt: int,
    hidden: int,
    rank: int,
    subspaces: int,
    sub_rank: int,
    *,
    max_length: int | None = None,
    vocab: int = 50,
    dtype: torch.dtype = torch.float32,
    mask: str | None = "int64",
    device: str | None = None,
    param_dtype: torch.dtype = torch.float32,
) -> EptCase:
    max_length = max_length if max_length is not None else seq_len + 3

    def param(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device=device)).to(param_dtype).requires_grad_(True)

    params = [
        param(num_prompt, hidden),
        param(max_length, rank, scale=rank**-0.5),
        param(rank, hidden, scale=0.5),
        param(subspaces, hidden, sub_rank, scale=hidden**-0.5),
        param(subspaces, sub_rank, hidden, scale=sub_rank**-0.5),
        param(hidden, subspaces, scale=hidden**-0.5),
        param(subspaces),
    ]
    attention_mask = random_mask(batch, seq_len, mask, device)
    ids = torch.randint(0, vocab, (batch, seq_len), device=device)
    weight = torch.randn(vocab, hidden, device=device).to(dtype)
    return EptCase(ids, weight, params, 1.1, attention_mask)


@dataclasses.dataclass
class MixedBankCase:
    """Inputs of one mixed_dept_embed call shared by the kernel and op tests: a zero-padded bank (``lora_a`` and
    ``lora_b`` None for a prompt-only bank) and a batch over it (``adapter_index`` per row, ``-1``: base model)."""

    input_ids: torch.Tensor
    weight: torch.Tensor
    prompts: torch.Tensor
    prompt_lengths: torch.Tensor
    lora_a: torch.Tensor | None
    lora_b: torch.Tensor | None
    scales: torch.Tensor
    adapter_index: torch.Tensor
    attention_mask: torch.Tensor | None

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p in (self.prompts, self.lora_a, self.lora_b) if p is not None]

    def reference_at(self, positions, slots: str):
        """Reference ``(out, mask, params)`` at ``positions`` in layout ``slots``, on fresh leaf copies of the
        parameters; a fp16/bf16 table is upcast (the reference in fp32 from the same inputs, DESIGN.md §4)."""
        weight = self.weight.float() if self.weight.dtype in LOW_PRECISION else self.weight
        params = [p.detach().clone().requires_grad_(True) for p in self.params]
        pair = (params[1], params[2]) if self.lora_a is not None else (None, None)
        out, mask = reference.mixed_dept_embed(
            self.input_ids, weight, params[0], self.prompt_lengths, *pair, self.scales, self.adapter_index,
            attention_mask=self.attention_mask, positions=positions, slots=slots,
        )  # fmt: skip
        return out, mask, params


def random_bank(
    sizes: list[tuple[int, int, int]],
    hidden: int,
    scale,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prompts, lora_a, lora_b, scales)`` of a zero-padded bank of random adapters, ``sizes`` each adapter's
    ``(m_a, L_a, r_a)`` (``r_a = 0``: prompt tuning, zero factors and scale 0); ``scale(a, r_a)`` gives the scale of
    a DePT adapter. Plain tensors (no grad); ``scales`` fp32."""
    num = len(sizes)
    num_slots, max_length, rank = (max(size[i] for size in sizes) for i in range(3))
    prompts = torch.zeros(num, num_slots, hidden, dtype=dtype, device=device)
    lora_a = torch.zeros(num, max_length, rank, dtype=dtype, device=device)
    lora_b = torch.zeros(num, rank, hidden, dtype=dtype, device=device)
    scales = torch.zeros(num, device=device)
    for a, (m, length, r) in enumerate(sizes):
        prompts[a, :m] = torch.randn(m, hidden, dtype=dtype, device=device)
        if r:
            lora_a[a, :length, :r] = torch.randn(length, r, dtype=dtype, device=device)
            lora_b[a, :r] = 0.3 * torch.randn(r, hidden, dtype=dtype, device=device)
            scales[a] = scale(a, r)
    return prompts, lora_a, lora_b, scales


ADEPT_BANK_NAMES = ("prompts", "w_down", "b_down", "w_up", "b_up")


@dataclasses.dataclass
class MixedAdeptCase:
    """Inputs of one mixed_adept_embed call shared by the kernel and op tests: a zero-padded bank of ADePT adapters
    (``sizes`` each adapter's ``(m_a, r_a)``) and a batch over it (``adapter_index`` per row, ``-1``: base model)."""

    input_ids: torch.Tensor
    weight: torch.Tensor
    prompts: torch.Tensor
    prompt_lengths: torch.Tensor
    w_down: torch.Tensor
    b_down: torch.Tensor
    w_up: torch.Tensor
    b_up: torch.Tensor
    adapter_index: torch.Tensor
    attention_mask: torch.Tensor | None
    sizes: list[tuple[int, int]]
    slots: str = "front"

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.prompts, self.w_down, self.b_down, self.w_up, self.b_up]

    def args(self, params=None) -> tuple:
        """The positional arguments of ``mixed_adept_embed`` (``params`` in place of the bank's, if given)."""
        prompts, w_down, b_down, w_up, b_up = params if params is not None else self.params
        return (self.input_ids, self.weight, prompts, self.prompt_lengths, w_down, b_down, w_up, b_up,
                self.adapter_index)  # fmt: skip

    def reference(self, dropout_scale: torch.Tensor | None = None):
        """Reference ``(out, mask, params)`` on fresh leaf copies; a fp16/bf16 table is upcast (DESIGN.md §4)."""
        weight = self.weight.float() if self.weight.dtype in LOW_PRECISION else self.weight
        params = [p.detach().clone().requires_grad_(True) for p in self.params]
        out, mask = reference.mixed_adept_embed(
            self.input_ids, weight, params[0], self.prompt_lengths, *params[1:], self.adapter_index,
            attention_mask=self.attention_mask, slots=self.slots, dropout_scale=dropout_scale,
        )  # fmt: skip
        return out, mask, params

    def padding(self) -> list[torch.Tensor]:
        """Boolean masks of the bank's padding, one per parameter: prompt rows ``>= m_a``, ranks ``>= r_a``."""
        num_slots, rank = self.prompts.shape[1], self.w_down.shape[2]
        lengths = torch.tensor([m for m, _ in self.sizes])
        ranks = torch.tensor([r for _, r in self.sizes])
        padded_rank = torch.arange(rank)[None, :] >= ranks[:, None]  # (N, R)
        masks = [
            (torch.arange(num_slots)[None, :] >= lengths[:, None])[:, :, None],
            padded_rank[:, None, :],
            padded_rank,
            padded_rank[:, :, None],
            torch.zeros(self.b_up.shape, dtype=torch.bool),
        ]
        return [mask.to(p.device).expand_as(p) for mask, p in zip(masks, self.params, strict=True)]


def make_mixed_adept_case(
    sizes: list[tuple[int, int]],
    adapter_index: list[int],
    seq_len: int,
    *,
    hidden: int = 11,
    vocab: int = 40,
    mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    param_dtype: torch.dtype = torch.float32,
    device: str | None = None,
    slots: str = "front",
) -> MixedAdeptCase:
    """A zero-padded bank of random ADePT adapters (``sizes``: ``(m_a, r_a)`` each; parameters are leaves that
    require grad, every FFN tensor off its zero init) and a batch of ``len(adapter_index)`` rows over it."""
    num = len(sizes)
    num_slots, rank = (max(size[i] for size in sizes) for i in range(2))
    bank = [
        torch.zeros(num, num_slots, hidden, dtype=param_dtype, device=device),
        torch.zeros(num, hidden, rank, dtype=param_dtype, device=device),
        torch.zeros(num, rank, dtype=param_dtype, device=device),
        torch.zeros(num, rank, hidden, dtype=param_dtype, device=device),
        0.5 * torch.randn(num, hidden, dtype=param_dtype, device=device),
    ]
    for a, (m, r) in enumerate(sizes):
        bank[0][a, :m] = torch.randn(m, hidden, dtype=param_dtype, device=device)
        bank[1][a, :, :r] = hidden**-0.5 * torch.randn(hidden, r, dtype=param_dtype, device=device)
        bank[2][a, :r] = 0.5 * torch.randn(r, dtype=param_dtype, device=device)
        bank[3][a, :r] = hidden**-0.5 * torch.randn(r, hidden, dtype=param_dtype, device=device)
    return MixedAdeptCase(
        torch.randint(0, vocab, (len(adapter_index), seq_len), device=device),
        torch.randn(vocab, hidden, device=device).to(dtype),
        *(p.requires_grad_(True) for p in bank[:1]),
        torch.tensor([m for m, _ in sizes], device=device),
        *(p.requires_grad_(True) for p in bank[1:]),
        torch.tensor(adapter_index, dtype=torch.int64, device=device),
        mask,
        sizes,
        slots,
    )
