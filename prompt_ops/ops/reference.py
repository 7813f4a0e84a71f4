"""Plain-PyTorch ground truth for every op: the single source of truth in tests and the bench's naive baseline.

Written for clarity and the way the official code writes it (DePT, ``peft/peft_model.py``: the whole ``A @ B`` is
formed, scaled, repeated over the batch and added; then the prompt is concatenated). Autograd gives the gradients.
Offsets are accumulated in the parameters' precision (fp32 for fp32 masters) and rounded once to the table dtype.
"""

from __future__ import annotations

import math

import torch


def extend_mask(attention_mask: torch.Tensor | None, batch: int, seq_len: int, num_prompt: int) -> torch.Tensor:
    """``cat(ones(B, m), attention_mask)``; ones of int64 stand in for a missing mask."""
    if attention_mask is None:
        attention_mask = torch.ones(batch, seq_len, dtype=torch.int64)
    ones = torch.ones(batch, num_prompt, dtype=attention_mask.dtype, device=attention_mask.device)
    return torch.cat([ones, attention_mask], dim=1)


def row_starts(attention_mask: torch.Tensor | None, positions: str | torch.Tensor) -> torch.Tensor | None:
    """The position of column 0 of each row, ``(B,)`` int64, counted naively: ``"tokens"`` gives minus the zeros
    before the row's first non-zero mask entry (0 for a row of zeros), ``"absolute"`` or no mask None (every row at
    0), a tensor its own values."""
    if isinstance(positions, torch.Tensor):
        return positions.long()
    if positions == "absolute" or attention_mask is None:
        return None
    starts = []
    for row in attention_mask.tolist():
        pads = 0
        while pads < len(row) and row[pads] == 0:
            pads += 1
        starts.append(-pads if pads < len(row) else 0)
    return torch.tensor(starts, dtype=torch.int64, device=attention_mask.device)


def dept_embed(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    prompt: torch.Tensor,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    scale: float,
    attention_mask: torch.Tensor | None = None,
    positions: str | torch.Tensor = "tokens",
) -> tuple[torch.Tensor, torch.Tensor]:
    """DePT input: ``cat(prompt, W[ids] + scale * (A @ B)[:L])`` and the extended mask. No offset when
    ``lora_a`` is None (vanilla prompt tuning). Rows that start elsewhere (:func:`row_starts`) take the rows of
    ``A @ B`` at their tokens' positions ``start + t``, and no offset where a position is outside ``[0, L_max)``."""
    batch, seq_len = input_ids.shape
    inputs_embeds = weight[input_ids]  # (B, L, d)
    if lora_a is not None:
        lora_embedding = scale * (lora_a @ lora_b)  # (L_max, d)
        starts = row_starts(attention_mask, positions)
        if starts is None:
            offset = lora_embedding[:seq_len].repeat(batch, 1, 1)  # (B, L, d), as the official code materialises it
        else:
            max_length = lora_embedding.shape[0]
            position = starts[:, None] + torch.arange(seq_len, device=input_ids.device)  # (B, L)
            inside = (position >= 0) & (position < max_length)
            offset = lora_embedding[position.clamp(0, max(max_length - 1, 0))] * inside[:, :, None]  # (B, L, d)
        inputs_embeds = (inputs_embeds.to(offset.dtype) + offset).to(weight.dtype)
    prompts = prompt.to(weight.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, m, d)
    embeds = torch.cat([prompts, inputs_embeds], dim=1)
    mask = extend_mask(attention_mask, batch, seq_len, prompt.shape[0])
    return embeds, mask.to(input_ids.device)


