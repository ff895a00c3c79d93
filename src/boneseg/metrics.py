"""The competition Dice: per (image, class) ``2|P∩G| / (|P|+|G|)``, 1.0 when both are empty."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import numpy as np

from boneseg.classes import CLASSES


def _is_tensor(value) -> bool:
    """Whether `value` is a torch tensor, without importing torch (a tensor means torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def dice_from_counts(intersection, pred_sum, gt_sum):
    """Dice from pixel counts (numpy or torch, broadcasting); both empty gives 1.0."""
    if _is_tensor(intersection):
        import torch

        intersection, total = intersection.double(), (pred_sum + gt_sum).double()
        return torch.where(total > 0, 2 * intersection / total.clamp_min(1), torch.ones_like(total))
    intersection = np.asarray(intersection, np.float64)
    total = np.asarray(pred_sum, np.float64) + np.asarray(gt_sum, np.float64)
    return np.where(total > 0, 2 * intersection / np.maximum(total, 1), 1.0)


def dice_counts(pred, gt):
    """(intersection, |P|, |G|) over the last two axes of boolean-like arrays or tensors."""
    if _is_tensor(pred):
        p, g = pred.bool(), gt.bool()
        return (p & g).sum((-2, -1)), p.sum((-2, -1)), g.sum((-2, -1))
    p, g = np.asarray(pred).astype(bool, copy=False), np.asarray(gt).astype(bool, copy=False)
    return (p & g).sum((-2, -1)), p.sum((-2, -1)), g.sum((-2, -1))


def dice(pred, gt):
    """Competition Dice over the last two axes: (H, W) -> scalar, (N, C, H, W) -> (N, C).

    Accepts numpy arrays or torch tensors (on any device; the result stays there, float64).
    Non-boolean inputs count non-zero as foreground.
    """
    if np.shape(pred) != np.shape(gt):
        raise ValueError(f"shape mismatch: prediction {tuple(np.shape(pred))} vs truth {tuple(np.shape(gt))}")
    return dice_from_counts(*dice_counts(pred, gt))


def per_class(scores, classes: Sequence[str] = CLASSES) -> dict[str, float]:
    """Mean over images of an (N, C) score array -> {class: mean Dice} (NaN rows ignored)."""
    scores = np.asarray(scores.cpu() if hasattr(scores, "cpu") else scores, np.float64).reshape(-1, len(classes))
    means = np.nanmean(scores, axis=0) if len(scores) else np.full(len(classes), np.nan)
    return {c: float(v) for c, v in zip(classes, means)}


def mean_dice(per_class_dice: Mapping[str, float]) -> float:
    """The headline score: the mean over classes of the per-class means."""
    return float(np.mean(list(per_class_dice.values())))
