"""Submission CSVs: streaming writer, keyed reader and validator (``image_name,class,rle``).

Every CSV boneseg writes goes through `format_row` and every CSV it reads through `csv_rows`: fields are
quoted per RFC 4180 only when they hold a comma, quote or line break (so ordinary files carry no quotes),
any image name round-trips, and a field may have any length (a noisy 2048² mask's RLE runs to megabytes).
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from boneseg import rle as rle_mod
from boneseg.classes import CLASS_INDEX, CLASSES
from boneseg.errors import BonesegError, DataError, UsageError, quote
from boneseg.io import atomic_open

HEADER = ("image_name", "class", "rle")
MAX_SIDE = 32768
"""Largest image side a ``--size`` option may give (the contract's images are 2048 px)."""


def check_image_side(size: int, option: str = "--size") -> None:
    """A `UsageError` unless `size` (the image side of a CSV's masks) is within 1..`MAX_SIDE`."""
    if not 1 <= size <= MAX_SIDE:
        raise UsageError(f"{option} must be within 1..{MAX_SIDE} pixels, got {size}")


_SPECIAL = (",", '"', "\n", "\r")

# Python's csv refuses fields over 131,072 characters by default; the limit is process-wide.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _quote(field: str) -> str:
    if any(c in field for c in _SPECIAL):
        return '"' + field.replace('"', '""') + '"'
    return field


def format_row(*fields: str) -> str:
    """One CSV line (with its newline); a field is quoted only when it holds a comma, quote or line break."""
    return ",".join(map(_quote, fields)) + "\n"


class SubmissionWriter:
    """Write a submission image by image; memory does not grow with the number of images.

    Use as a context manager: the file appears (atomically) only when the block succeeds.
    ``path`` ``-`` writes to standard output.
    """

    def __init__(self, path: str | os.PathLike | None, force: bool = False):
        self._ctx = atomic_open(path, "w", force=force)
        self._fh: IO[str] | None = None
        self.images = 0

    def __enter__(self) -> SubmissionWriter:
        self._fh = self._ctx.__enter__()
        self._fh.write(format_row(*HEADER))
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._ctx.__exit__(*exc)

    def write_rles(self, image_name: str, rles: Sequence[str]) -> None:
        """One image's 29 RLE strings, in class order."""
        if len(rles) != len(CLASSES):
            raise ValueError(f"{image_name}: expected {len(CLASSES)} RLEs, got {len(rles)}")
        assert self._fh is not None, "use SubmissionWriter in a with block"
        self._fh.write("".join(format_row(image_name, c, r) for c, r in zip(CLASSES, rles)))
        self.images += 1

    def write_masks(self, image_name: str, masks: np.ndarray) -> None:
        """One image's (29, H, W) boolean masks at the original resolution."""
        self.write_rles(image_name, [rle_mod.encode(m) for m in masks])


@dataclass
class Submission:
    """A submission read into memory as text: RLEs keyed by (image_name, class)."""

    path: Path
    rles: dict[tuple[str, str], str] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)

    def image_rles(self, image: str) -> list[str]:
        """The 29 RLEs of `image` in class order; a missing row is an error naming it."""
        out = []
        for c in CLASSES:
            try:
                out.append(self.rles[(image, c)])
            except KeyError:
                raise DataError(f"{self.path}: no row for image {quote(image)}, class {quote(c)}") from None
        return out

    def masks(self, image: str, shape: Sequence[int]) -> np.ndarray:
        """(29, H, W) boolean masks of `image`; malformed RLE is an error naming file, image and class."""
        labels = [f"{self.path}: image {image!r}, class {c!r}" for c in CLASSES]
        return rle_mod.decode_stack(self.image_rles(image), shape, labels)


def name_problem(image: str) -> str | None:
    """Why `image` cannot be an ``image_name`` (a file's base name), or None."""
    if not image:
        return "empty image_name"
    if "/" in image:
        return f"image_name {quote(image)} is a path, not a file's base name"
    return None


def csv_rows(path: str | os.PathLike) -> Generator[tuple[int, list[str]], None, None]:
    """(first line number, fields) of each data row of a submission CSV (``-``: standard input); checks the
    header.

    Raises `DataError` naming the file for a missing or unreadable file or a wrong header.
    """
    path = Path(path)
    try:
        source = sys.stdin.fileno() if str(path) == "-" else path
        # opened here so a missing file is reported apart from a bad CSV; the `with fh:` below closes it
        fh = open(source, newline="", encoding="utf-8", closefd=source is path)  # noqa: SIM115
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a submission CSV") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file (expected header {','.join(HEADER)})")
            if header:  # a byte-order mark is tolerated; blanks around a name are not (a scorer's columns differ)
                header[0] = header[0].removeprefix("\ufeff")
            if tuple(header) != HEADER:
                raise DataError(f"{path}: wrong header {quote(','.join(header))} (expected {','.join(HEADER)})")
            start = reader.line_num + 1
            for row in reader:  # a quoted field may span lines: name the row by its first
                yield start, row
                start = reader.line_num + 1
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a readable CSV ({exc})") from None


