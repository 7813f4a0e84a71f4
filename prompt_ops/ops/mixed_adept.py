"""``mixed_adept_embed``: many ADePT adapters in one batch, one adapter per row.

A bank of ``N`` ADePT adapters is stacked into zero-padded tensors: ``prompts (N, m_max, d)`` with adapter ``a``'s
prompt in its first ``prompt_lengths[a] = m_a`` rows, and its token-shared FFN padded over ranks to ``r_max``:
``w_down (N, d, r_max)``, ``b_down (N, r_max)``, ``w_up (N, r_max, d)``, ``b_up (N, d)`` (columns / entries / rows
``>= r_a`` zero). Row ``b`` of a batch uses adapter ``a = adapter_index[b]`` (``-1``: the plain base model). Every
output row has the ``m_max`` prompt columns that :func:`prompt_ops.ops.mixed_embed.mixed_dept_embed` lays out (the
same ``slots`` layouts: ``"front"`` or ``"after_prompt"``), then the ``L`` input columns::

    out[b, m_max + t] = E + relu(dropout_a(E @ w_down[a] + b_down[a])) @ w_up[a] + b_up[a],   E = W[ids[b, t]]

accumulated in fp32 (fp64 for fp64 inputs) and rounded once to ``weight.dtype``, mask ``attention_mask[b, t]``; a
``-1`` row gets plain ``W[ids]``. Zero rank padding adds nothing: its pre-activation is exactly 0, ``relu(0) = 0``
meets a zero row of ``w_up``, and the same zeros make its gradient exactly zero (``d_w_up`` rows ``relu(H)^T dY = 0``,
``d_w_down`` columns and ``d_b_down`` entries carry ``dH = (dY w_up^T) 1[H > 0] = 0``), so a padded rank stays zero
under any optimizer.

Dropout (training only, before the ReLU, inverted, as ``adept_embed``): ``dropout (N,)`` holds each adapter's
probability; a row's multipliers use its adapter's. They are keyed by ``seed`` and the element ``(b * L + t) *
r_max + k`` of the batch's ``(B, L, r_max)`` hidden, so the forward and the backward regenerate the same mask. The
Triton kernels draw them from a counter-based philox stream, the torch backend from a ``torch.Generator`` seeded with
``seed``; the two masks differ, each is reproducible. An adapter with ``p = 0`` is unaffected (its multipliers are 1).

Two ``torch.library`` custom ops, ``prompt_ops::mixed_adept_embed_fwd`` and ``prompt_ops::mixed_adept_embed_bwd``,
with fake implementations, carry either backend; ``register_autograd`` on the forward calls the backward op.
Gradients reach ``prompts`` and the four FFN tensors, deterministically: the prompt gradient is
``mixed_dept_embed``'s (a bank without offsets), each adapter's FFN gradients reduce over its own rows only, in a
fixed order. The torch backend groups the rows by adapter once (a stable sort, one host sync for the group sizes)
and runs each present adapter's FFN as skinny matmuls over its rows; each output row has one source (no scatter-add).
"""

import torch

from prompt_ops.ops.adept_embed import (
    check_ffn_shapes,
    check_seed,
    check_training,
    dropout_multipliers_torch,
    ffn_grads_torch,
    ffn_hidden_torch,
    ffn_offset_torch,
    resolve_seed,
)
from prompt_ops.ops.backend import resolve_check_ids
from prompt_ops.ops.common import accumulate_dtype, custom_op, fake_embed_outputs
from prompt_ops.ops.mixed_embed import check_slots, mixed_embed_bwd_torch, mixed_embed_fwd_torch
from prompt_ops.ops.validation import (
    check_bank,
    check_bank_indices,
    check_embed_sizes,
    check_int32_index,
    check_token_data,
    validate_embed_call,
)

Tensor = torch.Tensor
FFN_NAMES = ("w_down", "b_down", "w_up", "b_up")


# ----------------------------------------------------------------------------------------------------------------
# torch backend
# ----------------------------------------------------------------------------------------------------------------


def ffn_shapes(num: int, hidden: int, rank: int) -> tuple[tuple[int, ...], ...]:
    """The shapes of a bank's stacked FFN tensors ``w_down (N, d, r_max)``, ``b_down (N, r_max)``, ``w_up (N, r_max,
    d)`` and ``b_up (N, d)`` (and of their gradients)."""
    return (num, hidden, rank), (num, rank), (num, rank, hidden), (num, hidden)


