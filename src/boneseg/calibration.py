"""Per-class probability calibration (``boneseg calibrate``): the file, its strict reader, the one rule applying it.

A calibration maps a class's probability ``p`` to ``sigmoid((logit(p) - bias) / temperature)``: a temperature
above 1 softens an over-confident class, the bias (Platt scaling) shifts it. Logits are taken from
probabilities clipped to ``[CLIP, 1 - CLIP]`` with ``CLIP = 0.5 / 255``, the centres of the outermost bins of
the saved uint8 probabilities (`boneseg.probs`): a fit on saved probabilities sees no logit beyond
``±LOGIT_LIMIT`` (6.23), and `apply` clips the same way, so a float probability and its saved value are
calibrated alike. On uint8 values the calibration is a per-class table of 256 entries (`Calibration.table`).

An isotonic calibration (``calibrate --isotonic``, file version 2) is that table itself: per class a
non-decreasing calibrated probability for each saved uint8 value (``steps``); a float probability ``p`` takes
the step of its saved value ``round(p * 255)``, so it too is calibrated as its saved value.

File (``calibration.json``; a run folder may hold one beside its checkpoint, which ``predict`` applies)::

    {"format": "boneseg-calibration", "version": 1, "classes": [29 names],
     "temperature": {class: T > 0}, "bias": {class: b},
     "thresholds": {class: t}   # optional: searched on the calibrated probabilities
     "steps": {class: [256 non-decreasing probabilities]}   # version 2 only (isotonic): replaces T and b
     ...}                       # anything else (the fit's report) is kept but not read
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boneseg.classes import CLASSES, NUM_CLASSES
from boneseg.errors import BonesegError, DataError
from boneseg.io import read_json, write_json
from boneseg.probs import SCALE, thresholds_array

FORMAT = "boneseg-calibration"
VERSION = 1
VERSION_STEPS = 2
"""The file version of an isotonic calibration: a reader of version 1 refuses it rather than apply its
identity temperature and bias."""
CLIP = 0.5 / SCALE
LOGIT_LIMIT = math.log((1 - CLIP) / CLIP)
MAX_TEMPERATURE = 1e3
"""Temperatures must lie within [1/MAX_TEMPERATURE, MAX_TEMPERATURE]; biases within ±MAX_BIAS."""
MAX_BIAS = 100.0


def logits(p):
    """Logits of probabilities (numpy or torch) clipped to ``[CLIP, 1 - CLIP]`` (float32 for torch)."""
    if hasattr(p, "detach"):
        return p.float().clamp(CLIP, 1 - CLIP).logit()
    p = np.clip(np.asarray(p, np.float64), CLIP, 1 - CLIP)
    return np.log(p) - np.log1p(-p)


def dequantize(q: np.ndarray) -> np.ndarray:
    """uint8 saved probabilities -> float64 ``q / 255``."""
    return np.asarray(q, np.float64) / SCALE


@dataclass(frozen=True)
class Calibration:
    """Per-class temperature and bias (29 each), optional thresholds searched after calibration, the file it
    came from (for the records of the outputs it was applied to) and, for an isotonic calibration, the (29,
    256) `steps` that replace temperature and bias."""

    temperature: np.ndarray
    bias: np.ndarray
    thresholds: np.ndarray | None = None
    source: str = ""
    steps: np.ndarray | None = None

    @classmethod
    def identity(cls) -> Calibration:
        return cls(np.ones(NUM_CLASSES), np.zeros(NUM_CLASSES))

    def apply(self, p):
        """Calibrated probabilities of (29, H, W) probabilities (numpy float64, or a float32 torch tensor on
        the input's device)."""
        if self.steps is not None:
            return self._step(p)
        z = logits(p)
        if hasattr(z, "detach"):
            import torch

            t = torch.as_tensor(self.temperature, dtype=torch.float32, device=z.device)[:, None, None]
            b = torch.as_tensor(self.bias, dtype=torch.float32, device=z.device)[:, None, None]
            return z.sub_(b).div_(t).sigmoid_()
        return _sigmoid((z - self.bias[:, None, None]) / self.temperature[:, None, None])

    def _step(self, p):
        """The isotonic rule: each probability takes the step of its saved value ``round(p * 255)``."""
        assert self.steps is not None
        if hasattr(p, "detach"):
            import torch

            steps = torch.as_tensor(self.steps, dtype=torch.float32, device=p.device)
            index = (p.float().clamp(0, 1) * SCALE).round().long().reshape(p.shape[0], -1)
            return torch.gather(steps, 1, index).reshape(p.shape)
        q = np.rint(np.clip(np.asarray(p, np.float64), 0, 1) * SCALE).astype(np.int64)
        return np.take_along_axis(self.steps, q.reshape(q.shape[0], -1), axis=1).reshape(q.shape)

    def table(self) -> np.ndarray:
        """(29, 256) calibrated probability of each uint8 saved value, per class."""
        if self.steps is not None:
            return np.array(self.steps, np.float64)
        z = logits(np.arange(SCALE + 1) / SCALE)
        return _sigmoid((z[None, :] - self.bias[:, None]) / self.temperature[:, None])

    def apply_quantized(self, q: np.ndarray) -> np.ndarray:
        """Calibrated uint8 probabilities of uint8 ones (29, H, W): a table look-up per class, re-quantised."""
        lut = np.rint(self.table() * SCALE).astype(np.uint8)
        out = np.empty_like(q)
        for c in range(NUM_CLASSES):
            out[c] = lut[c][q[c]]
        return out

    def record(self) -> dict[str, Any]:
        """What an output records about the calibration applied to it."""
        out: dict[str, Any] = {
            "source": self.source,
            "temperature": {c: float(t) for c, t in zip(CLASSES, self.temperature)},
            "bias": {c: float(b) for c, b in zip(CLASSES, self.bias)},
        }
        if self.steps is not None:
            out["steps"] = _steps_document(self.steps)
        return out

    def document(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The file's document (`read` reads it back)."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION if self.steps is None else VERSION_STEPS,
            "classes": list(CLASSES),
            "temperature": {c: float(t) for c, t in zip(CLASSES, self.temperature)},
            "bias": {c: float(b) for c, b in zip(CLASSES, self.bias)},
        }
        if self.thresholds is not None:
            doc["thresholds"] = {c: float(t) for c, t in zip(CLASSES, self.thresholds)}
        if self.steps is not None:
            doc["steps"] = _steps_document(self.steps)
        return {**doc, **(extra or {})}

    def write(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None, force: bool = False) -> None:
        write_json(path, self.document(extra), force=force)


def _steps_document(steps: np.ndarray) -> dict[str, list[float]]:
    return {c: [round(float(v), 8) for v in row] for c, row in zip(CLASSES, steps)}


def _read_steps(doc: Mapping[str, Any], where: str) -> np.ndarray:
    """The (29, 256) steps of a version-2 document: per class 256 non-decreasing numbers within [0, 1]."""
    values = doc.get("steps")
    if not isinstance(values, Mapping):
        raise DataError(f"{where}: version {VERSION_STEPS} needs 'steps', an object {{class: [256 probabilities]}}")
    unknown = [k for k in values if k not in CLASSES]
    if unknown:
        from boneseg.errors import suggest

        raise DataError(f"{where}: 'steps' names unknown class {unknown[0]!r}{suggest(str(unknown[0]), CLASSES)}")
    out = np.empty((NUM_CLASSES, SCALE + 1))
    for c, name in enumerate(CLASSES):
        row = values.get(name)
        if not isinstance(row, list) or len(row) != SCALE + 1:
            raise DataError(f"{where}: 'steps' of {name!r} must be a list of {SCALE + 1} probabilities")
        out[c] = [_number(v, f"{where}: 'steps' of {name!r}", 0.0, 1.0) for v in row]
        if (np.diff(out[c]) < 0).any():
            raise DataError(f"{where}: 'steps' of {name!r} must not decrease (a calibration keeps the order)")
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise DataError(f"{where}: {value!r} is not a finite number")
    if not low <= float(value) <= high:
        raise DataError(f"{where}: {value!r} must be within [{low:g}, {high:g}]")
    return float(value)


def _per_class(doc: Mapping[str, Any], key: str, where: str, low: float, high: float) -> np.ndarray:
    values = doc.get(key)
    if not isinstance(values, Mapping):
        raise DataError(f"{where}: '{key}' must be an object {{class: number}} over the {NUM_CLASSES} classes")
    unknown = [k for k in values if k not in CLASSES]
    if unknown:
        from boneseg.errors import suggest

        raise DataError(f"{where}: '{key}' names unknown class {unknown[0]!r}{suggest(str(unknown[0]), CLASSES)}")
    missing = [c for c in CLASSES if c not in values]
    if missing:
        raise DataError(f"{where}: '{key}' lacks {len(missing)} class(es), e.g. {missing[0]!r}")
    return np.array([_number(values[c], f"{where}: '{key}' of {c!r}", low, high) for c in CLASSES])


def from_document(doc: Any, where: str) -> Calibration:
    """A calibration from its document (a file's, or the one an export sidecar carries).

    Raises:
        DataError: naming `where` and the key or class at fault: another format or version, other classes, a
            temperature that is not a finite number within [1e-3, 1e3], a bias beyond ±100, bad thresholds.
    """
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
        raise DataError(f"{where}: not a boneseg calibration file (made by boneseg calibrate)")
    if doc.get("version") not in (VERSION, VERSION_STEPS):
        raise DataError(
            f"{where}: calibration version {doc.get('version')!r}, this boneseg reads versions {VERSION} and "
            f"{VERSION_STEPS}"
        )
    if doc.get("classes") != list(CLASSES):
        raise DataError(f"{where}: 'classes' differ from boneseg's {NUM_CLASSES} classes in their order")
    temperature = _per_class(doc, "temperature", where, 1 / MAX_TEMPERATURE, MAX_TEMPERATURE)
    bias = _per_class(doc, "bias", where, -MAX_BIAS, MAX_BIAS)
    thresholds = None
    if doc.get("thresholds") is not None:
        if not isinstance(doc["thresholds"], Mapping):
            raise DataError(f"{where}: 'thresholds' must be an object {{class: threshold}}")
        try:
            thresholds = thresholds_array(doc["thresholds"])
        except BonesegError as exc:
            raise DataError(f"{where}: 'thresholds': {exc}") from None
    steps = _read_steps(doc, where) if doc.get("version") == VERSION_STEPS else None
    return Calibration(temperature, bias, thresholds, where, steps)


def read(path: str | os.PathLike) -> Calibration:
    """The calibration file at `path` (see `from_document`); a missing file is a `DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: calibration file not found")
    return from_document(read_json(path), str(path))


def resolve(setting: str | os.PathLike | Calibration | None) -> Calibration | None:
    """``--calibration``'s value as a calibration: None/``none``: none, ``auto``: None here (the caller looks
    beside its models), a `Calibration` as is, else a file."""
    if isinstance(setting, Calibration):
        return setting
    if setting is None or str(setting).lower() in ("none", "auto"):
        return None
    return read(setting)
