"""``mixed_dept_embed``: many prompt-tuning and DePT adapters in one batch, one adapter per row.

A bank of ``N`` adapters is stacked into zero-padded tensors: ``prompts (N, m_max, d)`` with adapter ``a``'s prompt
in its first ``prompt_lengths[a] = m_a`` rows, ``lora_a (N, L_max, r_max)``, ``lora_b (N, r_max, d)`` (None when no
adapter has offsets; a prompt-tuning adapter in a DePT bank has zero factors and scale 0) and ``scales (N,)``.
Row ``b`` of a batch uses adapter ``a = adapter_index[b]`` (``-1``: the plain base model). Every output row has
``m_max`` prompt columns, then the ``L`` input columns:

- columns ``[0, m_max - m_a)``: zero vectors, mask 0 (a ``-1`` row: all ``m_max``);
- columns ``[m_max - m_a, m_max)``: ``prompts[a, :m_a]``, mask 1;
- column ``m_max + t``: ``W[ids[b, t]] + s_a * A_a[start_b + t] @ B_a`` rounded once to ``weight.dtype`` (no offset
  where ``start_b + t`` is outside ``[0, L_max)``, nor on a ``-1`` row), mask ``attention_mask[b, t]``.

So the prompt sits right before the input as it does when the adapter runs alone, and with positions counted from
the first real column each row's result equals its adapter alone (the batch-invariance rule). That is the default
layout, ``slots="front"`` (decoder-only models, T5). ``slots="after_prompt"`` puts the masked slots between the
prompt and the input, ``[prompt_a, slots, input]``: the prompt at columns ``[0, m_a)``, the slots at ``[m_a, m_max)``,
so a head that reads column 0 (BERT's pooler) reads the prompt's first row as it does alone; with position ids
that skip the slots a bidirectional encoder's row equals its adapter alone. The input is at columns ``m_max + t`` in
both layouts (labels and ``token_type_ids`` keep fixed columns). In either, slot column ``c`` of row ``b`` shows
prompt row ``c - f_b`` where that is in ``[0, m_a)``, with ``f_b = m_max - m_a`` (front) or ``0`` (after the prompt).

Two ``torch.library`` custom ops, ``prompt_ops::mixed_dept_embed_fwd`` and ``prompt_ops::mixed_dept_embed_bwd``,
each with a fake implementation, carry either backend; ``register_autograd`` on the forward calls the backward op.
``triton`` launches ``prompt_ops.kernels.mixed_embed``; ``torch`` is an efficient eager path: the prompt slots are
one gather of the bank's prompt rows (a zero row standing in for the masked slots), the offsets one gather of the
rows of ``Q = s * bmm(A, B) (N, L_max, d)`` at ``(a_b, start_b + t)``, added in fp32 into the output (one rounding).

The backward is deterministic (no scatter, no atomics): each row's gradient is first aligned to its adapter's
rows (the prompt columns shifted by ``f_b``, the token columns gathered at A-row ``j = start_b + t``), then
summed per adapter by a one-hot ``(N, B)`` matmul: ``dP[a] = sum_{b: a_b = a} dX[b, f_b + j]`` (``j < m_a``) and
``G'[a, j] = sum_{b: a_b = a} dX[b, m_max + j - start_b]``, ``dA = s G' B^T``, ``dB = s A^T G'`` (batched).
Gradients reach ``prompts``, ``lora_a`` and ``lora_b`` only. The prompt padding (rows ``>= m_a``) is never read and
gets an exact zero gradient; zero-padded ranks get exact zeros too (each term is a product with a zero factor); the
rows of ``lora_a`` past an adapter's own length ``L_a`` are masked when ``max_lengths`` gives the lengths (no
offset there, exact zero gradient); without it every adapter spans all ``L_max`` rows (its zero padding adds no
offset, but a token that reaches a padded row, in an input longer than ``L_a`` or by an explicit start, gives that
row a gradient, as the padded reference does).
"""

import math

import torch

from prompt_ops.ops.backend import resolve_check_ids
from prompt_ops.ops.common import accumulate_dtype, custom_op, fake_embed_outputs
from prompt_ops.ops.dept_embed import check_lora_shapes, covered_rows, resolve_positions, shifted_rows
from prompt_ops.ops.validation import (
    TOKEN_ID_DTYPES,
    check_bank,
    check_bank_indices,
    check_embed_sizes,
    check_token_data,
    check_values_in,
    validate_embed_call,
)

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# torch backend
# ----------------------------------------------------------------------------------------------------------------