def read_submission(path: str | os.PathLike) -> Submission:
    """Read a submission into a (image_name, class) -> RLE mapping (empty field = empty mask).

    Raises `DataError` naming the file and row for a wrong header, a wrong field count, an unknown class,
    a duplicate (image, class) row, or an image lacking some of the 29 classes. RLE text is checked
    lazily, when decoded.
    """
    path = Path(path)
    sub = Submission(path)
    seen_images: dict[str, int] = {}
    for line, row in csv_rows(path):
        if len(row) != 3:
            if not row:
                continue
            raise DataError(f"{path}: row {line}: expected 3 fields, got {len(row)}")
        image, cls, text = row
        problem = name_problem(image)
        if problem:
            raise DataError(f"{path}: row {line}: {problem}")
        if cls not in CLASS_INDEX:
            from boneseg.errors import suggest

            raise DataError(f"{path}: row {line}: unknown class {quote(cls)}{suggest(cls, CLASSES, 3)}")
        key = (image, cls)
        if key in sub.rles:
            raise DataError(f"{path}: row {line}: duplicate row for image {quote(image)}, class {quote(cls)}")
        sub.rles[key] = text
        if image not in seen_images:
            seen_images[image] = line
            sub.images.append(image)
    for image in sub.images:
        missing = [c for c in CLASSES if (image, c) not in sub.rles]
        if missing:
            raise DataError(
                f"{path}: image {quote(image)} lacks {len(missing)} class row(s): {', '.join(missing[:5])}"
                + (", …" if len(missing) > 5 else "")
            )
    return sub


def validate_submission(
    path: str | os.PathLike,
    shape: Sequence[int] = (2048, 2048),
    images: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    limit: int = 1000,
) -> list[str]:
    """Every problem found in a submission (empty list: valid), each naming its row.

    Checks the header, field counts, class names, duplicates, that each image has all 29 classes, that
    each RLE is integral, sorted, non-overlapping and inside its image, and (given `images`, base names)
    that exactly those images are present. An image's size is its own where `images` maps base names to
    (height, width), else `shape`. At most `limit` problems are listed, then one line saying more exist.
    """
    path = Path(path)
    size = int(shape[0]) * int(shape[1])
    sizes = {n: int(h) * int(w) for n, (h, w) in images.items()} if isinstance(images, Mapping) else {}
    problems: list[str] = []
    stopped = False
    seen: dict[tuple[str, str], int] = {}
    per_image: dict[str, set[str]] = {}
    try:
        for line, row in csv_rows(path):
            if len(problems) >= limit:
                stopped = True
                break
            if len(row) != 3:
                if row:
                    problems.append(f"row {line}: expected 3 fields, got {len(row)}")
                continue
            image, cls, text = row
            problem = name_problem(image)
            if problem:
                problems.append(f"row {line}: {problem}")
            if cls not in CLASS_INDEX:
                problems.append(f"row {line}: unknown class {quote(cls)}")
            elif (image, cls) in seen:
                problems.append(f"row {line}: duplicate of row {seen[(image, cls)]} ({quote(image)}, {quote(cls)})")
            else:
                seen[(image, cls)] = line
                per_image.setdefault(image, set()).add(cls)
            try:
                rle_mod.parse(text, sizes.get(image, size))
            except DataError as exc:
                problems.append(f"row {line}: {quote(image)}, {quote(cls)}: {exc}")
    except BonesegError as exc:
        return [str(exc).removeprefix(f"{path}: ")]
    for image, classes in per_image.items():
        if len(classes) != len(CLASSES):
            missing = [c for c in CLASSES if c not in classes]
            problems.append(f"image {image}: missing class(es) {', '.join(missing)}")
    if images is not None:
        expected = set(images)
        for name in sorted(expected - per_image.keys()):
            problems.append(f"image {name}: in the image folder but not in the submission")
        for name in sorted(per_image.keys() - expected):
            problems.append(f"image {name}: in the submission but not in the image folder")
    if not per_image and not problems:
        problems.append("no rows")
    if stopped or len(problems) > limit:
        return problems[:limit] + [f"more problems not listed (the first {limit} are)"]
    return problems