def no_offsets(prompt_lengths: Tensor) -> Tensor:
    """The ``scales (N,)`` of the bank's prompt part seen as a ``mixed_dept_embed`` bank without offsets (zeros;
    never read there), so that the prompt slots and their gradient are that op's own."""
    return torch.zeros(prompt_lengths.shape, dtype=torch.float32, device=prompt_lengths.device)


def adapter_groups(adapter_index: Tensor, num: int) -> list[tuple[int, Tensor]]:
    """``(a, rows)`` for every adapter ``a`` with rows in the batch, ``rows`` its batch rows in increasing order: a
    stable sort by adapter and one host sync for the group sizes. Indices outside ``[0, N)`` (``-1``; others only
    when the host check is off) belong to no group."""
    adapter = adapter_index.long()
    key = torch.where((adapter >= 0) & (adapter < num), adapter + 1, 0)  # 0: no adapter
    order = torch.argsort(key, stable=True)
    groups = order.split(torch.bincount(key, minlength=num + 1).tolist())
    return [(a, rows) for a, rows in enumerate(groups[1:]) if rows.numel()]


def dropout_multipliers_mixed(
    adapter_index: Tensor, seq_len: int, rank: int, dropout: Tensor, seed: int, dtype: torch.dtype
) -> Tensor:  # fmt: skip
    """The torch backend's ``(B * L, r_max)`` inverted-dropout multipliers: one draw for the whole batch from
    ``seed``, each token against its row's adapter's probability (``-1`` rows: 0, unused)."""
    adapter = adapter_index.long()
    num = dropout.shape[0]
    inside = (adapter >= 0) & (adapter < num)
    probability = torch.where(inside, dropout[adapter.clamp(0, num - 1)], 0.0)  # (B,)
    per_token = probability.repeat_interleave(seq_len)[:, None]  # (B * L, 1)
    return dropout_multipliers_torch(per_token.shape[0], rank, per_token, seed, adapter.device, dtype)


def _group_hidden(input_ids, weight, w_down, b_down, adapter, rows, multipliers, acc):
    """``E`` and ``Hd`` ``(n, r_max)`` of the ``n = len(rows) * L`` tokens of one adapter's rows, and their dropout
    multipliers (None: eval)."""
    emb = torch.nn.functional.embedding(input_ids[rows].reshape(-1), weight).to(acc)  # (n, d)
    scale = None
    if multipliers is not None:  # explicit sizes: -1 is ambiguous when L = 0
        rank = multipliers.shape[1]
        scale = multipliers.view(*input_ids.shape, rank)[rows].view(emb.shape[0], rank)  # (n, r_max)
    return emb, ffn_hidden_torch(emb, w_down[adapter], b_down[adapter], scale), scale


def mixed_adept_fwd_torch(
    input_ids: Tensor,
    weight: Tensor,
    prompts: Tensor,
    prompt_lengths: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    adapter_index: Tensor,
    attention_mask: Tensor | None,
    dropout: Tensor | None,
    seed: int,
    slots: str = "front",
) -> tuple[Tensor, Tensor]:
    """Eager forward: ``mixed_dept_embed``'s torch path writes the prompt slots, the plain tokens and the mask;
    then each present adapter's rows get ``E + relu(Hd) @ w_up + b_up`` (fp32 adds, one rounding) in place of
    their plain tokens. ``dropout (N,)`` the active probabilities, or None (eval)."""
    batch, seq_len = input_ids.shape
    num, num_slots, hidden = prompts.shape
    out, mask = mixed_embed_fwd_torch(
        input_ids, weight, prompts, prompt_lengths, None, None, no_offsets(prompt_lengths), adapter_index,
        attention_mask, slots=slots,
    )  # fmt: skip
    acc = accumulate_dtype(weight.dtype, w_down.dtype)
    multipliers = None
    if dropout is not None:
        multipliers = dropout_multipliers_mixed(adapter_index, seq_len, w_down.shape[2], dropout, seed, acc)
    for adapter, rows in adapter_groups(adapter_index, num):
        emb, hiddens, _ = _group_hidden(input_ids, weight, w_down, b_down, adapter, rows, multipliers, acc)
        tokens = ffn_offset_torch(hiddens, w_up[adapter], b_up[adapter]).add_(emb)  # (n, d)
        out[rows, num_slots:] = tokens.view(rows.shape[0], seq_len, hidden).to(out.dtype)  # one source per row
    return out, mask


