"""Run-length encoding in the competition format.

A mask is flattened row-major (C order) at the original image size; the RLE is a space-separated list
of ``start length`` pairs with 1-based starts; an empty mask is the empty string.
"""

from __future__ import annotations

import math
import mmap
import re
import sys
import unicodedata
from collections.abc import Sequence

import numpy as np

from boneseg.errors import DataError, quote
from boneseg.maskops import bbox

__all__ = ["encode", "decode", "decode_into", "decode_stack", "runs_from_mask", "parse", "format_runs", "runs_to_rle"]

_UNSIGNED_PAIRS = re.compile(r"\s*\d{1,18}(?:\s+\d{1,18})*\s*", re.ASCII)  # tokens of 1-18 digits


def runs_from_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based run starts and exclusive ends of a 2-D mask, flattened row-major.

    Works on the bounding rows/columns of the foreground only, so cost follows the object, not the
    image; runs that wrap from one row's last column to the next row's first are merged.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if mask.dtype != np.bool_:
        mask = mask != 0
    h, w = mask.shape
    box = bbox(mask)
    if box is None:
        empty = np.empty(0, np.int64)
        return empty, empty
    r0, r1, c0, c1 = box
    crop = np.zeros((r1 - r0, c1 - c0 + 2), np.bool_)
    crop[:, 1:-1] = mask[r0:r1, c0:c1]
    edges = np.flatnonzero(crop[:, 1:] != crop[:, :-1])  # 1-D nonzero is much faster than 2-D
    rr, cc = np.divmod(edges, crop.shape[1] - 1)
    flat = (rr + r0) * w + (cc + c0)
    starts, ends = flat[0::2], flat[1::2]
    if c0 == 0 and c1 == w and starts.size > 1:  # a run touching the right edge continues on the next row
        joined = ends[:-1] == starts[1:]
        if joined.any():
            starts = starts[np.concatenate(([True], ~joined))]
            ends = ends[np.concatenate((~joined, [True]))]
    return starts, ends


def format_runs(starts: np.ndarray, lengths: np.ndarray) -> str:
    """``start length`` pairs (starts 0-based on input, written 1-based)."""
    if len(starts) == 0:
        return ""
    pairs = np.empty(2 * len(starts), np.int64)
    pairs[0::2] = starts
    pairs[0::2] += 1
    pairs[1::2] = lengths
    return str(pairs.tolist())[1:-1].replace(",", "")  # the list's repr is formatted in C: faster than a join


def runs_to_rle(starts: np.ndarray, ends: np.ndarray) -> str:
    """RLE text from 0-based starts and exclusive ends."""
    return format_runs(starts, np.asarray(ends) - np.asarray(starts))


def encode(mask: np.ndarray) -> str:
    """RLE of a 2-D mask (any dtype; non-zero is foreground)."""
    starts, ends = runs_from_mask(mask)
    return runs_to_rle(starts, ends)


def _is_empty(rle: object) -> bool:
    """None, NaN, or a blank or ``nan`` text (how pandas writes and reads a missing value): an empty mask."""
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and rle.strip().lower() in ("", "nan")


def _values(rle: str) -> np.ndarray:
    """The integers of an RLE text; DataError unless every token is a non-negative integer < 10**18."""
    try:  # digits and single spaces (what every writer produces): one C-speed check
        plain = not rle.encode("ascii").translate(None, b"0123456789 ")
    except UnicodeEncodeError:
        plain = False
    if plain or _UNSIGNED_PAIRS.fullmatch(rle):  # other whitespace: the slower full pattern
        values = np.fromstring(rle, dtype=np.int64, sep=" ")  # cannot stop early: every token is digits
        if values.max() < 10**18:  # 19+ digit tokens saturate
            return values
    tokens = rle.split()
    bad = next((t for t in tokens if not (t.isascii() and t.isdigit()) or len(t) > 18), None)
    if bad is None:  # every token is digits: a separator other than ASCII white space (a non-breaking space …)
        at = next(i for i, ch in enumerate(rle) if not (ch.isascii() and (ch.isdigit() or ch.isspace())))
        name = unicodedata.name(rle[at], "a character")
        raise DataError(
            f"malformed RLE: character {at + 1} is {name} (U+{ord(rle[at]):04X}), not a space between numbers"
        )
    raise DataError(f"malformed RLE: {quote(bad, 20)} is not a non-negative integer")


