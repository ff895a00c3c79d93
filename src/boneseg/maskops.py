"""Pure operations on 2-D masks shared by every layer: the bounding box of the foreground."""

from __future__ import annotations

import numpy as np

__all__ = ["bbox"]

_BLOCK_ROWS = 64


def _row_extent(mask: np.ndarray) -> tuple[int, int] | None:
    """First and one-past-last rows holding foreground (None when empty), touching as little as possible:
    ``argmax`` on booleans stops at the first True, so the rows above and below the object are skimmed
    at memory speed instead of reduced row by row."""
    h, w = mask.shape
    if not mask.flags.c_contiguous:
        rows = np.flatnonzero(mask.any(axis=1))
        return (int(rows[0]), int(rows[-1]) + 1) if rows.size else None
    flat = mask.reshape(-1)
    first = int(flat.argmax())
    if not flat[first]:
        return None
    r0 = first // w
    for end in range(h, r0, -_BLOCK_ROWS):  # from the bottom up, a block of rows at a time
        lo = max(end - _BLOCK_ROWS, r0)
        block = mask[lo:end]
        if block.reshape(-1).argmax() or block[0, 0]:
            return r0, lo + int(np.flatnonzero(block.any(axis=1))[-1]) + 1
    return r0, r0 + 1  # unreachable: row r0 holds `first`


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)``, the smallest box (exclusive ends) holding every nonzero pixel of a 2-D
    mask; None when the mask is empty. The cost follows the object, not the image."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if mask.dtype != np.bool_:
        mask = mask != 0
    rows = _row_extent(mask)
    if rows is None:
        return None
    r0, r1 = rows
    cols = np.flatnonzero(mask[r0:r1].any(axis=0))
    return r0, r1, int(cols[0]), int(cols[-1]) + 1