def mixed_adept_bwd_torch(
    grad_out: Tensor,
    input_ids: Tensor,
    weight: Tensor,
    prompt_lengths: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    adapter_index: Tensor,
    dropout: Tensor | None,
    seed: int,
    num_slots: int,
    slots: str = "front",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Eager backward: ``d_prompts`` as ``mixed_dept_embed``'s torch path sums it, then per present adapter the FFN
    chain rule over its own rows (recomputing ``E`` and ``Hd``); adapters without rows get zeros."""
    batch, seq_len = input_ids.shape
    num, hidden, rank = w_down.shape
    grad_prompts = mixed_embed_bwd_torch(
        grad_out, prompt_lengths, None, None, no_offsets(prompt_lengths), adapter_index, None, num_slots, slots=slots
    )[0]
    acc = accumulate_dtype(weight.dtype, w_down.dtype)
    grads = [torch.zeros(shape, dtype=acc, device=grad_out.device) for shape in ffn_shapes(num, hidden, rank)]
    multipliers = None
    if dropout is not None:
        multipliers = dropout_multipliers_mixed(adapter_index, seq_len, rank, dropout, seed, acc)
    for adapter, rows in adapter_groups(adapter_index, num):
        emb, hiddens, scale = _group_hidden(input_ids, weight, w_down, b_down, adapter, rows, multipliers, acc)
        grad_y = grad_out[rows, num_slots:].reshape(-1, hidden).to(acc)  # (n, d)
        ffn_grads_torch(emb, hiddens, grad_y, w_up[adapter], scale, tuple(g[adapter] for g in grads))
    return grad_prompts, *grads


# ----------------------------------------------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------------------------------------------


def check_dropout_data(dropout: Tensor | None) -> None:
    """Every probability of ``dropout (N,)`` in ``[0, 1)`` (a data check, one device sync)."""
    if dropout is not None and dropout.numel() and not bool(((dropout >= 0) & (dropout < 1)).all()):
        bad = dropout[~((dropout >= 0) & (dropout < 1))][0]
        raise ValueError(f"dropout must hold probabilities in [0, 1) (one per adapter), found {float(bad)!r}")


@custom_op("prompt_ops::mixed_adept_embed_fwd")
def mixed_adept_embed_fwd_op(
    input_ids: Tensor,
    weight: Tensor,
    prompts: Tensor,
    prompt_lengths: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    adapter_index: Tensor,
    attention_mask: Tensor | None,
    dropout: Tensor | None,
    seed: int,
    check_ids: bool,
    backend: str,
    slots: str,
) -> tuple[Tensor, Tensor]:
    """Forward custom op; ``dropout (N,)`` the active probabilities (None: eval, nothing drawn); the data checks
    (``check_ids``) run here so that they also guard compiled graphs."""
    if check_ids:
        check_token_data(input_ids, weight.shape[0], attention_mask)
        check_bank_indices(prompt_lengths, adapter_index, prompts.shape[1])
        check_dropout_data(dropout)
    args = (input_ids, weight, prompts, prompt_lengths, w_down, b_down, w_up, b_up, adapter_index, attention_mask,
            dropout, seed, slots)  # fmt: skip
    if backend == "triton":
        from prompt_ops.kernels.mixed_adept import mixed_adept_fwd_triton

        return mixed_adept_fwd_triton(*args)
    return mixed_adept_fwd_torch(*args)


@mixed_adept_embed_fwd_op.register_fake
def _mixed_adept_embed_fwd_fake(
    input_ids, weight, prompts, prompt_lengths, w_down, b_down, w_up, b_up, adapter_index, attention_mask, dropout,
    seed, check_ids, backend, slots,
):  # fmt: skip
    return fake_embed_outputs(input_ids, weight, prompts.shape[1], prompts.shape[2], attention_mask)


@custom_op("prompt_ops::mixed_adept_embed_bwd")
def mixed_adept_embed_bwd_op(
    grad_out: Tensor,
    input_ids: Tensor,
    weight: Tensor,
    prompt_lengths: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    adapter_index: Tensor,
    dropout: Tensor | None,
    seed: int,
    num_slots: int,
    backend: str,
    slots: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward custom op: ``(d_prompts, d_w_down, d_b_down, d_w_up, d_b_up)``, the prompt gradient in the
    accumulate dtype of ``grad_out`` and the FFN's in that of ``weight`` and the FFN (fp32; fp64 for fp64 inputs)."""
    args = (grad_out, input_ids, weight, prompt_lengths, w_down, b_down, w_up, adapter_index, dropout, seed,
            num_slots, slots)  # fmt: skip
    if backend == "triton":
        from prompt_ops.kernels.mixed_adept import mixed_adept_bwd_triton

        return mixed_adept_bwd_triton(*args)
    return mixed_adept_bwd_torch(*args)


@mixed_adept_embed_bwd_op.register_fake
def _mixed_adept_embed_bwd_fake(
    grad_out, input_ids, weight, prompt_lengths, w_down, b_down, w_up, adapter_index, dropout, seed, num_slots,
    backend, slots,
):  # fmt: skip
    num, hidden, rank = w_down.shape
    acc = accumulate_dtype(weight.dtype, w_down.dtype)
    grad_prompts = grad_out.new_empty((num, num_slots, hidden), dtype=accumulate_dtype(grad_out.dtype))
    return grad_prompts, *(w_down.new_empty(shape, dtype=acc) for shape in ffn_shapes(num, hidden, rank))


def _setup_context(ctx, inputs, output):
    input_ids, weight, prompts, prompt_lengths, w_down, b_down, w_up, b_up, adapter_index = inputs[:9]
    _, dropout, seed, _, backend, slots = inputs[9:]
    ctx.save_for_backward(input_ids, weight, prompt_lengths, w_down, b_down, w_up, adapter_index, dropout)
    ctx.num_slots = prompts.shape[1]
    ctx.dtypes = (prompts.dtype, w_down.dtype, b_down.dtype, w_up.dtype, b_up.dtype)
    ctx.seed, ctx.backend, ctx.slots = seed, backend, slots


def _backward(ctx, grad_embeds, _grad_mask):
    saved = ctx.saved_tensors
    grads = mixed_adept_embed_bwd_op(grad_embeds, *saved, ctx.seed, ctx.num_slots, ctx.backend, ctx.slots)
    grad_prompts, *ffn = (g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True))
    return None, None, grad_prompts, None, *ffn, None, None, None, None, None, None, None