def parse(rle: str | float | None, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validated 0-based starts and exclusive ends of an RLE string.

    Raises `DataError` for non-integer tokens, an odd count, starts < 1, lengths < 1, runs out of order
    or overlapping, or (given `size` = height*width) runs past the end of the image.
    """
    if _is_empty(rle):
        empty = np.empty(0, np.int64)
        return empty, empty
    if not isinstance(rle, str):
        raise DataError(f"malformed RLE: expected text, got {type(rle).__name__}")
    values = _values(rle)
    if values.size % 2:
        raise DataError(f"malformed RLE: odd number of values ({values.size})")
    starts, lengths = values[0::2] - 1, values[1::2]
    if starts.min() < 0:
        raise DataError("malformed RLE: run starts must be >= 1")
    if lengths.min() < 1:
        raise DataError("malformed RLE: run lengths must be >= 1")
    ends = starts + lengths
    if starts.size > 1 and (starts[1:] < ends[:-1]).any():
        i = int(np.flatnonzero(starts[1:] < ends[:-1])[0])
        raise DataError(
            f"malformed RLE: run {i + 2} (start {starts[i + 1] + 1}) is out of order or overlaps the previous run"
        )
    if size is not None and ends[-1] > size:
        raise DataError(f"malformed RLE: run ends at pixel {int(ends[-1])}, past the image's {size} pixels")
    return starts, ends


# Decoding is bounded by memory, not arithmetic: a fresh 2048² mask is 4 MB, and touching a new page
# costs far more than setting its bytes. So decoded masks live on their own anonymous mapping (zero
# pages cost nothing until written; numpy's allocator would ask for transparent huge pages, each one
# zeroed in full when touched), the rows an object covers are faulted in with one system call where
# Linux offers it, and each run is a C-level memoryview copy from a buffer of ones.

_MAPPED_MIN_BYTES = 1 << 20
_PRIVATE = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}  # copy-on-write after fork, like numpy's
_MADV_POPULATE_WRITE = 23 if sys.platform.startswith("linux") else None  # Linux >= 5.14
_ones = memoryview(b"\x01" * 4096)


def _ones_of(n: int) -> memoryview:
    """At least `n` bytes of value 1."""
    global _ones
    ones = _ones
    if len(ones) < n:
        ones = memoryview(b"\x01" * n)
        if n <= 1 << 16:
            _ones = ones
    return ones


def _paint(buf: memoryview, starts: np.ndarray, ends: np.ndarray) -> None:
    """Set bytes ``[start, end)`` of `buf` to 1 for every run (runs are few: about one per object row)."""
    if not starts.size:
        return
    ones = _ones_of(int((ends - starts).max()))
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        buf[lo:hi] = ones[: hi - lo]


def _prefault(mapping: mmap.mmap, lo: int, hi: int) -> None:
    """Fault in the pages holding bytes ``[lo, hi)`` of `mapping` at once (no-op where unsupported)."""
    global _MADV_POPULATE_WRITE
    if _MADV_POPULATE_WRITE is None:
        return
    lo -= lo % mmap.PAGESIZE
    try:
        mapping.madvise(_MADV_POPULATE_WRITE, lo, hi - lo)
    except (OSError, ValueError):  # an older kernel: pages fault one by one on first write instead
        _MADV_POPULATE_WRITE = None


def _mapping(nbytes: int) -> mmap.mmap | None:
    """A fresh zeroed private mapping for masks of 1 MiB or more; None for smaller ones, or when the
    system refuses another mapping (numpy's allocator then serves)."""
    if nbytes < _MAPPED_MIN_BYTES:
        return None
    try:
        return mmap.mmap(-1, nbytes, **_PRIVATE)
    except OSError:  # e.g. the per-process limit on mappings (vm.max_map_count)
        return None


def _byte_view(out: np.ndarray) -> memoryview:
    if out.dtype != np.bool_ or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("expected a writeable C-contiguous boolean array")
    return out.reshape(-1).view(np.uint8).data


def decode_into(out: np.ndarray, rle: str | float | None, clear: bool = True) -> np.ndarray:
    """Decode `rle` into the C-contiguous boolean array `out` (of the image's shape); returns `out`.

    `clear=False` skips zeroing `out` (for buffers known to be empty, e.g. fresh `np.zeros`).
    """
    buf = _byte_view(out)
    starts, ends = parse(rle, out.size)
    if clear:
        out[...] = False
    _paint(buf, starts, ends)
    return out


def decode_stack(
    rles: Sequence[str | float | None], shape: Sequence[int], labels: Sequence[str] | None = None
) -> np.ndarray:
    """Decode several RLEs (e.g. an image's 29 classes) into one ``(len(rles), H, W)`` bool array.

    Every RLE is validated before memory is taken; `labels` (one per RLE) name the culprit in errors.
    """
    h, w = (int(s) for s in shape)
    plane = h * w
    runs = []
    for i, rle in enumerate(rles):
        try:
            runs.append(parse(rle, plane))
        except DataError as exc:
            raise DataError(f"{labels[i]}: {exc}" if labels is not None else str(exc)) from None
    mapping = _mapping(len(runs) * plane)
    if mapping is None:
        out = np.zeros((len(runs), h, w), np.bool_)
        buf = _byte_view(out)
    else:
        out = np.frombuffer(mapping, np.bool_).reshape(len(runs), h, w)
        buf = memoryview(mapping)
    for i, (starts, ends) in enumerate(runs):
        if starts.size:
            if mapping is not None:
                _prefault(mapping, i * plane + int(starts[0]), i * plane + int(ends[-1]))
            _paint(buf[i * plane : (i + 1) * plane], starts, ends)
    return out


def decode(rle: str | float | None, shape: Sequence[int]) -> np.ndarray:
    """Boolean mask of `shape` (height, width); empty/None/NaN give an empty mask."""
    return decode_stack([rle], shape)[0]
