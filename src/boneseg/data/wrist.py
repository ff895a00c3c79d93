"""The wrist second stage: a model trained on crops around the 8 carpal bones, pasted back at inference.

Training (``boneseg train --wrist``) is the ordinary `train()` with two switches: the mask cache serves
each image cropped to its wrist box (`WristCache`: the carpal polygons' extent plus a margin, made
square, cut from the full-resolution image and resized to ``--size``), and the loss and the headline
validation Dice cover only the carpal classes (the model keeps 29 outputs; the other classes are
partial bones in a crop and are ignored).

Inference (``boneseg predict -m FIRST --wrist-model WRIST``): the first stage predicts the whole image;
its carpal predictions give the wrist box (same rule as training); the wrist model predicts the crop cut
from the full-resolution image, and its carpal probabilities replace the first stage's (zero outside
the box). Images where the first stage finds no carpal bone keep the first-stage prediction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from boneseg.classes import CARPALS, CLASS_INDEX
from boneseg.data.layout import Sample, read_image, resize_image
from boneseg.data.masks import CachedSample, MaskCache, load_label, rasterize
from boneseg.maskops import bbox

CARPAL_IDX: list[int] = [CLASS_INDEX[c] for c in CARPALS]
DEFAULT_MARGIN = 0.15


def square_box(
    y0: float, y1: float, x0: float, x1: float, shape: tuple[int, int], margin: float = DEFAULT_MARGIN
) -> tuple[int, int, int, int]:
    """A square box around ``[y0, y1) x [x0, x1)`` grown by `margin` of its longer side on each side,
    shifted (then clipped) to lie inside an image of `shape`. Returns int (y0, y1, x0, x1)."""
    h, w = shape
    side = max(y1 - y0, x1 - x0) * (1 + 2 * margin)
    side = int(min(max(side, 8), h, w))
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    return top, top + side, left, left + side


def box_from_masks(masks, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int] | None:
    """The wrist box of (29, H, W) masks or probabilities (> 0.5), numpy or torch; None without carpals."""
    carp = (masks[CARPAL_IDX] > 0.5).any(0)
    box = bbox(carp.cpu().numpy() if isinstance(carp, torch.Tensor) else carp)
    return square_box(*box, tuple(masks.shape[-2:]), margin) if box is not None else None


def box_from_polygons(
    polygons: dict[str, np.ndarray], shape: tuple[int, int], margin: float = DEFAULT_MARGIN
) -> tuple[int, int, int, int] | None:
    """The wrist box from label polygons (their extent), None without carpal polygons."""
    pts = [polygons[c] for c in CARPALS if c in polygons and len(polygons[c])]
    if not pts:
        return None
    allp = np.concatenate(pts)
    return square_box(allp[:, 1].min(), allp[:, 1].max() + 1, allp[:, 0].min(), allp[:, 0].max() + 1, shape, margin)


class WristCache(MaskCache):
    """A `MaskCache` whose entries are the wrist crops (full-resolution crop resized to `size`)."""

    def __init__(self, cache_dir: str | os.PathLike, margin: float = DEFAULT_MARGIN):
        super().__init__(Path(cache_dir) / f"wrist-m{margin:g}")
        self.margin = margin

    def _build(self, sample: Sample, size: int | None) -> CachedSample:
        image = read_image(sample.image)
        h, w = image.shape
        label = load_label(sample.label, (h, w)) if sample.label is not None else None
        box = box_from_polygons(label.polygons, (h, w), self.margin) if label is not None else None
        y0, y1, x0, x1 = box or (0, h, 0, w)
        crop = image[y0:y1, x0:x1]
        out = size or max(y1 - y0, x1 - x0)
        crop = resize_image(crop, (out, out))
        masks = None
        side = sample.suffix_side or "unknown"
        if label is not None:
            shifted = {k: v - np.array([x0, y0], np.int32) for k, v in label.polygons.items()}
            masks = rasterize(shifted, (out, out), (out / (x1 - x0), out / (y1 - y0)))
            side = label.side or side
        return CachedSample(crop, masks, side, (h, w))