SLOTS = ("front", "after_prompt")
"""The layouts of a mixed row: masked slots in front of the prompt, or between the prompt and the input."""


def check_slots(slots: object, name: str = "slots") -> str:
    """``"front"`` or ``"after_prompt"`` (a ``ValueError`` naming ``name`` otherwise)."""
    if not isinstance(slots, str) or slots not in SLOTS:
        raise ValueError(
            f"{name} must be one of {SLOTS} (masked slots in front of each row's prompt, or between the prompt and "
            f"the input), got {slots!r}"
        )
    return slots


def row_prompt_layout(
    prompt_lengths: Tensor, adapter_index: Tensor, num_slots: int, slots: str
) -> tuple[Tensor, Tensor]:
    """``(m, f)``, both ``(B,)`` int64: the prompt length ``m_a`` of each row's adapter (0 on ``-1`` rows) and the
    slot column of its prompt row 0, ``f = m_max - m_a`` (``"front"``) or 0 (``"after_prompt"``). Slot ``c`` of
    row ``b`` shows ``prompts[a_b, c - f_b]`` where that index is in ``[0, m_b)``."""
    lengths = torch.where(adapter_index >= 0, prompt_lengths[adapter_index.clamp(min=0)], 0)
    first = num_slots - lengths if slots == "front" else torch.zeros_like(lengths)
    return lengths, first


def mixed_embed_fwd_torch(
    input_ids: Tensor,
    weight: Tensor,
    prompts: Tensor,
    prompt_lengths: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    scales: Tensor,
    adapter_index: Tensor,
    attention_mask: Tensor | None,
    starts: Tensor | None = None,
    max_lengths: Tensor | None = None,
    offset_rows: int | None = None,
    slots: str = "front",
) -> tuple[Tensor, Tensor]:
    """Eager forward; same contract as the Triton launcher. ``starts`` ``(B,)`` int64 (None: every row at 0);
    ``max_lengths`` ``(N,)`` each adapter's ``L_a`` (None: ``L_max``); only the first ``offset_rows`` rows of each
    ``A`` can be reached (None: all ``L_max``); ``slots`` the layout (:data:`SLOTS`)."""
    batch, seq_len = input_ids.shape
    num, num_slots, hidden = prompts.shape
    adapter = adapter_index.long()
    safe = adapter.clamp(min=0)
    out = weight.new_empty((batch, num_slots + seq_len, hidden))
    lengths, first = row_prompt_layout(prompt_lengths, adapter, num_slots, slots)
    row = torch.arange(num_slots, device=adapter.device) - first[:, None]  # (B, m_max): the prompt row of each slot
    shown = (row >= 0) & (row < lengths[:, None])
    table = torch.cat([prompts.reshape(num * num_slots, hidden), prompts.new_zeros((1, hidden))])  # zero row last
    index = torch.where(shown, safe[:, None] * num_slots + row, num * num_slots)
    out[:, :num_slots] = torch.nn.functional.embedding(index, table)  # cast to weight.dtype
    tokens = torch.nn.functional.embedding(input_ids, weight)  # (B, L, d)
    if lora_a is None:
        out[:, num_slots:] = tokens
    else:
        rows = lora_a.shape[1] if offset_rows is None else offset_rows
        offsets = lora_a.new_zeros((num * rows + 1, hidden))  # Q[a, j] at a * rows + j, a zero row last
        q = offsets[: num * rows].view(num, rows, hidden)
        torch.bmm(lora_a[:, :rows], lora_b, out=q).mul_(scales.to(q.dtype)[:, None, None])
        position = torch.arange(seq_len, device=input_ids.device).expand(batch, seq_len)
        if starts is not None:
            position = position + starts[:, None]
        inside = (adapter >= 0)[:, None] & (position >= 0) & (position < rows)
        if max_lengths is not None:
            inside &= position < max_lengths[safe][:, None]
        index = torch.where(inside, safe[:, None] * rows + position, num * rows)
        offset = torch.nn.functional.embedding(index, offsets)  # (B, L, d)
        torch.add(tokens, offset, out=out[:, num_slots:])  # in the offset's precision, rounded once
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    mask = torch.ones((batch, num_slots + seq_len), dtype=mask_dtype, device=weight.device)
    mask[:, :num_slots] = shown
    if attention_mask is not None:
        mask[:, num_slots:] = attention_mask
    return out, mask


