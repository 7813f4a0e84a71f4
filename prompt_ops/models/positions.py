"""Model position ids for a prompted input: the prompt's ``0 .. m-1``, then the input's positions shifted by ``m``.

The input's positions follow the tuned model's ``positions`` option (:mod:`prompt_ops.ops.positions`): the user's
``position_ids`` when given (always honoured), else ``start[b] + t`` (``"tokens"``: counting real tokens) or ``t``
(``"absolute"``). Positions a shift would make negative (leading pads, whose outputs nobody reads) are clamped to
0 so that every position table lookup stays in range.

:func:`model_position_ids` puts the two together in the numbering of a model's position table, which starts at
``first`` (RoBERTa's at ``padding_idx + 1``; 0 for the others), and :func:`next_input_positions` gives each row's
position for the tokens that generation appends.
"""

from __future__ import annotations

import torch

from prompt_ops.ops.positions import row_starts

Tensor = torch.Tensor


def input_positions(
    attention_mask: Tensor | None,
    positions: str,
    shape: tuple[int, int],
    device: torch.device,
    position_ids: Tensor | None = None,
) -> Tensor:
    """``(B, L)`` (or the user's ``(1, L)``) int64 positions of the input tokens, the prompt excluded."""
    if position_ids is not None:
        return position_ids.to(torch.int64)
    columns = torch.arange(shape[1], dtype=torch.int64, device=device)[None, :]  # (1, L)
    starts = row_starts(attention_mask, positions)
    if starts is None:
        return columns.expand(shape[0], shape[1])
    return (columns + starts[:, None]).clamp_(min=0)  # (B, L)


def prompted_positions(
    input_position_ids: Tensor, num_prompt: int, lengths: Tensor | None = None, slots: str = "front"
) -> Tensor:
    """``(B, m + L)``: ``0 .. m-1`` for the prompt, then ``input_position_ids + m``. With ``lengths (B,)`` (each row's
    own prompt length ``m_b <= m``, a mixed-adapter batch), row ``b`` has ``m - m_b`` masked slots (at 0), in front
    of its prompt (``slots="front"``) or after it (``"after_prompt"``), its prompt at ``0 .. m_b-1`` and its input
    from ``m_b``."""
    batch = input_position_ids.shape[0]
    prompt = torch.arange(num_prompt, dtype=torch.int64, device=input_position_ids.device)
    if lengths is None:
        return torch.cat([prompt.expand(batch, num_prompt), input_position_ids + num_prompt], dim=1)
    lengths = lengths.to(device=input_position_ids.device, dtype=torch.int64)[:, None]  # (B, 1)
    row = prompt[None, :] - (num_prompt - lengths if slots == "front" else 0)  # (B, m): the prompt row of a column
    columns = torch.where((row >= 0) & (row < lengths), row, 0)
    return torch.cat([columns, input_position_ids.expand(batch, -1) + lengths], dim=1)


def model_position_ids(
    attention_mask: Tensor | None,
    positions: str,
    shape: tuple[int, int],
    device: torch.device,
    num_prompt: int,
    first: int = 0,
    position_ids: Tensor | None = None,
    lengths: Tensor | None = None,
    slots: str = "front",
) -> Tensor:
    """``(B or 1, m + L)`` position ids for a model whose position table starts at ``first``: ``first + p`` for
    :func:`prompted_positions`' ``p`` (``lengths`` and ``slots``: each row's own prompt length and where the masked
    slots go, as it takes them). The user's
    ``position_ids`` are in the model's own numbering (from ``first``), so they come out shifted by ``num_prompt``,
    with the prompt's ``first .. first+m-1`` in front."""
    if position_ids is not None:
        position_ids = position_ids.to(torch.int64) - first
    inputs = input_positions(attention_mask, positions, shape, device, position_ids)
    return prompted_positions(inputs, num_prompt, lengths, slots) + first


def next_input_positions(
    attention_mask: Tensor | None, positions: str, shape: tuple[int, int], device: torch.device
) -> Tensor:
    """``(B,)`` int64 input position (prompt excluded) of the token that follows column ``L - 1`` of each row:
    ``L + start[b]`` (``L - leading pads`` counting real tokens, ``L`` in the padded sequence)."""
    following = torch.full((shape[0],), shape[1], dtype=torch.int64, device=device)
    starts = row_starts(attention_mask, positions)
    return following if starts is None else following + starts.to(device)