def mixed_dept_embed(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    prompts: torch.Tensor,
    prompt_lengths: torch.Tensor,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    scales: torch.Tensor,
    adapter_index: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    positions: str | torch.Tensor = "tokens",
    slots: str = "front",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Many prompt-tuning/DePT adapters in one batch, written row by row. Adapter ``a`` of a bank holds its prompt
    in ``prompts[a, :prompt_lengths[a]]`` (``prompts (N, m_max, d)``), its low-rank pair zero-padded in
    ``lora_a[a] (L_max, r_max)`` and ``lora_b[a] (r_max, d)`` (None: no offsets in the bank) and its scale in
    ``scales[a]``. Row ``b`` is :func:`dept_embed` of adapter ``a = adapter_index[b]`` on that row alone, with
    ``m_max - m_a`` zero slots, masked out, in front of it, so that every row has ``m_max`` prompt columns and a
    sequence's prompt sits right before its input as it does alone; ``a = -1`` is the plain base model (every slot
    masked, no offset). ``slots="after_prompt"`` puts the masked slots between the prompt and the input instead
    (``[prompt_a, slots, input]``: the prompt from column 0, as a head reading column 0 needs); the input stays at
    columns ``m_max + t`` either way. Zero padding adds nothing: padded ranks multiply zeros, padded ``A`` rows give
    no offset."""
    batch, seq_len = input_ids.shape
    rows, masks = [], []
    for b in range(batch):
        adapter = int(adapter_index[b])
        mask = None if attention_mask is None else attention_mask[b : b + 1]
        where = positions[b : b + 1] if isinstance(positions, torch.Tensor) else positions
        if adapter < 0:
            embeds, row_mask = dept_embed(input_ids[b : b + 1], weight, prompts[0, :0], None, None, 0.0, mask, where)
        else:
            pair = (None, None) if lora_a is None else (lora_a[adapter], lora_b[adapter])
            prompt = prompts[adapter, : int(prompt_lengths[adapter])]
            embeds, row_mask = dept_embed(
                input_ids[b : b + 1], weight, prompt, *pair, float(scales[adapter]), mask, where
            )  # fmt: skip
        rows.append(embeds)
        masks.append(row_mask)
    return place_slots(rows, masks, prompts.shape[1], seq_len, slots)


def place_slots(
    rows: list[torch.Tensor], masks: list[torch.Tensor], num_slots: int, seq_len: int, slots: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixed batch from its rows, each ``(1, m_b + L, d)`` with its ``(1, m_b + L)`` mask as its adapter alone
    gives it (``m_b = 0`` on a base-model row): ``m_max - m_b`` zero slots, masked out, go in front of the row's
    prompt (``slots="front"``) or between its prompt and its input (``"after_prompt"``), so every row has
    ``num_slots = m_max`` prompt columns and its input at columns ``m_max + t``."""
    out_rows, out_masks = [], []
    for embeds, row_mask in zip(rows, masks, strict=True):
        pad = num_slots + seq_len - embeds.shape[1]
        at = 0 if slots == "front" else embeds.shape[1] - seq_len  # the slots go before the prompt or after it
        zeros = embeds.new_zeros(1, pad, embeds.shape[2])
        out_rows.append(torch.cat([embeds[:, :at], zeros, embeds[:, at:]], dim=1))
        out_masks.append(torch.cat([row_mask[:, :at], row_mask.new_zeros(1, pad), row_mask[:, at:]], dim=1))
    return torch.cat(out_rows), torch.cat(out_masks)