def per_adapter_sum(rows: Tensor, adapter_index: Tensor, num: int, acc: torch.dtype) -> Tensor:
    """``(N, ...)``: the sum of ``rows (B, ...)`` over the rows of each adapter, in ``acc``, as a one-hot
    ``(N, B)`` matmul (a fixed order, no scatter); ``-1`` rows add nothing."""
    batch = rows.shape[0]
    one_hot = (adapter_index[None, :] == torch.arange(num, device=rows.device)[:, None]).to(acc)  # (N, B)
    return torch.mm(one_hot, rows.reshape(batch, math.prod(rows.shape[1:])).to(acc)).view(num, *rows.shape[1:])


def mixed_embed_bwd_torch(
    grad_out: Tensor,
    prompt_lengths: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    scales: Tensor,
    adapter_index: Tensor,
    starts: Tensor | None,
    num_slots: int,
    max_lengths: Tensor | None = None,
    offset_rows: int | None = None,
    slots: str = "front",
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Eager backward: per-row alignment, per-adapter one-hot sums, then small batched matmuls (module docstring);
    ``(d_prompts, d_lora_a, d_lora_b)`` in fp32 (fp64 for fp64 inputs)."""
    acc = accumulate_dtype(grad_out.dtype)
    num, batch, hidden = prompt_lengths.shape[0], grad_out.shape[0], grad_out.shape[2]
    seq_len = grad_out.shape[1] - num_slots
    adapter = adapter_index.long()
    lengths, first = row_prompt_layout(prompt_lengths, adapter, num_slots, slots)
    row = torch.arange(num_slots, device=grad_out.device)
    column = row + first[:, None]  # (B, m_max): the slot of prompt row j
    inside = row < lengths[:, None]  # j < m_a
    index = torch.where(inside, column, 0)[:, :, None].expand(batch, num_slots, hidden)
    aligned = torch.where(inside[:, :, None], torch.gather(grad_out[:, :num_slots], 1, index), 0)
    grad_prompts = per_adapter_sum(aligned, adapter, num, acc)  # (N, m_max, d), rows >= m_a exactly zero
    if lora_a is None:
        return grad_prompts, None, None
    grad_tokens = grad_out[:, num_slots:]
    if starts is None:
        rows = seq_len
        shifted = grad_tokens
    else:
        rows = lora_a.shape[1] if offset_rows is None else offset_rows
        shifted = shifted_rows(grad_tokens, starts, rows)  # (B, rows, d)
    if max_lengths is not None:  # A rows j >= L_a of the row's adapter: no offset, so no gradient
        below = torch.arange(rows, device=grad_out.device) < max_lengths[adapter.clamp(min=0)][:, None]  # (B, rows)
        shifted = torch.where(below[:, :, None], shifted, 0)
    summed = per_adapter_sum(shifted, adapter, num, acc)  # G' (N, rows, d)
    scale = scales.to(acc)[:, None, None]
    grad_a = torch.zeros(lora_a.shape, dtype=acc, device=grad_out.device)
    torch.bmm(summed, lora_b.to(acc).transpose(1, 2), out=grad_a[:, :rows]).mul_(scale)  # s * G' @ B^T
    grad_b = torch.bmm(lora_a[:, :rows].to(acc).transpose(1, 2), summed).mul_(scale)  # s * A^T @ G'
    return grad_prompts, grad_a, grad_b


# ----------------------------------------------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------------------------------------------


def check_bank_data(
    prompt_lengths: Tensor, scales: Tensor, adapter_index: Tensor, num_slots: int, max_lengths: Tensor | None = None,
    num_rows: int = 0,
) -> None:  # fmt: skip
    """The data-dependent checks of the bank (one device sync; ``check_ids=False`` skips them): every adapter index
    in ``[-1, N)``, every prompt length in ``[1, m_max]``, every scale finite, every ``max_lengths`` (if given) in
    ``[0, L_max]`` with ``L_max = num_rows``."""
    check_bank_indices(prompt_lengths, adapter_index, num_slots)
    if not bool(torch.isfinite(scales).all()):
        raise ValueError("scales must hold finite values, found NaN or infinity")
    if max_lengths is not None:
        check_values_in(
            "max_lengths", max_lengths, 0, num_rows, f"[0, L_max] = [0, {num_rows}] (L_max = lora_a.shape[1])"
        )


@custom_op("prompt_ops::mixed_dept_embed_fwd")
def mixed_dept_embed_fwd_op(
    input_ids: Tensor,
    weight: Tensor,
    prompts: Tensor,
    prompt_lengths: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    scales: Tensor,
    adapter_index: Tensor,
    attention_mask: Tensor | None,
    check_ids: bool,
    backend: str,
    starts: Tensor | None = None,
    starts_nonpositive: bool = False,
    max_lengths: Tensor | None = None,
    slots: str = "front",
) -> tuple[Tensor, Tensor]:
    """Forward custom op; the data checks (``check_ids``) run here so that they also guard compiled graphs.
    ``starts`` ``(B,)`` int64 shifts each row's offset rows (None: unshifted); ``starts_nonpositive`` promises that
    no start is positive (the string conventions), so only ``A[:, :L]`` can be reached; ``max_lengths`` ``(N,)``
    each adapter's ``L_a`` (None: all ``L_max`` rows; only with offsets); ``slots`` the layout (:data:`SLOTS`)."""
    if check_ids:
        check_token_data(input_ids, weight.shape[0], attention_mask)
        num_rows = 0 if lora_a is None else lora_a.shape[1]
        check_bank_data(prompt_lengths, scales, adapter_index, prompts.shape[1], max_lengths, num_rows)
    if backend == "triton":
        from prompt_ops.kernels.mixed_embed import mixed_embed_fwd_triton

        return mixed_embed_fwd_triton(
            input_ids, weight, prompts, prompt_lengths, lora_a, lora_b, scales, adapter_index, attention_mask, starts,
            max_lengths, slots=slots,
        )  # fmt: skip
    rows = None if lora_a is None else covered_rows(input_ids.shape[1], lora_a.shape[1], starts_nonpositive)
    return mixed_embed_fwd_torch(
        input_ids, weight, prompts, prompt_lengths, lora_a, lora_b, scales, adapter_index, attention_mask, starts,
        max_lengths, rows, slots,
    )  # fmt: skip


@mixed_dept_embed_fwd_op.register_fake
def _mixed_dept_embed_fwd_fake(
    input_ids, weight, prompts, prompt_lengths, lora_a, lora_b, scales, adapter_index, attention_mask, check_ids,
    backend, starts=None, starts_nonpositive=False, max_lengths=None, slots="front",
):  # fmt: skip
    return fake_embed_outputs(input_ids, weight, prompts.shape[1], prompts.shape[2], attention_mask)


@custom_op("prompt_ops::mixed_dept_embed_bwd")
def mixed_dept_embed_bwd_op(
    grad_out: Tensor,
    prompt_lengths: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    scales: Tensor,
    adapter_index: Tensor,
    num_slots: int,
    backend: str,
    starts: Tensor | None = None,
    starts_nonpositive: bool = False,
    max_lengths: Tensor | None = None,
    slots: str = "front",
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward custom op: fp32 (fp64 for fp64 inputs) ``(d_prompts, d_lora_a, d_lora_b)``; the last two are empty
    tensors when the bank has no offsets (a custom op cannot return None). ``starts``, ``max_lengths`` and
    ``slots`` as in the forward."""
    if backend == "triton":
        from prompt_ops.kernels.mixed_embed import mixed_embed_bwd_triton

        grads = mixed_embed_bwd_triton(
            grad_out, prompt_lengths, lora_a, lora_b, scales, adapter_index, starts, num_slots, max_lengths,
            slots=slots,
        )  # fmt: skip
    else:
        seq_len = grad_out.shape[1] - num_slots
        rows = None if lora_a is None else covered_rows(seq_len, lora_a.shape[1], starts_nonpositive)
        grads = mixed_embed_bwd_torch(
            grad_out, prompt_lengths, lora_a, lora_b, scales, adapter_index, starts, num_slots, max_lengths, rows,
            slots,
        )  # fmt: skip
    grad_prompts, grad_a, grad_b = grads
    if grad_a is None:  # two distinct empties: custom-op outputs may not alias each other
        grad_a, grad_b = (grad_out.new_empty((0,), dtype=grad_prompts.dtype) for _ in range(2))
    return grad_prompts, grad_a, grad_b


@mixed_dept_embed_bwd_op.register_fake
def _mixed_dept_embed_bwd_fake(
    grad_out, prompt_lengths, lora_a, lora_b, scales, adapter_index, num_slots, backend, starts=None,
    starts_nonpositive=False, max_lengths=None, slots="front",
):  # fmt: skip
    acc = accumulate_dtype(grad_out.dtype)
    grad_prompts = grad_out.new_empty((prompt_lengths.shape[0], num_slots, grad_out.shape[2]), dtype=acc)
    if lora_a is None:
        return grad_prompts, grad_out.new_empty((0,), dtype=acc), grad_out.new_empty((0,), dtype=acc)
    return grad_prompts, lora_a.new_empty(lora_a.shape, dtype=acc), lora_b.new_empty(lora_b.shape, dtype=acc)


def _setup_context(ctx, inputs, output):
    _, _, prompts, prompt_lengths, lora_a, lora_b, scales, adapter_index, _, _, backend, starts = inputs[:12]
    nonpositive, max_lengths, slots = inputs[12:]
    ctx.save_for_backward(prompt_lengths, lora_a, lora_b, scales, adapter_index, starts, max_lengths)
    ctx.num_slots = prompts.shape[1]
    ctx.prompts_dtype = prompts.dtype
    ctx.backend = backend
    ctx.starts_nonpositive = nonpositive
    ctx.slots = slots


def _backward(ctx, grad_embeds, _grad_mask):
    prompt_lengths, lora_a, lora_b, scales, adapter_index, starts, max_lengths = ctx.saved_tensors
    grad_prompts, grad_a, grad_b = mixed_dept_embed_bwd_op(
        grad_embeds, prompt_lengths, lora_a, lora_b, scales, adapter_index, ctx.num_slots, ctx.backend, starts,
        ctx.starts_nonpositive, max_lengths, ctx.slots,
    )  # fmt: skip
    grad_prompts = grad_prompts.to(ctx.prompts_dtype)
    if lora_a is None:
        grad_a = grad_b = None
    else:
        grad_a, grad_b = grad_a.to(lora_a.dtype), grad_b.to(lora_b.dtype)
    return None, None, grad_prompts, None, grad_a, grad_b, None, None, None, None, None, None, None, None, None


mixed_dept_embed_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------------
# public entry
# ----------------------------------------------------------------------------------------------------------------


def _validate_bank(input_ids, weight, prompts, prompt_lengths, lora_a, lora_b, scales, adapter_index,
                   attention_mask, backend, max_lengths) -> str:  # fmt: skip
    """The shape, dtype and device checks of :func:`mixed_dept_embed`; returns the resolved backend."""
    if (lora_a is None) != (lora_b is None):
        given, missing = ("lora_a", "lora_b") if lora_b is None else ("lora_b", "lora_a")
        raise ValueError(
            f"{given} is given but {missing} is None: pass both (a bank with DePT adapters) or neither (prompt "
            "tuning only)"
        )
    params = {"prompts": (prompts, 3, "(N, m_max, d)")}
    if lora_a is not None:
        params.update({"lora_a": (lora_a, 3, "(N, L_max, r_max)"), "lora_b": (lora_b, 3, "(N, r_max, d)")})
    backend = validate_embed_call(input_ids, weight, attention_mask, backend, params)
    vectors = {"scales": (scales, None)}
    if max_lengths is not None:
        vectors["max_lengths"] = (max_lengths, TOKEN_ID_DTYPES)
    check_bank(input_ids, weight, prompts, prompt_lengths, adapter_index, vectors)
    num = prompts.shape[0]
    if lora_a is not None and lora_a.shape[0] != num:
        raise ValueError(
            f"lora_a must have shape (N, L_max, r_max) with N = prompts.shape[0] = {num}, got {tuple(lora_a.shape)}"
        )
    return backend


def mixed_dept_embed(
    input_ids: Tensor,
    weight: Tensor,
    prompts: Tensor,
    prompt_lengths: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    scales: Tensor,
    adapter_index: Tensor,
    *,
    attention_mask: Tensor | None = None,
    positions: str | Tensor = "tokens",
    backend: str | None = None,
    check_ids: bool | None = None,
    max_lengths: Tensor | None = None,
    slots: str = "front",
) -> tuple[Tensor, Tensor]:
    """Prompt tuning and DePT adapters of one bank, one adapter per row of the batch (module docstring).

    Args:
        input_ids: ``(B, L)`` int64 or int32 token ids in ``[0, V)``.
        weight: ``(V, d)`` frozen word-embedding table (fp32, fp16 or bf16; must not require grad).
        prompts: ``(N, m_max, d)`` the bank's prompts, adapter ``a``'s in rows ``[0, m_a)``, zero below.
        prompt_lengths: ``(N,)`` int64 or int32 ``m_a``, each in ``[1, m_max]``.
        lora_a: ``(N, L_max, r_max)`` the bank's zero-padded ``A`` factors, or None with ``lora_b`` (no adapter has
            offsets). ``prompts``, ``lora_a`` and ``lora_b`` share one floating dtype (usually fp32).
        lora_b: ``(N, r_max, d)`` the zero-padded ``B`` factors, or None.
        scales: ``(N,)`` floating (usually fp32), finite: ``s_a = lora_alpha_a / sqrt(r_a)`` (0 for a
            prompt-tuning adapter in a DePT bank). Not trained.
        adapter_index: ``(B,)`` int64 or int32, each row's adapter in ``[-1, N)``; ``-1`` is the plain base model.
        attention_mask: optional ``(B, L)`` mask of any bool/int/float dtype (finite values).
        positions: ``"tokens"`` (default), ``"absolute"`` or a ``(B,)`` int64/int32 tensor of row starts, as in
            :func:`prompt_ops.dept_embed`. With the two conventions ``L <= L_max`` is required; a row whose adapter
            is shorter (``L_a < L``) gets no offset past ``L_a``.
        backend: ``"auto"`` (default, or ``$PROMPT_OPS_BACKEND``), ``"triton"`` or ``"torch"``.
        check_ids: validate the data (default, or ``$PROMPT_OPS_CHECK_IDS``): ids in range, a float mask finite,
            ``adapter_index`` in ``[-1, N)``, ``prompt_lengths`` in ``[1, m_max]``, ``scales`` finite. One device
            sync; pass ``False`` when capturing CUDA graphs.
        max_lengths: optional ``(N,)`` int64 or int32 ``L_a`` of each adapter, in ``[0, L_max]``: the rows
            ``[L_a, L_max)`` of ``lora_a[a]`` are padding, give no offset and get an exact zero gradient. None:
            every adapter spans all ``L_max`` rows. Ignored without offsets.
        slots: the layout of a row's ``m_max`` prompt columns: ``"front"`` (default; ``m_max - m_a`` masked slots,
            then the prompt) or ``"after_prompt"`` (the prompt, then the masked slots).

    Returns:
        ``inputs_embeds (B, m_max + L, d)`` in ``weight.dtype`` and the mask ``(B, m_max + L)``: 0 on each row's
        ``m_max - m_a`` slots (all ``m_max`` on ``-1`` rows), 1 on its prompt, then ``attention_mask`` (ones if
        None), in its dtype (int64 if None). Gradients reach ``prompts``, ``lora_a`` and ``lora_b`` only,
        deterministically.
    """
    backend = _validate_bank(
        input_ids, weight, prompts, prompt_lengths, lora_a, lora_b, scales, adapter_index, attention_mask, backend,
        max_lengths,
    )  # fmt: skip
    check_slots(slots)
    starts, nonpositive = None, False
    if lora_a is not None:
        starts, nonpositive, limited = resolve_positions(positions, input_ids, attention_mask)
        seq_len = input_ids.shape[1] if limited else None
        check_lora_shapes(
            lora_a, lora_b, seq_len, weight.shape[1], method="DePT", layouts=("(N, L_max, r_max)", "(N, r_max, d)")
        )
    check_embed_sizes(input_ids, weight, prompts.shape[1], f"prompts (N, m_max, d) = {tuple(prompts.shape)}",
                      attention_mask)  # fmt: skip
    return mixed_dept_embed_fwd_op(
        input_ids, weight, prompts, prompt_lengths, lora_a, lora_b, scales, adapter_index, attention_mask,
        resolve_check_ids(check_ids), backend, starts, nonpositive, max_lengths if lora_a is not None else None, slots,
    )  # fmt: skip
