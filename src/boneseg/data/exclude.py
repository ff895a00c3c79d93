"""Image lists that leave images out (``eda --exclude FILE``, ``train --exclude FILE``).

A list is a CSV with an ``image_name`` column (``boneseg audit``'s ``suspects.csv``, trimmed or not, or a
submission) or a text file with one image per line (``#`` starts a comment); an image is named by its base
name (``image1661130828152.png``) or its path under ``train/DCM`` (``ID001/image1661130828152.png``).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from boneseg.data.layout import Sample
from boneseg.errors import DataError


def read_list(path: str | os.PathLike) -> set[str]:
    """The image names listed in `path`; `DataError` for a missing or unreadable file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"--exclude {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--exclude {path}: cannot read ({exc})") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if lines and "image_name" in [f.strip() for f in next(csv.reader([lines[0]]))]:
        return {
            row["image_name"].strip()
            for row in csv.DictReader(io.StringIO("\n".join(lines)))
            if (row.get("image_name") or "").strip()
        }
    return set(lines)


def exclude(samples: Sequence[Sample], path: str | os.PathLike | None) -> list[Sample]:
    """`samples` without those listed in `path` (all of them when `path` is None).

    Raises:
        DataError: a listed name that is no image of `samples` (a typo or another dataset's list).
    """
    if path is None:
        return list(samples)
    names = read_list(path)
    known = {s.image_name for s in samples} | {s.name for s in samples}
    unknown = sorted(names - known)
    if unknown:
        raise DataError(f"--exclude {path}: {len(unknown)} listed image(s) not in the dataset, e.g. {unknown[0]!r}")
    return [s for s in samples if s.image_name not in names and s.name not in names]
