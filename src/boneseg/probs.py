"""Saved probabilities (``predict --save-probs DIR``): uint8-quantised, compressed, one file per image.

``DIR/<image stem>.npz`` holds ``probs`` (29, H, W) uint8 at the original image size, value
``round(p * 255)``; ``DIR/probs.json`` lists the images and the models that produced them. Predict's
CSV and soft voting both binarise the same stored values with `binarize`, so they agree exactly.
A folder is written all or nothing: into `boneseg.io.staging_folder` beside it, moved into place by
`boneseg.io.publish_folder`.
"""

from __future__ import annotations

import math
import numbers
import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from boneseg.classes import CLASSES, NUM_CLASSES, class_index
from boneseg.errors import BonesegError, DataError, UsageError
from boneseg.io import atomic_open, read_json, write_json

MANIFEST = "probs.json"
FORMAT = "boneseg-probs"
SCALE = 255


def quantize(probs) -> np.ndarray:
    """Probabilities in [0, 1] (numpy or torch) -> uint8 ``round(p * 255)``."""
    if hasattr(probs, "detach"):
        probs = probs.detach().float().cpu().numpy()
    return np.rint(np.clip(probs, 0.0, 1.0) * SCALE).astype(np.uint8)


def _threshold_problem(t) -> str | None:
    """Why `t` cannot be a probability threshold (None when it can)."""
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Real):
        return "is not a number"
    if not math.isfinite(t):
        return "must be a finite number"
    return None if 0.0 <= float(t) <= 1.0 else "must be within [0, 1]"


def _checked(t, where: str = "") -> float:
    """`t` as a threshold; a `UsageError` (prefixed with `where`) when it is not a finite number in [0, 1]."""
    problem = _threshold_problem(t)
    if problem:
        raise UsageError(f"{where}threshold {t if isinstance(t, numbers.Real) else repr(t)}: {problem}")
    return float(t)


def thresholds_array(threshold: float | Sequence[float] | np.ndarray | Mapping[str, float]) -> np.ndarray:
    """A (29,) float array from a global threshold, one per class, or a {class: threshold} mapping
    (classes not in the mapping keep 0.5).

    Raises:
        UsageError: a threshold that is not a finite number within [0, 1] (naming its class), or a count
            other than 1 or 29. DataError: an unknown class name.
    """
    if isinstance(threshold, Mapping):
        out = np.full(NUM_CLASSES, 0.5)
        for name, t in threshold.items():
            out[class_index(name)] = _checked(t, f"class {name!r}: ")
        return out
    values = np.ravel(np.asarray(threshold, dtype=object))
    if values.size == 1:
        return np.full(NUM_CLASSES, _checked(values[0]))
    if values.size != NUM_CLASSES:
        raise UsageError(f"expected 1 or {NUM_CLASSES} thresholds, got {values.size}")
    return np.array([_checked(t, f"class {name!r}: ") for name, t in zip(CLASSES, values)])


def read_thresholds(value: float | str | os.PathLike | Sequence[float] | Mapping[str, float] | None) -> np.ndarray:
    """Per-class thresholds (29,) from a number, number text, a sequence, a ``{class: t}`` mapping, or a
    JSON file holding such a mapping (optionally under a ``"thresholds"`` key, as ``boneseg tta
    --thresholds-out`` writes); None means 0.5. The one reader of ``--threshold T|FILE.json``.

    Raises:
        UsageError: a value that is not a finite number within [0, 1], or text that is neither a number
            nor an existing file (``--threshold …``). DataError: a file that is not such a mapping or
            holds a bad threshold (naming the file and the class).
    """
    if value is None:
        return thresholds_array(0.5)
    if not isinstance(value, (str, os.PathLike)):
        return thresholds_array(value)
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        path = Path(text)
        if not path.exists():
            raise UsageError(f"--threshold must be a number or a JSON file, got {text!r} (no such file)") from None
        doc = read_json(path)
        if isinstance(doc, dict) and isinstance(doc.get("thresholds"), dict):
            beside = [k for k in doc if k in CLASSES]
            if beside:
                raise DataError(
                    f"{path}: class {beside[0]!r} is given beside the 'thresholds' mapping (which one is meant?)"
                ) from None
            doc = doc["thresholds"]
        if not isinstance(doc, dict):
            raise DataError(f"{path}: expected a JSON object {{class: threshold}}") from None
        try:
            return thresholds_array(doc)
        except BonesegError as exc:
            raise DataError(f"{path}: {exc}") from None
    problem = _threshold_problem(number)
    if problem:
        raise UsageError(f"--threshold {text}: {problem}")
    return np.full(NUM_CLASSES, number)


def check_thresholds_calibration(value: object, calibrated: bool) -> None:
    """A `DataError` when `value` (``--threshold``'s) is a JSON file of thresholds searched on calibrated
    probabilities (a ``boneseg calibrate`` file, or ``tta --thresholds-out`` recording a calibration) and the
    probabilities it is applied to are not calibrated: the cut-offs would silently be those of another scale."""
    if calibrated or not isinstance(value, (str, os.PathLike)) or not Path(value).is_file():
        return
    doc = read_json(value)
    if isinstance(doc, dict) and (doc.get("calibration") or doc.get("format") == "boneseg-calibration"):
        raise DataError(
            f"--threshold {value}: thresholds searched on calibrated probabilities, applied here to uncalibrated "
            "ones (give the calibration as well, or thresholds of uncalibrated probabilities)"
        )


