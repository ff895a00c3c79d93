"""Pseudo-labels (``boneseg pseudo``): test predictions written back as a training set.

From a submission CSV or a ``predict --save-probs`` folder, each test image becomes a labelled sample
in the train layout::

    PSEUDO/train/DCM/ID040/image1661319116107.png          hard link to DATA's image (or a copy)
    PSEUDO/train/outputs_json/ID040/image1661319116107.json  one polygon per class, competition schema
    PSEUDO/pseudo_manifest.json                             where each came from, confidence, left-outs

Each class mask is traced to one polygon (the outer contour of its largest component, integer pixel
points); the polygons are filled back with `boneseg.data.masks.rasterize` -- exactly what training does
-- and the Dice of that refill against the mask is recorded. An image is written only when all 29
classes are predicted (an empty class would teach "no bone here"), with probabilities and a minimum
confidence when every class is confident enough (mean probability inside its mask), and with other
predictions of the same images (`agree_with`: other models, folds or TTA runs) and a minimum agreement
when every class's mask agrees with theirs (mean Dice against each) -- pseudo-labels only where
independent models concur.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from boneseg import probs as probs_mod
from boneseg.classes import CLASSES
from boneseg.data.labels import label_document, write_label
from boneseg.data.layout import IMAGE_DIR, LABEL_DIR, by_image_name, find_images, read_image
from boneseg.data.masks import rasterize
from boneseg.errors import DataError, OutputExistsError, UsageError, check_workers
from boneseg.io import publish_folder, staging_folder, write_json
from boneseg.maskops import bbox
from boneseg.metrics import dice
from boneseg.predictions import open_predictions
from boneseg.progress import SILENT, Reporter
from boneseg.workflows.parallel import STATE, parallel_map

__all__ = ["MANIFEST", "PseudoSummary", "trace_polygon", "make_pseudo"]

MANIFEST = "pseudo_manifest.json"
FORMAT = "boneseg-pseudo"


# -- masks -> polygons ----------------------------------------------------------------------------


def trace_polygon(mask: np.ndarray) -> np.ndarray | None:
    """The outer contour of the largest component of a 2-D mask as (N, 2) int32 ``[x, y]`` points.

    Works on the mask's bounding box only. Returns None for an empty mask or a component too thin to
    make a polygon (fewer than 3 points).
    """
    box = bbox(mask)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    crop = np.zeros((r1 - r0 + 2, c1 - c0 + 2), np.uint8)
    crop[1:-1, 1:-1] = mask[r0:r1, c0:c1]
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(int(c0) - 1, int(r0) - 1))
    best = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    points = best.reshape(-1, 2).astype(np.int32)
    return points if len(points) >= 3 else None


# -- one image ------------------------------------------------------------------------------------


def _left_out(name: str, reason: str, classes: Sequence[str] = ()) -> dict:
    out: dict[str, Any] = {"image": name, "reason": reason}
    if classes:
        out["classes"] = list(classes)
    return out


def _place_image(src: Path, dst: Path, copy: bool) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:
            pass
    shutil.copy2(src, dst)
    return "copy"


def _agreement(name: str, masks: np.ndarray, others: Sequence) -> np.ndarray | str:
    """Per class, the mean Dice of `masks` against each other source's masks of the image (a reason
    string when one of them lacks the image)."""
    image_name, scores = Path(name).name, []
    for other in others:
        if image_name not in other.image_set:
            return f"not predicted by {other.path.name}"
        scores.append(dice(other.masks(image_name, masks.shape[1:])[0], masks))
    return np.mean(scores, axis=0)


def _below(name: str, what: str, values: np.ndarray, minimum: float) -> dict:
    low = [c for c, v in zip(CLASSES, values) if v < minimum]
    return _left_out(name, f"{what} {values.min():.3f} < {minimum:g} ({len(low)} class(es))", low)


def _doubtful(folder: str | os.PathLike, limit: float, images: Sequence[str]) -> dict[str, tuple[str, list[str]]]:
    """Images whose class entropy (``uncertainty.csv``, `boneseg.uncertainty`) is above `limit`: image ->
    (reason, classes).

    Raises:
        DataError: see `boneseg.uncertainty.read_table`.
    """
    from boneseg.uncertainty import read_table

    out = {}
    for name, maps in read_table(folder, images).items():
        high = [c for c, v in zip(CLASSES, maps["entropy"]) if v > limit]
        if high:
            worst = max(v for v in maps["entropy"] if v > limit)
            out[name] = (f"uncertainty {worst:.3f} > {limit:g} ({len(high)} class(es))", high)
    return out


def _pseudo_worker(task: tuple[str, str]) -> dict:
    name, image_path = task
    source, others, stage, min_conf, min_agree, copy = (
        STATE[k] for k in ("source", "others", "stage", "min_confidence", "min_agreement", "copy")
    )
    image_name = Path(name).name
    shape = read_image(image_path).shape  # decoded: a corrupt image is refused, never linked into the set
    masks, conf = source.masks(image_name, shape)
    empty = [c for c, m in zip(CLASSES, masks) if not m.any()]
    if empty:
        return {"left_out": _left_out(name, f"{len(empty)} class(es) not predicted", empty)}
    if min_conf is not None and conf is not None and conf.min() < min_conf:
        return {"left_out": _below(name, "confidence", conf, min_conf)}
    agree = _agreement(name, masks, others) if others else None
    if isinstance(agree, str):
        return {"left_out": _left_out(name, agree)}
    if min_agree is not None and agree is not None and agree.min() < min_agree:
        return {"left_out": _below(name, "agreement", agree, min_agree)}
    polygons = {}
    for c, m in zip(CLASSES, masks):
        pts = trace_polygon(m)
        if pts is None:
            return {"left_out": _left_out(name, f"mask of {c} too thin to trace a polygon", [c])}
        polygons[c] = pts
    scores = dice(rasterize(polygons, shape), masks)
    doc = label_document(polygons, image_name, shape, source="boneseg pseudo")
    write_label(stage / "train" / LABEL_DIR / Path(name).with_suffix(".json"), doc)
    how = _place_image(Path(image_path), stage / "train" / IMAGE_DIR / name, copy)
    worst = int(np.argmin(scores))
    record = {
        "image": name,
        "source_image": str(Path(image_path).resolve()),
        "image_file": how,
        "refill_dice_mean": round(float(scores.mean()), 5),
        "refill_dice_min": round(float(scores[worst]), 5),
        "refill_dice_min_class": CLASSES[worst],
        "confidence": None,
    }
    if conf is not None:
        weakest = int(np.argmin(conf))
        record.update(confidence=round(float(conf[weakest]), 5), weakest_class=CLASSES[weakest])
    if agree is not None:
        weakest = int(np.argmin(agree))
        record.update(agreement=round(float(agree[weakest]), 5), least_agreed_class=CLASSES[weakest])
    return {"written": record}


# -- the command ----------------------------------------------------------------------------------


@dataclass
class PseudoSummary:
    """What `make_pseudo` wrote."""

    out: Path
    written: list[dict] = field(default_factory=list)
    left_out: list[dict] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)


def _prepare_out(out: Path, force: bool) -> Path:
    """Check the output folder (the ``--force`` rule) and return a staging folder beside it."""
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out} exists and is not a folder")
        if any(out.iterdir()):
            if not force:
                raise OutputExistsError(f"{out} already exists and is not empty (use --force to overwrite)")
            if not (out / MANIFEST).is_file():
                raise DataError(
                    f"{out} is not a pseudo-label folder (no {MANIFEST}); not overwriting it even with --force"
                )
    return staging_folder(out)


def make_pseudo(
    source: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    min_confidence: float | None = None,
    threshold: Any = 0.5,
    copy: bool = False,
    agree_with: Sequence[str | os.PathLike] = (),
    min_agreement: float | None = None,
    calibration: str | os.PathLike | None = None,
    uncertainty: str | os.PathLike | None = None,
    max_uncertainty: float | None = None,
    workers: int | None = None,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> PseudoSummary:
    """Write pseudo-labelled test images in the train layout.

    Args:
        source: a submission CSV or a ``predict --save-probs`` folder with the test predictions.
        data: the dataset root (its ``test/DCM``) or a folder of the predicted PNGs.
        out: the pseudo-label dataset folder (``train --pseudo`` reads it); written atomically.
        min_confidence: with probabilities, leave out images where a class's mean probability inside
            its mask is below this.
        threshold: probability threshold(s) for a probability folder (global, per class list,
            ``{class: t}`` or a JSON file of them: `boneseg.probs.read_thresholds`), as in ``predict``.
        agree_with: other predictions of the images (CSVs or probability folders, binarised with
            `threshold`); each image records the weakest class's agreement (mean Dice against them).
        min_agreement: leave out images where a class's agreement is below this (needs `agree_with`).
        calibration: a calibration file (``boneseg calibrate``) applied to the source's probabilities before
            they are thresholded and their confidence measured (a probability folder only).
        uncertainty: a ``predict --save-uncertainty`` folder of the same predictions; with `max_uncertainty`,
            images where a class's mean entropy over its region (``uncertainty.csv``) is above the limit
            are left out.
        copy: copy images instead of hard-linking them.
        workers: processes (default: all usable cores).
        force: replace an existing pseudo-label folder.
        reporter: its progress (`boneseg.progress`), one step per image.

    Raises:
        DataError: unreadable sources, an unreadable image (each is decoded before it is linked),
            predictions for images that DATA lacks, malformed RLE (naming file, image and class). UsageError:
            impossible options. OutputExistsError: `out` exists.
    """
    out = Path(out)
    check_workers(workers)
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise UsageError(f"--min-confidence must be within [0, 1], got {min_confidence}")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise UsageError(f"--min-agreement must be within [0, 1], got {min_agreement}")
    if max_uncertainty is not None and not 0.0 <= max_uncertainty <= 1.0:
        raise UsageError(f"--max-uncertainty must be within [0, 1], got {max_uncertainty}")
    if (max_uncertainty is None) != (uncertainty is None):
        raise UsageError("--max-uncertainty and --uncertainty go together (the limit and the maps of the source)")
    if min_agreement is not None and not agree_with:
        raise UsageError("--min-agreement needs other predictions to agree with (--agree-with)")
    thresholds = probs_mod.read_thresholds(threshold)
    from boneseg.calibration import resolve

    calibrated = resolve(calibration)
    if calibrated is not None and not Path(source).is_dir():
        raise UsageError("--calibration applies to a probability folder (a CSV is already binary)")
    src = open_predictions(source, threshold, calibrated)
    others = [open_predictions(p, threshold) for p in agree_with]
    if (thresholds != 0.5).any() and all(s.kind == "csv" for s in (src, *others)):
        raise UsageError("--threshold applies to probability folders only (a CSV is already binary)")
    if min_confidence is not None and src.kind != "probs":
        raise UsageError(
            "--min-confidence needs a probability folder (`predict --save-probs`); a CSV carries no confidence"
        )
    samples = find_images(data)
    by_name = by_image_name(samples, data)
    unknown = [i for i in src.images if i not in by_name]
    if unknown:
        raise DataError(
            f"{source}: predicts image {unknown[0]!r} that {data} lacks"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
        )
    predicted = set(src.images)
    left_out = [_left_out(s.name, "no prediction in the source") for s in samples if s.image_name not in predicted]
    tasks = [(s.name, str(s.image)) for s in samples if s.image_name in predicted]
    if uncertainty is not None and max_uncertainty is not None:
        doubtful = _doubtful(uncertainty, max_uncertainty, [Path(n).name for n, _ in tasks])
        left_out += [_left_out(n, doubtful[Path(n).name][0], doubtful[Path(n).name][1]) for n, _ in tasks
                     if Path(n).name in doubtful]  # fmt: skip
        tasks = [t for t in tasks if Path(t[0]).name not in doubtful]
    stage = _prepare_out(out, force)
    try:
        for sub in (IMAGE_DIR, LABEL_DIR):  # the train layout even when every image is left out
            (stage / "train" / sub).mkdir(parents=True)
        state = {
            "source": src,
            "others": others,
            "stage": stage,
            "min_confidence": min_confidence,
            "min_agreement": min_agreement,
            "copy": copy,
        }
        written = []
        with reporter.task("pseudo-labels", len(tasks), "img") as task:
            results = list(parallel_map(_pseudo_worker, tasks, state, workers, task))
        for result in results:
            if "written" in result:
                written.append(result["written"])
            else:
                left_out.append(result["left_out"])
        left_out.sort(key=lambda r: r["image"])
        means = [r["refill_dice_mean"] for r in written]
        manifest = {
            "format": FORMAT,
            "version": 1,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": str(Path(source).resolve()),
            "source_kind": src.kind,
            "data": str(Path(data).resolve()),
            "threshold": thresholds.tolist() if src.kind == "probs" else None,
            "min_confidence": min_confidence,
            "agree_with": [str(Path(p).resolve()) for p in agree_with],
            "min_agreement": min_agreement,
            "uncertainty": str(Path(uncertainty).resolve()) if uncertainty is not None else None,
            "max_uncertainty": max_uncertainty,
            "summary": {
                "written": len(written),
                "left_out": len(left_out),
                "refill_dice_mean": round(float(np.mean(means)), 5) if means else None,
                "refill_dice_min": min((r["refill_dice_min"] for r in written), default=None),
            },
            "images": written,
            "left_out": left_out,
        }
        write_json(stage / MANIFEST, manifest, force=True)
        publish_folder(stage, out, force=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return PseudoSummary(out, written, left_out, manifest)
