"""Predictions read back per image: a submission CSV or a ``predict --save-probs`` folder, one reader.

`open_predictions` picks by what the path is (a folder: probabilities, else a CSV). Both give the predicted
images' base names and, per image at its own size, the 29 masks; a probability folder also gives its
quantised probabilities (after a calibration, when one is given) and each class's confidence, binarised by
the one rule (`boneseg.probs.binarize`) at the given threshold(s). Used by ``pseudo``, ``audit`` and ``masks``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from boneseg import probs as probs_mod
from boneseg.classes import NUM_CLASSES
from boneseg.errors import DataError
from boneseg.submission import read_submission

__all__ = ["CsvPredictions", "ProbPredictions", "open_predictions"]


class CsvPredictions:
    """Masks from a submission CSV (no probabilities, hence no confidence)."""

    kind = "csv"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.sub = read_submission(self.path)
        self.images = list(self.sub.images)
        self.image_set = set(self.images)

    def masks(self, image: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """(masks (29, H, W) bool, None) of `image` at `shape`; `DataError` naming a malformed RLE."""
        return self.sub.masks(image, shape), None


class ProbPredictions:
    """Probabilities of a ``predict --save-probs`` folder, binarised as `predict` does.

    Raises:
        DataError: not a probability folder; a calibration given for probabilities calibrated when predicted;
            thresholds searched on calibrated probabilities applied to uncalibrated ones. UsageError: a
            threshold out of range.
    """

    kind = "probs"

    def __init__(self, path: str | os.PathLike, threshold: Any = 0.5, calibration: Any = None):
        self.path = Path(path)
        manifest = probs_mod.read_manifest(self.path)
        self.images = [Path(str(i)).name for i in manifest["images"]]
        self.image_set = set(self.images)
        self.cuts = probs_mod.read_thresholds(threshold)
        self.calibration = calibration  # a `boneseg.calibration.Calibration` applied to the stored values
        if calibration is not None:
            probs_mod.refuse_calibrated(self.path, manifest, "drop --calibration")
        probs_mod.check_thresholds_calibration(threshold, calibration is not None or bool(manifest.get("calibration")))

    def quantized(self, image: str, shape: tuple[int, int] | None) -> np.ndarray:
        """The (29, H, W) uint8 probabilities of `image` (calibrated, if a calibration was given), checked
        against the image's `shape` (None: the stored size is taken as it is)."""
        q = probs_mod.load(self.path, image)
        if shape is not None and q.shape[1:] != tuple(shape):
            raise DataError(
                f"{probs_mod.prob_path(self.path, image)}: probabilities are {q.shape[2]}x"
                f"{q.shape[1]} but the image is {shape[1]}x{shape[0]}"
            )
        return self.calibration.apply_quantized(q) if self.calibration is not None else q

    def binarize(self, q: np.ndarray) -> np.ndarray:
        """Masks of quantised probabilities at this source's threshold(s)."""
        return probs_mod.binarize(q, self.cuts)

    def masks(self, image: str, shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(masks (29, H, W) bool, confidence (29,): each class's mean probability inside its mask, 0 when
        it is empty) of `image` at `shape` (None: as stored)."""
        q = self.quantized(image, shape)
        masks = self.binarize(q)
        conf = np.zeros(NUM_CLASSES)
        for c in range(NUM_CLASSES):
            inside = q[c][masks[c]]
            conf[c] = inside.mean() / probs_mod.SCALE if inside.size else 0.0
        return masks, conf


def open_predictions(
    path: str | os.PathLike, threshold: Any = 0.5, calibration: Any = None
) -> CsvPredictions | ProbPredictions:
    """A probability folder (binarised at `threshold` after `calibration`, a `boneseg.calibration.Calibration`)
    or a submission CSV, chosen by what `path` is."""
    path = Path(path)
    return ProbPredictions(path, threshold, calibration) if path.is_dir() else CsvPredictions(path)