def cutoffs(threshold: float | Sequence[float] | np.ndarray | Mapping[str, float] = 0.5) -> np.ndarray:
    """The (29,) integer cut per class: a quantised value ``q`` is foreground when ``q > cut``.

    Raises:
        UsageError: a threshold that is not a finite number within [0, 1] (see `thresholds_array`).
    """
    return np.floor(thresholds_array(threshold) * SCALE + 1e-9).astype(np.int32)


def binarize(q: np.ndarray, threshold: float | Sequence[float] | np.ndarray | Mapping[str, float] = 0.5) -> np.ndarray:
    """Masks from quantised probabilities (29, H, W): a pixel is on when ``q / 255 > t`` per class."""
    cuts = cutoffs(threshold)
    return q > cuts.astype(np.uint8)[:, None, None] if q.ndim == 3 else q > cuts[0]


def prob_path(folder: str | os.PathLike, image_name: str) -> Path:
    return Path(folder) / f"{Path(image_name).stem}.npz"


def check_names(images: Sequence[str]) -> None:
    """Refuse images whose probabilities would share one file (``a.png`` and ``a.PNG``: one ``a.npz``).

    Raises:
        DataError: naming both images and the file.
    """
    seen: dict[str, str] = {}
    for name in images:
        file = prob_path("", name).name
        if file in seen:
            raise DataError(f"--save-probs: images {seen[file]} and {name} would share the probability file {file}")
        seen[file] = name


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
    """One image's (29, H, W) uint8 probabilities; a missing or broken file, one saved for another image or
    without the image name `save` records, is a `DataError`."""
    path = prob_path(folder, image_name)
    try:
        with np.load(path, allow_pickle=False) as z:
            q = z["probs"]
            saved_for = str(z["image_name"]) if "image_name" in z.files else None
    except FileNotFoundError:
        raise DataError(f"{path}: probability file not found (image {image_name})") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: unreadable or truncated probability file ({exc})") from None
    if q.dtype != np.uint8 or q.ndim != 3 or q.shape[0] != NUM_CLASSES:
        raise DataError(f"{path}: expected uint8 ({NUM_CLASSES}, H, W) probabilities, got {q.dtype} {q.shape}")
    if saved_for is None:
        raise DataError(
            f"{path}: no image name inside (boneseg's probability files record theirs): cannot prove it holds "
            f"the probabilities of {image_name}"
        )
    if Path(saved_for).name != Path(image_name).name:
        raise DataError(f"{path}: holds the probabilities of {saved_for}, not of {image_name}")
    return q


def stored_shape(folder: str | os.PathLike, image_name: str) -> tuple[int, ...]:
    """The shape of one image's stored probabilities, read from the file's header (nothing decompressed
    but the array header).

    Raises:
        DataError: a missing or unreadable file.
    """
    path = prob_path(folder, image_name)
    try:
        with zipfile.ZipFile(path) as z, z.open("probs.npy") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: probability file not found (image {image_name})") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: unreadable or truncated probability file ({exc})") from None
    return tuple(int(n) for n in shape)


def weighted_mean(qs: Sequence[np.ndarray | None], weights: np.ndarray) -> np.ndarray:
    """The soft vote's mean of uint8 probabilities (29, H, W): per class ``c`` the mean of ``qs[i][c]``
    weighted by ``weights[c, i]`` (an input whose weight is 0 for every class may be None), re-quantised
    with ``rint``. The one rule ``ensemble --vote soft`` and distillation targets share."""
    shape = next(q.shape for q in qs if q is not None)
    mean = np.empty(shape, np.uint8)
    for c in range(NUM_CLASSES):
        w = weights[c]
        acc = np.zeros(shape[1:], np.float64)
        for q, wi in zip(qs, w):
            if wi:
                assert q is not None  # only an input unused by every class may be left out
                acc += wi * q[c]
        np.rint(acc / w.sum(), out=acc)
        mean[c] = acc
    return mean


def write_manifest(
    folder: str | os.PathLike, images: Sequence[str], models: Sequence[str], extra: dict | None = None
) -> None:
    """The folder's manifest: image names (submission order), classes and the producing models."""
    write_json(
        Path(folder) / MANIFEST,
        {
            "format": FORMAT,
            "version": 1,
            "classes": list(CLASSES),
            "images": list(images),
            "models": list(models),
            **(extra or {}),
        },
        force=True,
    )


def refuse_calibrated(folder: str | os.PathLike, manifest: Mapping, remedy: str) -> None:
    """A `DataError` when `folder`'s manifest says its probabilities were calibrated when predicted: a
    calibration applied (or fitted) again on top of one would silently compound the two."""
    if manifest.get("calibration"):
        raise DataError(
            f"{folder}: its probabilities were calibrated when predicted (probs.json 'calibration'); {remedy}"
        )


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
