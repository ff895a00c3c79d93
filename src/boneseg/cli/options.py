"""Option-value parsers shared by several commands (each error names the option)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from boneseg.errors import UsageError


def parse_floats(values: str | Sequence[str] | None, option: str) -> list[float] | None:
    """``"0.5,0.3"`` or ``["0.5,0.3", "0.2"]`` (a repeated option) -> [0.5, 0.3, 0.2]; None/empty -> None.

    Raises:
        UsageError: a part that is not a finite number (nan and ±inf included), naming `option`.
    """
    if not values:
        return None
    text = values if isinstance(values, str) else " ".join(values)
    out = []
    for part in text.replace(",", " ").split():
        try:
            out.append(float(part))
        except ValueError:
            raise UsageError(f"{option} must be comma-separated numbers: {part!r} is not a number") from None
        if not math.isfinite(out[-1]):
            raise UsageError(f"{option} {part}: must be a finite number")
    return out


def parse_size(text: str) -> tuple[int, int]:
    """``2048`` -> (2048, 2048); ``1024x2048`` -> (1024, 2048) as (height, width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise UsageError(f"--size {text!r}: expected a positive integer or HxW, e.g. 2048 or 2048x2048")
    return parts[0], parts[1]
