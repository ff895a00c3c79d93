"""Probabilities -> quantised values -> masks -> RLE, on the device where the probabilities are.

Predict always quantises (``round(p * 255)``, `boneseg.probs`) and then thresholds the quantised values
with `boneseg.probs.cutoffs`, so its CSV and a soft vote of its ``--save-probs`` files agree bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from boneseg import probs as probs_mod
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
    cls_t, pos_t = (padded[:, 1:] != padded[:, :-1]).nonzero(as_tuple=True)
    cls, pos = cls_t.cpu().numpy(), pos_t.cpu().numpy()
    return pos, np.concatenate(([0], np.cumsum(np.bincount(cls, minlength=k))))


def format_rles(pos: np.ndarray, offsets: np.ndarray) -> list[str]:
    """RLE text of each plane from `run_bounds` output."""
    return [runs_to_rle(pos[a:b:2], pos[a + 1 : b : 2]) for a, b in zip(offsets[:-1], offsets[1:])]


def masks_to_rles(masks: torch.Tensor) -> list[str]:
    """Competition RLE of each (H, W) plane of a (K, H, W) bool tensor; equals `boneseg.rle.encode`.

    On an accelerator only the run boundaries leave the device (`run_bounds`); on the CPU the
    bounding-box encoder of `boneseg.rle` is faster than a full-image boundary scan."""
    if masks.device.type == "cpu":
        return [encode(plane) for plane in masks.numpy()]
    return format_rles(*run_bounds(masks))
