"""``prompt_embed`` and ``dept_embed``: the model input of vanilla prompt tuning and of DePT.

One op family serves both: prompt tuning is DePT without the low-rank offset. Two ``torch.library`` custom ops,
``prompt_ops::dept_embed_fwd`` and ``prompt_ops::dept_embed_bwd``, each with a fake implementation, carry either
backend; ``register_autograd`` on the forward calls the backward op, so eager autograd, ``opcheck`` and
``torch.compile(fullgraph=True)`` all see the same two opaque ops.

Backends: ``triton`` launches ``prompt_ops.kernels.dept_embed`` (one fused launch forward, one launch plus two small
sums backward); ``torch`` is an efficient eager path: the offset is one ``(L, d)`` matmul broadcast over the batch,
added in fp32 straight into the preallocated output (no ``(B, L, d)`` repeat, one rounding).

Positions (``positions=``, see ``prompt_ops.ops.positions``): column ``t`` of row ``b`` sits at position
``starts[b] + t`` and gets the offset row ``A[starts[b] + t]``, none where that row is outside ``[0, L_max)``.
``starts = None`` (the ``"absolute"`` convention, or no mask) is the unshifted path, exactly as before. With starts
the torch backend gathers the rows of ``Q = s A @ B`` per token (a zero row stands in for the positions outside);
its backward is the deterministic gather-sum ``G'[j] = sum_b dX[b, m + j - starts[b]]`` over the batch, then
``dA = s G' B^T`` and ``dB = s A^T G'`` over the rows ``j`` any token can reach (``[0, L)`` when no start is
positive, which the string conventions guarantee, else ``[0, L_max)``).
"""

import torch

from prompt_ops.ops.backend import resolve_check_ids
from prompt_ops.ops.common import accumulate_dtype, custom_op, fake_embed_outputs
from prompt_ops.ops.positions import POSITIONS, check_positions, row_starts
from prompt_ops.ops.validation import check_embed_sizes, check_scale, check_token_data, validate_embed_call

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# torch backend
# ----------------------------------------------------------------------------------------------------------------


