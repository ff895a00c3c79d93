"""Mask post-processing: keep each class's largest connected component, drop small islands.

Both work on the bounding box of each class's foreground (cost follows the bone, not the image) with
8-connectivity, and leave the input untouched.

The per-class rules (``RUN/postprocess.json``) are chosen on a run's validation fold by
`boneseg.workflows.validation.fit_postprocess`; ``boneseg predict -m RUN`` applies them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from boneseg.errors import UsageError
from boneseg.maskops import bbox


def clean_mask(mask: np.ndarray, keep_largest: bool = False, min_area: int = 0) -> np.ndarray:
    """One (H, W) mask with only its largest component (`keep_largest`) and/or without the components
    smaller than `min_area` pixels. Returns a new bool array (the input when nothing changes)."""
    found = bbox(mask)
    if found is None or (not keep_largest and min_area <= 1):
        return mask
    box = np.s_[found[0] : found[1], found[2] : found[3]]
    crop = np.ascontiguousarray(mask[box], dtype=np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8)
    if n <= 2 and (n < 2 or stats[1, cv2.CC_STAT_AREA] >= min_area):
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = areas >= min_area
    if keep_largest:
        keep &= np.arange(len(areas)) == int(np.argmax(areas))
    out = np.zeros(mask.shape, np.bool_)
    out[box] = np.concatenate(([False], keep))[labels]
    return out


MAX_CLOSE = 255
"""Largest closing kernel side: a closing costs about the kernel's area per pixel, so a kernel the size of an
image would run for hours (and fills nothing a bone needs filled)."""


def close_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Morphological closing of one (H, W) mask with a `size` x `size` ellipse (fills gaps and holes
    narrower than it; 0 or 1: off). Works on the foreground's box padded by `size`, so the result equals
    closing the whole image. Returns a new bool array (the input when nothing changes)."""
    found = bbox(mask)
    if found is None or size <= 1:
        return mask
    h, w = mask.shape
    y0, y1, x0, x1 = max(0, found[0] - size), min(h, found[1] + size), max(0, found[2] - size), min(w, found[3] + size)
    crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    closed = cv2.morphologyEx(crop, cv2.MORPH_CLOSE, kernel)
    out = np.array(mask, dtype=np.bool_, copy=True)
    out[y0:y1, x0:x1] = closed != 0
    return out


def clean_runs(
    starts: np.ndarray,
    ends: np.ndarray,
    shape: Sequence[int],
    keep_largest: bool = False,
    min_area: int = 0,
    close: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`close_mask` then `clean_mask` on one mask given as runs (0-based starts, exclusive ends, row-major
    in `shape`); returns the runs of the result. Only the rows the mask covers (plus `close` rows each
    side) are decoded, so the cost follows the bone, not the image; the result is the full-mask one."""
    from boneseg.rle import runs_from_mask

    if not len(starts) or (not keep_largest and min_area <= 1 and close <= 1):
        return starts, ends
    h, w = (int(v) for v in shape)
    margin = close if close > 1 else 0
    r0 = max(0, int(starts[0]) // w - margin)
    r1 = min(h, (int(ends[-1]) - 1) // w + 1 + margin)
    offset = r0 * w
    flat = np.zeros((r1 - r0) * w, np.bool_)
    for lo, hi in zip((starts - offset).tolist(), (ends - offset).tolist()):
        flat[lo:hi] = True
    band = flat.reshape(r1 - r0, w)
    band = clean_mask(close_mask(band, close), keep_largest, min_area)
    s, e = runs_from_mask(band)
    return s + offset, e + offset


def postprocess(masks: np.ndarray, keep_largest: bool = False, min_area: int = 0) -> np.ndarray:
    """Apply `clean_mask` to each class of a (C, H, W) bool array; returns a new array (or `masks`
    when both options are off).

    Raises:
        UsageError: a negative `min_area`.
    """
    if min_area < 0:
        raise UsageError(f"--min-area must be 0 or more, got {min_area}")
    if (not keep_largest and min_area <= 1) or len(masks) == 0:
        return masks
    return np.stack([clean_mask(m, keep_largest, min_area) for m in masks])


# -- per-class rules validated on the validation fold (nnU-Net's rule) --------------------------------


def postprocess_per_class(masks: np.ndarray, rules: Sequence[tuple[bool, int]]) -> np.ndarray:
    """`clean_mask` with each class's own (keep_largest, min_area); returns a new (C, H, W) array."""
    return np.stack([clean_mask(m, bool(k), int(a)) for m, (k, a) in zip(masks, rules)])


def rules_list(
    doc: dict, keep_largest: bool = False, min_area: int = 0, where: str = "post-processing rules"
) -> list[tuple[bool, int]]:
    """Per-class (keep_largest, min_area) in class order from a ``postprocess.json`` document, combined with
    global options (keep_largest OR, the larger min_area).

    Raises:
        DataError: naming `where` (the file) and the class: a document without a ``classes`` mapping,
            unknown class names, a ``keep_largest`` that is not true/false or a ``min_area`` that is not
            a whole number >= 0 (nan and ±inf included).
    """
    from boneseg.classes import CLASSES
    from boneseg.errors import DataError, suggest

    classes = doc.get("classes") if isinstance(doc, dict) else None
    if not isinstance(classes, dict):
        raise DataError(f"{where}: no 'classes' mapping")
    for name in classes:
        if name not in CLASSES:
            raise DataError(f"{where}: unknown class {name!r}{suggest(str(name), CLASSES)}")
    out = []
    for name in CLASSES:
        r = classes.get(name) or {}
        if not isinstance(r, dict):
            raise DataError(f'{where}: class {name!r}: expected {{"keep_largest": …, "min_area": …}}')
        keep, area = r.get("keep_largest"), r.get("min_area")  # absent or null: the default
        keep, area = False if keep is None else keep, 0 if area is None else area
        if not isinstance(keep, bool):
            raise DataError(f"{where}: class {name!r}: keep_largest {keep!r} must be true or false")
        if (
            isinstance(area, bool)
            or not isinstance(area, (int, float))
            or not math.isfinite(area)
            or area < 0
            or area != int(area)
        ):
            raise DataError(f"{where}: class {name!r}: min_area {area!r} must be a whole number >= 0")
        out.append((keep or keep_largest, max(int(area), min_area)))
    return out
