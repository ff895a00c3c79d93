"""Mask post-processing: keep each class's largest connected component, drop small islands.

Both work on the bounding box of each class's foreground (cost follows the bone, not the image) with
8-connectivity, and leave the input untouched.
"""
from __future__ import annotations

import cv2
import numpy as np

from boneseg.errors import UsageError


def _bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def clean_mask(mask: np.ndarray, keep_largest: bool = False, min_area: int = 0) -> np.ndarray:
    """One (H, W) mask with only its largest component (`keep_largest`) and/or without the components
    smaller than `min_area` pixels. Returns a new bool array (the input when nothing changes)."""
    box = _bbox(mask)
    if box is None or (not keep_largest and min_area <= 1):
        return mask
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
