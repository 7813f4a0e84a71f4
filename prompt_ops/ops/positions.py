"""Which position each token of a padded batch has: the ``positions`` option of the ops, modules and configs.

``"tokens"`` (the default): positions count real tokens. The first non-padding token of a row is at position 0
whatever padding precedes it, so a sequence gets the same positions alone, left-padded or right-padded in a batch,
and its outputs do not depend on its batch mates. ``"absolute"``: a token's position is its index in the padded
sequence, pads included (the convention of the official decoder-only DePT setup, which left-pads every input to
``max_length``). Under right padding (or no padding) both give the same positions.

Per row the rule is a shift: with ``start[b]`` the position of column 0 of row ``b``, the token in column ``t`` is
at position ``start[b] + t``. ``"tokens"`` gives ``start[b] = -(leading pads of row b)``; ``"absolute"`` gives 0.
Interior zeros of a mask (holes) keep their columns: only *leading* padding is skipped.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

POSITIONS = ("tokens", "absolute")


def check_positions(positions: object, name: str = "positions") -> str:
    """``"tokens"`` or ``"absolute"`` (a ``ValueError`` naming ``name`` otherwise)."""
    if not isinstance(positions, str) or positions not in POSITIONS:
        raise ValueError(f"{name} must be one of {POSITIONS}, got {positions!r}")
    return positions


def leading_pads(attention_mask: Tensor) -> Tensor:
    """``(B,)`` int64: the count of zeros before the first non-zero of each row of a ``(B, L)`` mask (0 for a row
    with no non-zero at all, and for ``L = 0``)."""
    batch, length = attention_mask.shape
    if length == 0:
        return torch.zeros(batch, dtype=torch.int64, device=attention_mask.device)
    # argmax returns the first maximal index; all-zero rows give 0.
    return (attention_mask != 0).to(torch.int8).argmax(dim=1)


def row_starts(attention_mask: Tensor | None, positions: str) -> Tensor | None:
    """``(B,)`` int64 position of column 0 of each row, or None when every row starts at 0 (``"absolute"``, or no
    mask to tell padding from)."""
    if positions == "absolute" or attention_mask is None:
        return None
    return -leading_pads(attention_mask)
