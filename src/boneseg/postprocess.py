"""Mask post-processing: keep each class's largest connected component, drop small islands.

Both work on the bounding box of each class's foreground (cost follows the bone, not the image) with
8-connectivity, and leave the input untouched.

`fit_postprocess` decides per class, on a run's validation fold, whether keep-largest or removing small
islands raises the validation Dice (nnU-Net's rule: keep a step only where it helps) and writes the
decision to ``RUN/postprocess.json``; ``boneseg predict -m RUN`` picks that file up automatically.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

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


# -- per-class rules validated on the validation fold (nnU-Net's rule) --------------------------------

RULES_FILE = "postprocess.json"


def postprocess_per_class(masks: np.ndarray, rules: Sequence[tuple[bool, int]]) -> np.ndarray:
    """`clean_mask` with each class's own (keep_largest, min_area); returns a new (C, H, W) array."""
    return np.stack([clean_mask(m, bool(k), int(a)) for m, (k, a) in zip(masks, rules)])


def rules_list(doc: dict, keep_largest: bool = False, min_area: int = 0,
               where: str = "post-processing rules") -> list[tuple[bool, int]]:
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
            raise DataError(f"{where}: class {name!r}: expected {{\"keep_largest\": …, \"min_area\": …}}")
        keep, area = r.get("keep_largest") or False, r.get("min_area") or 0
        if not isinstance(keep, bool):
            raise DataError(f"{where}: class {name!r}: keep_largest {keep!r} must be true or false")
        if isinstance(area, bool) or not isinstance(area, (int, float)) or not math.isfinite(area) \
                or area < 0 or area != int(area):
            raise DataError(f"{where}: class {name!r}: min_area {area!r} must be a whole number >= 0")
        out.append((keep or keep_largest, max(int(area), min_area)))
    return out


def find_rules(checkpoints: Sequence, setting: str | os.PathLike | None = "auto") -> tuple[dict | None, str | None]:
    """The post-processing rules `predict` applies: ``auto`` = the ``postprocess.json`` of the run folder of
    a single checkpoint (ensembles get none: the rules were validated for one model), ``none`` = none, else
    a file. Returns (document, its path)."""
    from boneseg.engine.checkpoint import resolve_checkpoint
    from boneseg.errors import DataError
    from boneseg.io import read_json

    if setting is None or str(setting).lower() == "none":
        return None, None
    if str(setting).lower() == "auto":
        if len(checkpoints) != 1 or not isinstance(checkpoints[0], (str, os.PathLike)):
            return None, None
        path = resolve_checkpoint(checkpoints[0]).parent / RULES_FILE
        if not path.is_file():
            return None, None
    else:
        path = Path(setting)
        if not path.is_file():
            raise DataError(f"--postprocess {path}: file not found (or use auto / none)")
    return read_json(path), str(path)


def _options(areas: np.ndarray) -> list[tuple[bool, int]]:
    """Candidate (keep_largest, min_area) per class: keep-largest, and islands below 10/25/50% of the
    class's median true area removed."""
    med = float(np.median(areas[areas > 0])) if (areas > 0).any() else 0.0
    opts = [(True, 0)]
    opts += sorted({(False, int(med * f)) for f in (0.1, 0.25, 0.5) if int(med * f) > 1})
    return opts


def choose_rules(pred: Sequence[np.ndarray], gt: Sequence[np.ndarray], min_gain: float = 1e-9) -> dict:
    """Per class, the post-processing that raises the mean validation Dice the most, or nothing.

    Args:
        pred, gt: per image (C, H, W) bool predicted and true masks.
        min_gain: a rule is kept only when it raises the class's mean Dice by more than this.

    Returns:
        ``{class: {"keep_largest", "min_area", "dice_before", "dice_after"}}`` for every class.
    """
    from boneseg.classes import CLASSES
    from boneseg.metrics import dice

    areas = np.stack([g.reshape(len(g), -1).sum(1) for g in gt])  # (images, C)
    out = {}
    for c, name in enumerate(CLASSES):
        base = float(np.mean([dice(p[c], g[c]) for p, g in zip(pred, gt)]))
        best, best_score = (False, 0), base
        for keep, area in _options(areas[:, c]):
            score = float(np.mean([dice(clean_mask(p[c], keep, area), g[c]) for p, g in zip(pred, gt)]))
            if score > best_score + min_gain:
                best, best_score = (keep, area), score
        out[name] = {"keep_largest": best[0], "min_area": best[1], "dice_before": base, "dice_after": best_score}
    return out


def fit_postprocess(run: str | os.PathLike, data: str | os.PathLike, *, threshold: float = 0.5,
                    device: str = "auto", workers: int = 0, progress: bool = True, force: bool = True,
                    cache_dir: str | os.PathLike | None = None) -> dict:
    """Choose per-class post-processing on a run's validation fold and write ``RUN/postprocess.json``.

    The run's ``best.pt`` predicts its own validation images (the fold and split it was trained with), at
    full resolution, without TTA, thresholded at `threshold`; `choose_rules` keeps a rule for a class
    only where it raises that class's validation Dice. ``boneseg predict -m RUN`` then applies it.
    `cache_dir`: the mask cache (default ``DATA/.boneseg-cache``).

    Returns:
        The written document: ``{"rule", "fold", "images", "threshold", "mean_dice_before",
        "mean_dice_after", "classes": {class: {...}}}``.
    """
    import torch

    from boneseg import probs as probs_mod
    from boneseg.data.layout import discover
    from boneseg.data.masks import default_cache_dir
    from boneseg.data.split import run_fold
    from boneseg.engine.checkpoint import resolve_checkpoint
    from boneseg.inference.encode import binarize, quantize
    from boneseg.inference.predictor import Predictor
    from boneseg.inference.run import ImageDataset, make_loader
    from boneseg.inference.tta import Policy
    from boneseg.io import write_json

    run = Path(run)
    predictor = Predictor.from_checkpoints([run], device=device)
    cfg = predictor.models[0].config
    samples = discover(data)
    _, val = run_fold(samples, cfg.get("splits"), int(cfg.get("folds", 5)), int(cfg.get("seed", 0)),
                      int(cfg.get("fold", 0)))
    if not val:
        raise UsageError(f"{run}: no validation images to fit post-processing on")
    policy = Policy.parse("none")
    loader = make_loader(ImageDataset(val, predictor.plan([policy]), labels=True,
                                      cache_dir=cache_dir or default_cache_dir(data)),
                         workers, predictor.device)
    cuts = probs_mod.cutoffs(threshold)
    preds, gts = [], []
    with torch.no_grad():
        for item in loader:
            preds.append(binarize(quantize(predictor.predict(item, policy)), cuts).cpu().numpy())
            gts.append(item.masks.numpy())
    classes = choose_rules(preds, gts)
    doc = {"rule": "per class, the keep-largest / remove-small-islands option that raises validation Dice",
           "checkpoint": str(resolve_checkpoint(run)), "fold": cfg.get("fold"), "images": len(val),
           "threshold": threshold,
           "mean_dice_before": float(np.mean([v["dice_before"] for v in classes.values()])),
           "mean_dice_after": float(np.mean([v["dice_after"] for v in classes.values()])),
           "classes": classes}
    write_json(run / RULES_FILE if run.is_dir() else run.parent / RULES_FILE, doc, force=force)
    return doc
