"""Saved probabilities (``predict --save-probs DIR``): uint8-quantised, compressed, one file per image.

``DIR/<image stem>.npz`` holds ``probs`` (29, H, W) uint8 at the original image size, value
``round(p * 255)``; ``DIR/probs.json`` lists the images and the models that produced them. Predict's
CSV and soft voting both binarise the same stored values with `binarize`, so they agree exactly.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from boneseg.classes import CLASSES, NUM_CLASSES
from boneseg.errors import DataError
from boneseg.io import atomic_open, read_json, write_json

MANIFEST = "probs.json"
FORMAT = "boneseg-probs"
SCALE = 255


def quantize(probs) -> np.ndarray:
    """Probabilities in [0, 1] (numpy or torch) -> uint8 ``round(p * 255)``."""
    if hasattr(probs, "detach"):
        probs = probs.detach().float().cpu().numpy()
    return np.rint(np.clip(probs, 0.0, 1.0) * SCALE).astype(np.uint8)


def thresholds_array(threshold: float | Sequence[float] | dict[str, float]) -> np.ndarray:
    """A (29,) float array from a global threshold, a sequence, or a {class: threshold} mapping
    (classes not in the mapping keep 0.5)."""
    if isinstance(threshold, dict):
        from boneseg.classes import class_index

        out = np.full(NUM_CLASSES, 0.5)
        for name, t in threshold.items():
            out[class_index(name)] = float(t)
        return out
    arr = np.broadcast_to(np.asarray(threshold, np.float64), (NUM_CLASSES,)).copy()
    if ((arr < 0) | (arr > 1)).any():
        raise DataError(f"thresholds must be within [0, 1], got {arr.min():g}..{arr.max():g}")
    return arr


def cutoffs(threshold: float | Sequence[float] | dict[str, float] = 0.5) -> np.ndarray:
    """The (29,) integer cut per class: a quantised value ``q`` is foreground when ``q > cut``."""
    return np.floor(thresholds_array(threshold) * SCALE + 1e-9).astype(np.int32)


def binarize(q: np.ndarray, threshold: float | Sequence[float] | dict[str, float] = 0.5) -> np.ndarray:
    """Masks from quantised probabilities (29, H, W): a pixel is on when ``q / 255 > t`` per class."""
    cuts = cutoffs(threshold)
    return q > cuts.astype(np.uint8)[:, None, None] if q.ndim == 3 else q > cuts[0]


def prob_path(folder: str | os.PathLike, image_name: str) -> Path:
    return Path(folder) / f"{Path(image_name).stem}.npz"


def save(folder: str | os.PathLike, image_name: str, q: np.ndarray) -> Path:
    """Write one image's quantised probabilities atomically; returns the file."""
    if q.dtype != np.uint8 or q.ndim != 3 or q.shape[0] != NUM_CLASSES:
        raise ValueError(f"expected uint8 ({NUM_CLASSES}, H, W) probabilities, got {q.dtype} {q.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = prob_path(folder, image_name)
    with atomic_open(path, "wb", force=True) as fh:
        np.savez_compressed(fh, probs=q, image_name=np.array(image_name))
    return path


def load(folder: str | os.PathLike, image_name: str) -> np.ndarray:
    """One image's (29, H, W) uint8 probabilities; a missing or broken file is a `DataError`."""
    path = prob_path(folder, image_name)
    try:
        with np.load(path, allow_pickle=False) as z:
            q = z["probs"]
    except FileNotFoundError:
        raise DataError(f"{path}: probability file not found (image {image_name})") from None
    except (KeyError, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable probability file ({exc})") from None
    if q.dtype != np.uint8 or q.ndim != 3 or q.shape[0] != NUM_CLASSES:
        raise DataError(f"{path}: expected uint8 ({NUM_CLASSES}, H, W) probabilities, got {q.dtype} {q.shape}")
    return q


def write_manifest(folder: str | os.PathLike, images: Sequence[str], models: Sequence[str],
                   extra: dict | None = None) -> None:
    """The folder's manifest: image names (submission order), classes and the producing models."""
    write_json(Path(folder) / MANIFEST, {"format": FORMAT, "version": 1, "classes": list(CLASSES),
                                         "images": list(images), "models": list(models), **(extra or {})},
               force=True)


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a probability folder; `DataError` when it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: probability folder not found")
    doc = read_json(folder / MANIFEST)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("images"), list):
        raise DataError(f"{folder / MANIFEST}: not a boneseg probability manifest")
    if doc.get("classes") != list(CLASSES):
        raise DataError(f"{folder / MANIFEST}: classes differ from boneseg's 29 classes")
    return doc
