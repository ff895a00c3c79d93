"""What several commands share: option-value parsers (each error names the option) and option blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any

import typer

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


# output and run options
# -----------------------------------------------------------------------------------------------------
# The options many commands share, spelled once: the flags, short forms, placeholders and defaults are
# the same everywhere; each command says in its own words what the option does there.


def out_option(help: str, metavar: str | None = "DIR", default: Any = ..., **kwargs: Any) -> Any:
    """``--out/-o``: what the command writes (required unless a `default` is given)."""
    return typer.Option(default, "--out", "-o", metavar=metavar, help=help, **kwargs)


def force_option(help: str = "Overwrite existing outputs.") -> Any:
    """``--force``: replace existing outputs (never before every check has passed: `boneseg.io`)."""
    return typer.Option(False, "--force", help=help)


def json_option(help: str) -> Any:
    """``--json``: the result as JSON on stdout."""
    return typer.Option(False, "--json", help=help)


def threshold_option(help: str, default: str | None = None, **kwargs: Any) -> Any:
    """``--threshold/-t T|FILE.json``: a probability cut-off, or per-class ones (`boneseg.probs.read_thresholds`)."""
    return typer.Option(default, "--threshold", "-t", metavar="T|FILE.json", help=help, **kwargs)


def workers_option(help: str = "Worker processes (default: all cores).", default: int | None = None) -> Any:
    """``--workers/-j N``: processes (`boneseg.errors.check_workers`); None: the library's default."""
    return typer.Option(default, "--workers", "-j", help=help, show_default=default is not None)


def images_option(help: str, metavar: str = "DIR|DATA") -> Any:
    """``--images``: an image folder, or a dataset root (its test/DCM)."""
    return typer.Option(None, "--images", metavar=metavar, show_default=False, help=help)


def gt_option(help: str, default: Any = None) -> Any:
    """``--gt DATA``: a dataset root whose train labels are the truth (required with ``default=...``)."""
    return typer.Option(default, "--gt", metavar="DATA", show_default=False, help=help)


def splits_option(help: str = "Splits file from `boneseg split`.", default: Any = None) -> Any:
    """``--splits SPLITS.json``: a splits file (``boneseg split``)."""
    return typer.Option(default, "--splits", metavar="SPLITS.json", show_default=False, help=help)


def fold_option(help: str) -> Any:
    """``--fold K``: one fold of a splits file."""
    return typer.Option(None, "--fold", show_default=False, help=help)


def image_size_option(help: str) -> Any:
    """``--size N``: the side of images a CSV's run-length masks are decoded at when no image gives its own."""
    return typer.Option(2048, "--size", help=help)


class Vote(str, Enum):
    """``--vote``: `boneseg.names.VOTES`."""

    hard = "hard"
    soft = "soft"


def vote_option(help: str) -> Any:
    """``--vote hard|soft`` (None: inferred from the inputs, `boneseg.workflows.ensemble.resolve_vote`)."""
    return typer.Option(None, "--vote", show_default=False, help=help)


def calibrations_option(help: str) -> Any:
    """``--calibration FILE.json|none``, repeated: one calibration per input, in input order."""
    return typer.Option(None, "--calibration", metavar="FILE.json|none", show_default=False, help=help)