def dept_embed_fwd_torch(
    input_ids: Tensor,
    weight: Tensor,
    prompt: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    attention_mask: Tensor | None,
    scale: float,
    starts: Tensor | None = None,
    offset_rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Eager forward writing into preallocated outputs; same contract as the Triton launcher. ``starts`` ``(B,)``
    int64 shifts each row's offset rows (None: unshifted); only the first ``offset_rows`` rows of ``A`` can be
    reached (None: all; see :func:`covered_rows`)."""
    batch, seq_len = input_ids.shape
    num_prompt, hidden = prompt.shape
    total = num_prompt + seq_len
    out = weight.new_empty((batch, total, hidden))
    out[:, :num_prompt] = prompt  # broadcast over the batch, cast to weight.dtype
    tokens = torch.nn.functional.embedding(input_ids, weight)  # (B, L, d)
    if lora_a is None:
        out[:, num_prompt:] = tokens
    elif starts is None:
        offset = torch.mm(lora_a[:seq_len], lora_b).mul_(scale)  # (L, d), broadcast over the batch
        torch.add(tokens, offset, out=out[:, num_prompt:])  # computed in the offset's precision, rounded once
    else:
        rows = lora_a.shape[0] if offset_rows is None else offset_rows
        table = lora_a.new_zeros((rows + 1, hidden))  # Q[:rows] and a zero row for the positions outside
        torch.mm(lora_a[:rows], lora_b, out=table[:rows]).mul_(scale)
        index = torch.arange(seq_len, device=starts.device) + starts[:, None]  # (B, L) A-row of each token
        index = torch.where((index >= 0) & (index < rows), index, rows)
        offset = torch.nn.functional.embedding(index, table)  # (B, L, d)
        torch.add(tokens, offset, out=out[:, num_prompt:])
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    mask = torch.ones((batch, total), dtype=mask_dtype, device=weight.device)
    if attention_mask is not None:
        mask[:, num_prompt:] = attention_mask
    return out, mask


def dept_embed_bwd_torch(
    grad_out: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    num_prompt: int,
    scale: float,
    starts: Tensor | None = None,
    offset_rows: int | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Eager backward: batch sums first, then two skinny matmuls (see ``prompt_ops.kernels.dept_embed``); with
    ``starts`` the batch sum is the shifted gather-sum ``G'`` over the A-rows the tokens reach."""
    acc = accumulate_dtype(grad_out.dtype)
    grad_prompt = grad_out[:, :num_prompt].sum(0, dtype=acc)  # (m, d)
    if lora_a is None:
        return grad_prompt, None, None
    seq_len = grad_out.shape[1] - num_prompt
    if starts is None:
        rows = seq_len
        summed = grad_out[:, num_prompt:].sum(0, dtype=acc)  # G (L, d)
    else:
        rows = lora_a.shape[0] if offset_rows is None else offset_rows
        summed = shifted_sum(grad_out[:, num_prompt:], starts, rows, acc)  # G' (rows, d)
    grad_a = torch.zeros(lora_a.shape, dtype=acc, device=grad_out.device)
    torch.mm(summed, lora_b.to(acc).t(), out=grad_a[:rows]).mul_(scale)  # s * G @ B^T
    grad_b = torch.mm(lora_a[:rows].to(acc).t(), summed).mul_(scale)  # s * A[:rows]^T @ G
    return grad_prompt, grad_a, grad_b


def covered_rows(seq_len: int, max_length: int, starts_nonpositive: bool) -> int:
    """The rows of ``A`` that shifted tokens can reach: ``[0, L)`` when no start is positive (column ``t`` then sits
    at most at ``t``), else all ``L_max``."""
    return min(seq_len, max_length) if starts_nonpositive else max_length


def shifted_sum(grad_tokens: Tensor, starts: Tensor, rows: int, acc: torch.dtype) -> Tensor:
    """``G'[j] = sum_b grad_tokens[b, j - starts[b]]`` over the columns inside ``[0, L)``, ``(rows, d)`` in ``acc``:
    a gather then a batch sum (deterministic, no scatter)."""
    return shifted_rows(grad_tokens, starts, rows).sum(0, dtype=acc)


def shifted_rows(grad_tokens: Tensor, starts: Tensor, rows: int) -> Tensor:
    """``(B, rows, d)``: row ``b`` holds ``grad_tokens[b, j - starts[b]]`` at A-row ``j``, zero where that column is
    outside ``[0, L)`` (the per-row terms of :func:`shifted_sum`, a gather, no scatter)."""
    batch, seq_len, hidden = grad_tokens.shape
    if seq_len == 0:
        return grad_tokens.new_zeros((batch, rows, hidden))
    column = torch.arange(rows, device=starts.device) - starts[:, None]  # (B, rows): the column at A-row j
    inside = (column >= 0) & (column < seq_len)
    index = torch.where(inside, column, 0)[:, :, None].expand(batch, rows, hidden)
    gathered = torch.gather(grad_tokens, 1, index)  # (B, rows, d)
    return torch.where(inside[:, :, None], gathered, 0)


# ----------------------------------------------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------------------------------------------


@custom_op("prompt_ops::dept_embed_fwd")
def dept_embed_fwd_op(
    input_ids: Tensor,
    weight: Tensor,
    prompt: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    attention_mask: Tensor | None,
    scale: float,
    check_ids: bool,
    backend: str,
    starts: Tensor | None = None,
    starts_nonpositive: bool = False,
) -> tuple[Tensor, Tensor]:
    """Forward custom op; the data checks (``check_ids``) run here so that they also guard compiled graphs.
    ``starts`` ``(B,)`` int64 shifts each row's offset rows (None: unshifted); ``starts_nonpositive`` promises that
    no start is positive (the string conventions), so the backward covers only ``A[:L]``."""
    if check_ids:
        check_token_data(input_ids, weight.shape[0], attention_mask)
    if backend == "triton":
        from prompt_ops.kernels.dept_embed import dept_embed_fwd

        return dept_embed_fwd(input_ids, weight, prompt, lora_a, lora_b, attention_mask, scale, starts=starts)
    rows = None if lora_a is None else covered_rows(input_ids.shape[1], lora_a.shape[0], starts_nonpositive)
    return dept_embed_fwd_torch(input_ids, weight, prompt, lora_a, lora_b, attention_mask, scale, starts, rows)


@dept_embed_fwd_op.register_fake
def _dept_embed_fwd_fake(
    input_ids, weight, prompt, lora_a, lora_b, attention_mask, scale, check_ids, backend, starts=None,
    starts_nonpositive=False,
):  # fmt: skip
    return fake_embed_outputs(input_ids, weight, *prompt.shape, attention_mask)


@custom_op("prompt_ops::dept_embed_bwd")
def dept_embed_bwd_op(
    grad_out: Tensor,
    lora_a: Tensor | None,
    lora_b: Tensor | None,
    num_prompt: int,
    scale: float,
    backend: str,
    starts: Tensor | None = None,
    starts_nonpositive: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward custom op: fp32 (fp64 for fp64 inputs) ``(d_prompt, d_lora_a, d_lora_b)``; the last two are empty
    tensors when there is no offset (a custom op cannot return None). ``starts`` as in the forward."""
    rows = None if lora_a is None else covered_rows(grad_out.shape[1] - num_prompt, lora_a.shape[0], starts_nonpositive)
    if backend == "triton":
        from prompt_ops.kernels.dept_embed import dept_embed_bwd

        grads = dept_embed_bwd(grad_out, lora_a, lora_b, num_prompt, scale, starts=starts, offset_rows=rows)
    else:
        grads = dept_embed_bwd_torch(grad_out, lora_a, lora_b, num_prompt, scale, starts, rows)
    grad_prompt, grad_a, grad_b = grads
    if grad_a is None:  # two distinct empties: custom-op outputs may not alias each other
        grad_a, grad_b = (grad_out.new_empty((0,), dtype=grad_prompt.dtype) for _ in range(2))
    return grad_prompt, grad_a, grad_b


@dept_embed_bwd_op.register_fake
def _dept_embed_bwd_fake(grad_out, lora_a, lora_b, num_prompt, scale, backend, starts=None, starts_nonpositive=False):
    acc = accumulate_dtype(grad_out.dtype)
    grad_prompt = grad_out.new_empty((num_prompt, grad_out.shape[2]), dtype=acc)
    if lora_a is None:
        return grad_prompt, grad_out.new_empty((0,), dtype=acc), grad_out.new_empty((0,), dtype=acc)
    return grad_prompt, lora_a.new_empty(lora_a.shape, dtype=acc), lora_b.new_empty(lora_b.shape, dtype=acc)


def _setup_context(ctx, inputs, output):
    _, _, prompt, lora_a, lora_b, _, scale, _, backend, starts, starts_nonpositive = inputs  # defaults filled in
    ctx.save_for_backward(lora_a, lora_b, starts)
    ctx.num_prompt = prompt.shape[0]
    ctx.prompt_dtype = prompt.dtype
    ctx.scale = scale
    ctx.backend = backend
    ctx.starts_nonpositive = starts_nonpositive


def _backward(ctx, grad_embeds, _grad_mask):
    lora_a, lora_b, starts = ctx.saved_tensors
    grad_prompt, grad_a, grad_b = dept_embed_bwd_op(
        grad_embeds, lora_a, lora_b, ctx.num_prompt, ctx.scale, ctx.backend, starts, ctx.starts_nonpositive
    )
    grad_prompt = grad_prompt.to(ctx.prompt_dtype)
    if lora_a is None:
        grad_a = grad_b = None
    else:
        grad_a, grad_b = grad_a.to(lora_a.dtype), grad_b.to(lora_b.dtype)
    return None, None, grad_prompt, grad_a, grad_b, None, None, None, None, None, None


dept_embed_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------------
# public entries
# ----------------------------------------------------------------------------------------------------------------


def check_lora_shapes(
    lora_a: Tensor, lora_b: Tensor, seq_len: int | None, hidden: int, *, method: str,
    width_source: str = "weight (V, d)", layouts: tuple[str, str] = ("(L_max, r)", "(r, d)"),
) -> None:  # fmt: skip
    """``lora_a (L_max, r)`` with ``r >= 1`` and ``L_max >= seq_len``, ``lora_b (r, d)``: DePT's and EPT's pair.
    ``method`` names the caller's method in the messages; ``width_source`` the argument that gives ``d``;
    ``seq_len=None`` sets no length limit (explicit row starts: columns past ``L_max`` get no offset). Stacked
    pairs (leading dimensions, e.g. a bank's ``(N, L_max, r_max)`` and ``(N, r_max, d)``) are checked on their last
    two dimensions, the leading ones shared; ``layouts`` names the two shapes in the messages."""
    lead, (max_length, rank) = tuple(lora_a.shape[:-2]), lora_a.shape[-2:]
    if rank == 0:
        raise ValueError(f"lora_a must have shape {layouts[0]} with r >= 1, got {tuple(lora_a.shape)}")
    if lora_b.shape != (*lead, rank, hidden):
        raise ValueError(
            f"lora_b must have shape {layouts[1]} = {(*lead, rank, hidden)} to match lora_a {layouts[0]} = "
            f"{tuple(lora_a.shape)} and {width_source}, got {tuple(lora_b.shape)}"
        )
    if seq_len is not None and seq_len > max_length:
        raise ValueError(
            f"input_ids has L = {seq_len} tokens but lora_a has L_max = {max_length} rows: the sequence is "
            f"longer than {method}'s max_length; truncate the input or build {method} with max_length >= {seq_len}"
        )


def resolve_positions(
    positions: object, input_ids: Tensor, attention_mask: Tensor | None
) -> tuple[Tensor | None, bool, bool]:
    """The ``positions`` argument of the offset ops as ``(starts, starts_nonpositive, limited)``: the ``(B,)`` int64
    row starts (None: every row starts at 0), whether no start can be positive, and whether inputs longer than
    ``L_max`` are refused (the string conventions) or simply get no offset past it (explicit starts)."""
    if isinstance(positions, torch.Tensor):
        if positions.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"positions must be a (B,) int64 or int32 tensor of row starts, got {positions.dtype}")
        if tuple(positions.shape) != (input_ids.shape[0],):
            raise ValueError(
                f"positions must have shape (B,) = ({input_ids.shape[0]},) (one start per row of input_ids), got "
                f"{tuple(positions.shape)}"
            )
        if positions.device != input_ids.device:
            raise ValueError(f"positions must be on input_ids' device {input_ids.device}, got {positions.device}")
        return positions.to(torch.int64), False, False
    if not isinstance(positions, str):
        raise TypeError(
            f"positions must be one of {POSITIONS} or a (B,) integer tensor of row starts, got "
            f"{type(positions).__name__}"
        )
    return row_starts(attention_mask, check_positions(positions)), True, True


def _run(input_ids, weight, prompt, lora, attention_mask, scale, backend, check_ids, positions="absolute"):
    """Validate, pick the backend, call the forward op. ``lora`` is ``(lora_a, lora_b)`` or None (no offset, so
    ``positions`` is moot)."""
    params = {"prompt": (prompt, 2, "(m, d)")}
    if lora is not None:
        params.update({"lora_a": (lora[0], 2, "(L_max, r)"), "lora_b": (lora[1], 2, "(r, d)")})
    backend = validate_embed_call(input_ids, weight, attention_mask, backend, params)
    lora_a, lora_b = lora if lora is not None else (None, None)
    starts, nonpositive = None, False
    if lora is not None:
        starts, nonpositive, limited = resolve_positions(positions, input_ids, attention_mask)
        seq_len = input_ids.shape[1] if limited else None
        check_lora_shapes(lora_a, lora_b, seq_len, weight.shape[1], method="DePT")
    check_embed_sizes(input_ids, weight, prompt.shape[0], f"prompt (m, d) = {tuple(prompt.shape)}", attention_mask)
    return dept_embed_fwd_op(
        input_ids, weight, prompt, lora_a, lora_b, attention_mask, scale, resolve_check_ids(check_ids), backend,
        starts, nonpositive,
    )  # fmt: skip


def prompt_embed(
    input_ids: Tensor,
    weight: Tensor,
    prompt: Tensor,
    *,
    attention_mask: Tensor | None = None,
    backend: str | None = None,
    check_ids: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Vanilla prompt-tuning input: the soft prompt prepended to the token embeddings.

    Args:
        input_ids: ``(B, L)`` int64 or int32 token ids in ``[0, V)``.
        weight: ``(V, d)`` frozen word-embedding table (fp32, fp16 or bf16; must not require grad).
        prompt: ``(m, d)`` trainable soft prompt (usually fp32). The parameters of every method (here the prompt,
            elsewhere also its factors) share one floating dtype: a mix raises TypeError on both backends.
        attention_mask: optional ``(B, L)`` mask of any bool/int/float dtype (finite values).
        backend: ``"auto"`` (default, or ``$PROMPT_OPS_BACKEND``), ``"triton"`` or ``"torch"``.
        check_ids: validate that ids are in range and that a float ``attention_mask`` is finite (default, or
            ``$PROMPT_OPS_CHECK_IDS``). The check reads the ids on the host (one sync); pass ``False`` when
            capturing CUDA graphs. Unchecked out-of-range ids give zero rows in the Triton kernel instead of an
            illegal memory access (the torch backend raises torch's own IndexError).

    Returns:
        ``inputs_embeds (B, m+L, d)`` in ``weight.dtype`` (rows ``0..m-1`` the prompt) and the mask ``(B, m+L)``:
        ones for the prompt, then ``attention_mask`` (ones if None), in its dtype (int64 if None).
        ``B = 0`` gives empty outputs; ``L = 0`` gives the prompt alone.
    """
    return _run(input_ids, weight, prompt, None, attention_mask, 0.0, backend, check_ids)


def dept_embed(
    input_ids: Tensor,
    weight: Tensor,
    prompt: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    *,
    scale: float,
    attention_mask: Tensor | None = None,
    backend: str | None = None,
    check_ids: bool | None = None,
    positions: str | Tensor = "tokens",
) -> tuple[Tensor, Tensor]:
    """DePT input (Shi & Lipani, ICLR 2024): prompt tuning plus a position-wise low-rank offset.

    Row ``m + t`` of the output is ``(weight[input_ids[b, t]].float() + scale * lora_a[p] @ lora_b)`` rounded once
    to ``weight.dtype``, where ``p = start[b] + t`` is the token's position; rows ``0..m-1`` are ``prompt``.
    ``lora_a`` is ``(L_max, r)`` and ``lora_b`` ``(r, d)`` (trainable, usually fp32); DePT's scale is
    ``lora_alpha / sqrt(r)``. Gradients reach ``prompt``, ``lora_a`` and ``lora_b`` (reduced over the batch first;
    rows of ``lora_a`` no token sits at get zero). Other arguments and the outputs as in :func:`prompt_embed`.

    ``positions`` says where each row starts:

    - ``"tokens"`` (default): positions count real tokens; the first non-padding token of a row is at 0 whatever
      padding precedes it (``start[b]`` = minus the row's leading zeros of ``attention_mask``; no mask: 0). A
      sequence then gets the same offsets alone, left-padded or right-padded in any batch (batch invariance). Under
      right padding (or none) this is exactly the official output, so parity with the official code holds.
    - ``"absolute"``: a token's position is its column in the padded batch, pads included (``start[b] = 0``): the
      convention of the official decoder-only DePT setup, which left-pads every input to ``max_length``.
    - a ``(B,)`` int64 or int32 tensor of row starts on the ids' device, any values: column ``t`` gets row
      ``start[b] + t`` of ``lora_a``, no offset where that row is outside ``[0, L_max)``.

    With the two conventions ``L <= L_max`` is required; with explicit starts ``L`` is not limited.
    """
    scale = check_scale(scale)
    return _run(input_ids, weight, prompt, (lora_a, lora_b), attention_mask, scale, backend, check_ids, positions)