mixed_adept_embed_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------------
# public entry
# ----------------------------------------------------------------------------------------------------------------


def _validate(input_ids, weight, prompts, prompt_lengths, w_down, b_down, w_up, b_up, adapter_index,
              attention_mask, dropout, backend) -> str:  # fmt: skip
    """The shape, dtype and device checks of :func:`mixed_adept_embed`; returns the resolved backend."""
    params = {
        "prompts": (prompts, 3, "(N, m_max, d)"),
        "w_down": (w_down, 3, "(N, d, r_max)"),
        "b_down": (b_down, 2, "(N, r_max)"),
        "w_up": (w_up, 3, "(N, r_max, d)"),
        "b_up": (b_up, 2, "(N, d)"),
    }
    backend = validate_embed_call(input_ids, weight, attention_mask, backend, params)
    vectors = {} if dropout is None else {"dropout": (dropout, None)}
    check_bank(input_ids, weight, prompts, prompt_lengths, adapter_index, vectors)
    num = prompts.shape[0]
    if w_down.shape[0] != num:
        raise ValueError(
            f"w_down must have shape (N, d, r_max) with N = prompts.shape[0] = {num}, got {tuple(w_down.shape)}"
        )
    check_ffn_shapes(w_down, b_down, w_up, b_up, weight.shape[1], layout="(N, d, r_max)")
    return backend


