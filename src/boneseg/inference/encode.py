"""Probabilities -> quantised values -> masks -> RLE, on the device where the probabilities are.

Predict always quantises (``round(p * 255)``, `boneseg.probs`) and then thresholds the quantised values
with `boneseg.probs.cutoffs`, so its CSV and a soft vote of its ``--save-probs`` files agree bit for bit.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from boneseg import probs as probs_mod
from boneseg.classes import CLASSES, NUM_CLASSES
from boneseg.errors import BonesegError, DataError, UsageError
from boneseg.io import read_json
from boneseg.rle import encode, runs_to_rle


def quantize(p: torch.Tensor) -> torch.Tensor:
    """(K, H, W) probabilities in [0, 1] -> uint8 ``round(p * 255)`` on the same device; `p` is left as it
    is. fp16 input is converted class by class, so it never needs a full float32 copy.

    Inputs are sigmoids or weighted means of them, so no clipping pass is needed: a mean that rounds
    a hair above 1 still rounds to 255."""
    out = torch.empty(p.shape, dtype=torch.uint8, device=p.device)
    for c in range(p.shape[0]) if p.dtype != torch.float32 else [slice(None)]:
        out[c] = p[c].float().mul(probs_mod.SCALE).round_()
    return out


def binarize(q: torch.Tensor, cuts: np.ndarray) -> torch.Tensor:
    """(K, H, W) bool masks ``q > cut`` per class (`cuts` from `boneseg.probs.cutoffs`)."""
    return q > torch.as_tensor(np.asarray(cuts), device=q.device).to(torch.uint8)[:, None, None]


def run_bounds(masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Run boundaries of each plane of a (K, H, W) bool tensor, computed where the tensor lives.

    Returns the 0-based flat positions where a plane switches (alternately run starts and exclusive ends,
    planes one after the other) and the (K + 1,) offsets of each plane's positions. Only these leave
    the device.
    """
    k = masks.shape[0]
    flat = masks.reshape(k, -1)
    pad = torch.zeros((k, 1), dtype=torch.bool, device=masks.device)
    padded = torch.cat([pad, flat, pad], 1)
    cls, pos = (padded[:, 1:] != padded[:, :-1]).nonzero(as_tuple=True)
    cls, pos = cls.cpu().numpy(), pos.cpu().numpy()
    return pos, np.concatenate(([0], np.cumsum(np.bincount(cls, minlength=k))))


def format_rles(pos: np.ndarray, offsets: np.ndarray) -> list[str]:
    """RLE text of each plane from `run_bounds` output."""
    return [runs_to_rle(pos[a:b:2], pos[a + 1:b:2]) for a, b in zip(offsets[:-1], offsets[1:])]


def masks_to_rles(masks: torch.Tensor) -> list[str]:
    """Competition RLE of each (H, W) plane of a (K, H, W) bool tensor; equals `boneseg.rle.encode`.

    On an accelerator only the run boundaries leave the device (`run_bounds`); on the CPU the
    bounding-box encoder of `boneseg.rle` is faster than a full-image boundary scan."""
    if masks.device.type == "cpu":
        return [encode(plane) for plane in masks.numpy()]
    return format_rles(*run_bounds(masks))


def read_thresholds(value: float | str | os.PathLike | dict | None) -> np.ndarray:
    """Per-class thresholds (29,) from a number, a ``{class: t}`` mapping, or a JSON file holding one
    (optionally under a ``"thresholds"`` key, as `boneseg tta --thresholds-out` writes).

    Raises:
        UsageError: a number outside [0, 1] or text that is neither a number nor an existing file.
        DataError: a JSON file that is not such a mapping (naming the file and the bad class).
    """
    if value is None:
        return probs_mod.thresholds_array(0.5)
    source = "--threshold"
    if isinstance(value, (str, os.PathLike)):
        text = str(value)
        try:
            number = float(text)
        except ValueError:
            path = Path(text)
            if not path.exists():
                raise UsageError(f"--threshold must be a number or a JSON file, got {text!r} (no such file)") from None
            doc = read_json(path)
            doc = doc.get("thresholds", doc) if isinstance(doc, dict) else doc
            if not isinstance(doc, dict) or not all(isinstance(v, (int, float)) for v in doc.values()):
                raise DataError(f"{path}: expected a JSON object {{class: threshold}}") from None
            value, source = doc, str(path)
        else:
            value = number
    try:
        out = probs_mod.thresholds_array(value)
    except BonesegError as exc:
        raise (UsageError if source == "--threshold" else DataError)(f"{source}: {exc}") from None
    if out.shape != (NUM_CLASSES,):
        raise UsageError(f"{source}: expected 1 or {NUM_CLASSES} thresholds ({', '.join(CLASSES[:2])}, …)")
    return out