def prompt_embed(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vanilla prompt tuning input (PEFT ``PROMPT_TUNING``): ``cat(prompt, W[ids])`` and the extended mask."""
    return dept_embed(input_ids, weight, prompt, None, None, 0.0, attention_mask)


def adept_embed(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    prompt: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    w_up: torch.Tensor,
    b_up: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    dropout_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ADePT input as the official code writes it (``PROMPT_TUNING_LORAX``): ``temp = E @ A + a``, dropout on
    ``temp`` (before the ReLU), ``E + relu(temp) @ B + b``, prompt prepended. ``dropout_scale`` is the ``(B*L, r)``
    inverted-dropout multiplier (``0`` or ``1/(1-p)``), or None for eval."""
    batch, seq_len = input_ids.shape
    inputs_embeds = weight[input_ids]  # (B, L, d)
    precise = inputs_embeds.to(torch.promote_types(weight.dtype, w_down.dtype))
    temp = precise @ w_down + b_down  # (B, L, r)
    if dropout_scale is not None:
        temp = temp * dropout_scale.view(batch, seq_len, -1)
    inputs_embeds = (precise + torch.relu(temp) @ w_up + b_up).to(weight.dtype)
    prompts = prompt.to(weight.dtype).unsqueeze(0).expand(batch, -1, -1)
    embeds = torch.cat([prompts, inputs_embeds], dim=1)
    mask = extend_mask(attention_mask, batch, seq_len, prompt.shape[0])
    return embeds, mask.to(input_ids.device)


def mixed_adept_embed(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    prompts: torch.Tensor,
    prompt_lengths: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    w_up: torch.Tensor,
    b_up: torch.Tensor,
    adapter_index: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    slots: str = "front",
    dropout_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Many ADePT adapters in one batch, written row by row. Adapter ``a`` holds its prompt in
    ``prompts[a, :prompt_lengths[a]]`` and its FFN zero-padded over ranks in ``w_down[a] (d, r_max)``,
    ``b_down[a] (r_max,)``, ``w_up[a] (r_max, d)``, ``b_up[a] (d,)``. Row ``b`` is :func:`adept_embed` of adapter
    ``a = adapter_index[b]`` on that row alone, its slots placed as in :func:`mixed_dept_embed`
    (:func:`place_slots`); ``a = -1`` is the plain base model (every slot masked, plain tokens). Padded ranks add
    nothing (``relu(0) = 0`` meets a zero row of ``w_up``). ``dropout_scale`` is the ``(B, L, r_max)``
    inverted-dropout multiplier (``0`` or ``1/(1-p_a)``), or None for eval."""
    batch, seq_len = input_ids.shape
    rows, masks = [], []
    for b in range(batch):
        adapter = int(adapter_index[b])
        ids = input_ids[b : b + 1]
        mask = None if attention_mask is None else attention_mask[b : b + 1]
        if adapter < 0:
            embeds, row_mask = prompt_embed(ids, weight, prompts[0, :0], mask)
        else:
            prompt = prompts[adapter, : int(prompt_lengths[adapter])]
            ffn = (w_down[adapter], b_down[adapter], w_up[adapter], b_up[adapter])
            scale = None if dropout_scale is None else dropout_scale[b].reshape(seq_len, -1)
            embeds, row_mask = adept_embed(ids, weight, prompt, *ffn, mask, scale)
        rows.append(embeds)
        masks.append(row_mask)
    return place_slots(rows, masks, prompts.shape[1], seq_len, slots)


def lamp_prompt(u: torch.Tensor, q: torch.Tensor, v: torch.Tensor, pool: int) -> torch.Tensor:
    """LAMP prompt as DESIGN.md §7 defines it: the compressed outer product ``(U * q) @ V`` (``l`` rows), then
    average pooling with window = stride = ``pool`` over the rows. Built in full, then pooled."""
    prompt = (u * q) @ v  # (l, d): sum over i of q_i * outer(U[:, i], V[i])
    rows, hidden = prompt.shape
    return prompt.view(rows // pool, pool, hidden).mean(dim=1)


def lamp_embed(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    u: torch.Tensor,
    q: torch.Tensor,
    v: torch.Tensor,
    pool: int,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LAMP input: the pooled prompt prepended to the token embeddings (prompt-tuning semantics, no offset)."""
    return prompt_embed(input_ids, weight, lamp_prompt(u, q, v, pool), attention_mask)


def ept_prompt(
    prompt: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    w_down: torch.Tensor,
    w_up: torch.Tensor,
    w_gate: torch.Tensor,
    b_gate: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """EPT prompt as DESIGN.md §7 defines it, term by term: ``Q = scale * A @ B``; prompt fusion
    ``Pf = Ps + softmax(Ps Q^T / sqrt(d)) Q``; ``K`` subspace projections ``P_k = Pf @ Wd_k @ Wu_k``; a gate
    ``g = softmax(mean_rows(Pf) @ Wg + bg)``; result ``Pf + sum_k g_k P_k``."""
    hidden = prompt.shape[1]
    knowledge = scale * (lora_a @ lora_b)  # (L_max, d)
    attention = torch.softmax(prompt @ knowledge.T / math.sqrt(hidden), dim=-1)  # (s, L_max)
    fused = prompt + attention @ knowledge  # (s, d)
    gate = torch.softmax(fused.mean(dim=0) @ w_gate + b_gate, dim=-1)  # (K,)
    result = fused
    for k in range(w_down.shape[0]):
        result = result + gate[k] * (fused @ w_down[k] @ w_up[k])
    return result


def ept_embed(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    prompt: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    w_down: torch.Tensor,
    w_up: torch.Tensor,
    w_gate: torch.Tensor,
    b_gate: torch.Tensor,
    scale: float,
    attention_mask: torch.Tensor | None = None,
    positions: str | torch.Tensor = "tokens",
) -> tuple[torch.Tensor, torch.Tensor]:
    """EPT input: the EPT prompt prepended, and DePT's offset ``scale * A[p] @ B`` added to the input token at
    position ``p`` (as in :func:`dept_embed`)."""
    full_prompt = ept_prompt(prompt, lora_a, lora_b, w_down, w_up, w_gate, b_gate, scale)
    return dept_embed(input_ids, weight, full_prompt, lora_a, lora_b, scale, attention_mask, positions)


def lpt_prompt(
    hidden: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    w_up: torch.Tensor,
    b_up: torch.Tensor,
    num_tokens: int,
    index: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    mode: str = "naive",
    dropout_scale: torch.Tensor | None = None,
    source_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """LPT's prompt generators as the official code writes them (``xyltt/LPT``), ``(B, n, d)``.

    NPG (``naive``): ``dropout(relu(hidden[b, index[b]] @ w_down + b_down) @ w_up + b_up).view(B, n, d)``; without
    ``index``, each sample's first valid row.
    APPG (``pool``) and MPPG (``max``): ``Z = hidden @ w_down + b_down``; each sample's pooled rows (its valid rows,
    wherever they are, or only the first ``source_lengths[b]`` of them) go through ``nn.AdaptiveAvgPool1d(n)``
    (APPG) or ``nn.AdaptiveMaxPool1d(n)`` (MPPG) over the length, as the official generator pools ``Z[b, :len]``;
    ReLU; ``@ w_up + b_up``; dropout. ``dropout_scale`` holds the multipliers (``0`` or ``1/(1-p)``) in the
    output's layout, or None.
    """
    batch, seq_len, hidden_size = hidden.shape

    def valid_rows() -> list[torch.Tensor]:  # each sample's valid rows, in order
        if attention_mask is None:
            return [torch.arange(seq_len)] * batch
        return [torch.nonzero(attention_mask[b].cpu()).flatten() for b in range(batch)]

    if mode == "naive":
        if index is None:
            firsts = [int(rows[0]) if len(rows) else 0 for rows in valid_rows()]
            index = torch.tensor(firsts, dtype=torch.long, device=hidden.device)
        picked = hidden[torch.arange(batch, device=hidden.device), index]  # (B, d)
        out = torch.relu(picked @ w_down + b_down) @ w_up + b_up  # (B, n*d)
    else:
        pool = torch.nn.functional.adaptive_avg_pool1d if mode == "pool" else torch.nn.functional.adaptive_max_pool1d
        projected = hidden @ w_down + b_down  # (B, L, h)
        pooled = []
        for b, rows in enumerate(valid_rows()):
            if source_lengths is not None:
                rows = rows[: int(source_lengths[b])]
            block = projected[b, rows.to(hidden.device)]  # (len, h)
            pooled.append(pool(block.T.unsqueeze(0), num_tokens).squeeze(0).T)  # (n, h)
        pooled = torch.stack(pooled) if pooled else projected.new_empty((0, num_tokens, projected.shape[2]))
        out = torch.relu(pooled) @ w_up + b_up  # (B, n, d)
    out = out.reshape(batch, num_tokens, hidden_size)
    if dropout_scale is not None:
        out = out * dropout_scale.view(batch, num_tokens, hidden_size)
    return out


def mixed_lpt_prompt(
    hidden: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    w_up: torch.Tensor,
    b_up: torch.Tensor,
    adapter_index: torch.Tensor,
    num_tokens: list[int],
    hidden_sizes: list[int],
    mode: str = "naive",
    index: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    source_lengths: torch.Tensor | None = None,
    dropout_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """A stacked, zero-padded bank of LPT generators, one adapter per row, ``(B, n_max, d)``: row ``b`` of adapter
    ``a = adapter_index[b]`` is :func:`lpt_prompt` of adapter ``a``'s unpadded generator (its first
    ``hidden_sizes[a]`` ranks and ``W_a`` columns, ``n_a * d`` for NPG, ``d`` otherwise) on row ``b`` alone, in the
    last ``n_a = num_tokens[a]`` of ``n_max = max(num_tokens)`` columns; zeros elsewhere and on ``-1`` rows.
    ``dropout_scale (B, n_max, d)``: multipliers, each row's last ``n_a`` columns applied to its prompt."""
    batch, _, hidden_size = hidden.shape
    n_max = max(num_tokens)
    rows = []
    for b in range(batch):
        a = int(adapter_index[b])
        row = hidden.new_zeros((n_max, hidden_size), dtype=w_down.dtype)
        if a < 0:
            rows.append(row)
            continue
        count, rank = num_tokens[a], hidden_sizes[a]
        width = count * hidden_size if mode == "naive" else hidden_size
        one = slice(b, b + 1)
        prompt = lpt_prompt(
            hidden[one], w_down[a, :, :rank], b_down[a, :rank], w_up[a, :rank, :width], b_up[a, :width], count,
            index=None if index is None else index[one], attention_mask=None if attention_mask is None else
            attention_mask[one], mode=mode, dropout_scale=None if dropout_scale is None else
            dropout_scale[one, n_max - count:], source_lengths=None if source_lengths is None else source_lengths[one],
        )  # fmt: skip
        rows.append(torch.cat([row[: n_max - count], prompt[0]]))
    return torch.stack(rows) if rows else hidden.new_zeros((0, n_max, hidden_size), dtype=w_down.dtype)


def lpt_insert(
    prompt: torch.Tensor, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official insertion at layer ``k``: ``cat(P.to(hidden.dtype), hidden)`` and ``cat(ones(B, n), mask)``."""
    batch, num_tokens = prompt.shape[:2]
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    ones = attention_mask.new_ones((batch, num_tokens))
    return torch.cat([prompt.to(hidden.dtype), hidden], dim=1), torch.cat([ones, attention_mask], dim=1)