def mixed_adept_embed(
    input_ids: Tensor,
    weight: Tensor,
    prompts: Tensor,
    prompt_lengths: Tensor,
    w_down: Tensor,
    b_down: Tensor,
    w_up: Tensor,
    b_up: Tensor,
    adapter_index: Tensor,
    *,
    attention_mask: Tensor | None = None,
    slots: str = "front",
    dropout: Tensor | None = None,
    training: bool = False,
    seed: int | None = None,
    backend: str | None = None,
    check_ids: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """ADePT adapters of one bank, one adapter per row of the batch (module docstring).

    Args:
        input_ids: ``(B, L)`` int64 or int32 token ids in ``[0, V)``.
        weight: ``(V, d)`` frozen word-embedding table (fp32, fp16 or bf16; must not require grad).
        prompts: ``(N, m_max, d)`` the bank's prompts, adapter ``a``'s in rows ``[0, m_a)``, zero below.
        prompt_lengths: ``(N,)`` int64 or int32 ``m_a``, each in ``[1, m_max]``.
        w_down: ``(N, d, r_max)`` each adapter's down projection, zero in columns ``>= r_a``.
        b_down: ``(N, r_max)`` its bias, zero past ``r_a``.
        w_up: ``(N, r_max, d)`` its up projection, zero in rows ``>= r_a``.
        b_up: ``(N, d)`` its output bias. ``prompts`` and the four FFN tensors share one floating dtype.
        adapter_index: ``(B,)`` int64 or int32, each row's adapter in ``[-1, N)``; ``-1`` is the plain base model.
        attention_mask: optional ``(B, L)`` mask of any bool/int/float dtype (finite values).
        slots: the layout of a row's ``m_max`` prompt columns: ``"front"`` (default; ``m_max - m_a`` masked slots,
            then the prompt) or ``"after_prompt"`` (the prompt, then the masked slots).
        dropout: optional ``(N,)`` floating probabilities in ``[0, 1)``, one per adapter, applied before the ReLU
            when ``training`` (None: no dropout).
        training: whether dropout acts.
        seed: the dropout seed, an int in ``[0, 2**31 - 1)``; the same seed gives the same mask. None draws one from
            torch's global generator when dropout acts (pass it explicitly under ``torch.compile``).
        backend: ``"auto"`` (default, or ``$PROMPT_OPS_BACKEND``), ``"triton"`` or ``"torch"``. The Triton backend
            takes ``r_max <= 64``.
        check_ids: validate the data (default, or ``$PROMPT_OPS_CHECK_IDS``): ids in range, a float mask finite,
            ``adapter_index`` in ``[-1, N)``, ``prompt_lengths`` in ``[1, m_max]``, ``dropout`` in ``[0, 1)``. One
            device sync; pass ``False`` when capturing CUDA graphs.

    Returns:
        ``inputs_embeds (B, m_max + L, d)`` in ``weight.dtype`` and the mask ``(B, m_max + L)``: 0 on each row's
        ``m_max - m_a`` slots (all ``m_max`` on ``-1`` rows), 1 on its prompt, then ``attention_mask`` (ones if
        None), in its dtype (int64 if None). Gradients reach ``prompts`` and the four FFN tensors only,
        deterministically; the bank's padding (prompt rows ``>= m_a``, ranks ``>= r_a``) gets exact zeros.
    """
    backend = _validate(
        input_ids, weight, prompts, prompt_lengths, w_down, b_down, w_up, b_up, adapter_index, attention_mask,
        dropout, backend,
    )  # fmt: skip
    check_slots(slots)
    active = check_training(training) and dropout is not None
    seed = resolve_seed(check_seed(seed), active)
    check_embed_sizes(input_ids, weight, prompts.shape[1], f"prompts (N, m_max, d) = {tuple(prompts.shape)}",
                      attention_mask)  # fmt: skip
    if backend == "triton":
        from prompt_ops.kernels.adept_embed import block_rank

        block_rank(w_down.shape[2])  # refuses ranks the kernels do not take, before any launch
        if active:
            sources = f"input_ids (B, L) = {tuple(input_ids.shape)} and w_down (N, d, r_max) = {tuple(w_down.shape)}"
            check_int32_index("B * L * r_max dropout multipliers", input_ids.numel() * w_down.shape[2], sources)
    return mixed_adept_embed_fwd_op(
        input_ids, weight, prompts, prompt_lengths, w_down, b_down, w_up, b_up, adapter_index, attention_mask,
        dropout if active else None, seed, resolve_check_ids(check_ids), backend, slots,
    )  # fmt: skip
