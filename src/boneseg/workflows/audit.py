"""`boneseg audit`: rank (image, class) labels by how likely they are wrong, from out-of-fold predictions.

Every pair gets an *evidence* value in [0, 1], "the fraction of this label that looks wrong", of the kind
that explains it best:

* ``disagreement``: ``(1 - Dice(label, prediction)) * confidence`` (mean probability over the predicted
  mask; 1 for a CSV), and separately the symmetric mean boundary distance (px at the image's size) and the
  area ratio ``log(label area / predicted area) * confidence`` (a scaled polygon whose Dice is still high);
* ``swap``: a disagreement where the label matches another class's prediction better (Dice >= 0.5) than
  its own class's;
* ``missing``: no label where the model predicts the bone: predicted area / the class's median label area
  (at most 1), times the confidence;
* ``spurious``: a label where the model sees nothing (mean probability inside the label below 0.1):
  1 - that probability, times the label's area / the class median (at most 1);
* ``geometry``, from the label alone: the area beyond its largest component (two distant pieces), the
  area a self-intersecting outline gets wrong (filled area vs. its signed area), a polygon under a tenth
  of the class's median area, or a finger bone on the wrong side of its neighbours in its row along the
  label's own index-to-little-finger axis (1; of two bones out of order, the one the model agrees with
  less is named).

Scores are robust z-scores per class: ``(evidence - median) / spread`` with the median and spread
(1.4826 * MAD, at least `MIN_SPREAD`) of the disagreement evidence of that class over all audited images.
The boundary distance and the area ratio (both ways: ``|z|``) are scored against their own per-class median
and spread, and so is ``geometry``, which does not depend on the model. A score therefore reads the same for
every kind and class: how many of the class's usual spreads beyond its usual value. Pairs scoring at least
``min_score`` are suspects, listed most suspect first with the kind of their highest score. Predictions
whose mean Dice against the labels is below `WEAK_DICE` are too weak to rank labels: a warning says so.

With the model's uncertainty maps (``predict --save-uncertainty``, `boneseg.uncertainty`; the pixel-wise
largest of its maps), each pair's *unsureness* is the map's mean over the pixels where label and prediction
disagree (over their union when they agree; 0 when both are empty). Every model-based measure (the
evidence of disagreement, swap, missing and spurious, the boundary distance and the area ratio) is then
weighted by ``1 - unsureness`` before it is scored: a disagreement where the model is sure is more suspect
than one where it is unsure. Without maps the weight is 1 (the audit is unchanged).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from boneseg import probs as probs_mod
from boneseg.classes import CLASS_INDEX, CLASSES, NUM_CLASSES
from boneseg.data.layout import Sample, by_image_name, discover, png_shape, read_image
from boneseg.data.masks import load_label, rasterize
from boneseg.errors import BonesegWarning, DataError, OutputExistsError, UsageError, suggest
from boneseg.io import check_output, hold, publishing, write_json
from boneseg.plots import overlay_compare, save_png
from boneseg.predictions import CsvPredictions, open_predictions
from boneseg.progress import SILENT, Reporter, track
from boneseg.submission import format_row
from boneseg.workflows.eda import TINY_FRACTION, self_intersections

KINDS = ("disagreement", "swap", "missing", "spurious", "geometry")
SUSPECTS_FILE, AUDIT_FILE, CROPS_DIR = "suspects.csv", "audit.json", "crops"
SUSPECT_COLUMNS = ("image_name", "class", "kind", "score")
WORK_SIDE = 512
"""Masks are compared at most this many pixels a side (distances are reported at the image's own size)."""
MIN_SPREAD = 0.02
"""Smallest per-class spread of the evidence (Dice units), so that a class the model never misses still
needs a real disagreement to score high."""
MIN_RATIO_SPREAD = 0.05
"""Smallest per-class spread of the log area ratio (about 5% of the area)."""
MIN_IMAGES = 3
"""Fewest images whose robust statistics can single a label out: the median and MAD of two values put
both at 0.67 spreads from the centre, whatever they are."""
NOTHING = 0.1
"""A label whose mean predicted probability is below this is ``spurious`` (the model sees no bone there)."""
FINGER_ROWS = (
    ("finger-1", "finger-4", "finger-8", "finger-12", "finger-16"),
    ("finger-5", "finger-9", "finger-13", "finger-17"),
    ("finger-2", "finger-6", "finger-10", "finger-14", "finger-18"),
    ("finger-3", "finger-7", "finger-11", "finger-15", "finger-19"),
)
"""Finger bones side by side, thumb to little finger: distal, middle, proximal phalanges, metacarpals."""
INDEX_FINGER = ("finger-4", "finger-5", "finger-6", "finger-7")
LITTLE_FINGER = ("finger-16", "finger-17", "finger-18", "finger-19")
"""The rows' axis runs from the centre of the labelled index finger's bones to the little finger's: from the
label alone, and one swapped bone moves an end by a quarter of its share only."""
WEAK_DICE = 0.5
"""Below this mean Dice between the predictions and the labels, the predictions are too weak to rank labels:
their own errors outnumber the labels'."""


@dataclass
class AuditResult:
    """Per-pair measurements (images x 29) and the ranked suspects."""

    images: list[str]
    evidence: dict[str, np.ndarray]
    distance: np.ndarray
    center: np.ndarray
    spread: np.ndarray
    dist_center: np.ndarray
    dist_spread: np.ndarray
    ratio_center: np.ndarray
    ratio_spread: np.ndarray
    suspects: list[dict] = field(default_factory=list)
    min_score: float = 3.5
    mean_dice: float | None = None  # of the predictions against the labels, over the labelled pairs
    uncertainty: dict | None = None  # {"folder", "maps"} when the scores were weighted by uncertainty maps

    @property
    def weak(self) -> bool:
        """Whether the predictions are too weak to rank the labels (mean Dice below `WEAK_DICE`)."""
        return self.mean_dice is not None and self.mean_dice < WEAK_DICE

    def to_json(self) -> dict:
        counts = {k: sum(s["kind"] == k for s in self.suspects) for k in KINDS}
        return {
            "images": len(self.images),
            "pairs": len(self.images) * NUM_CLASSES,
            "min_score": self.min_score,
            "mean_dice": _num(self.mean_dice) if self.mean_dice is not None else None,
            "weak_predictions": self.weak,
            "suspects": len(self.suspects),
            "uncertainty": self.uncertainty,
            "by_kind": counts,
            "classes": {
                c: {
                    "evidence_median": _num(self.center[i]),
                    "evidence_spread": _num(self.spread[i]),
                    "distance_median": _num(self.dist_center[i]),
                    "distance_spread": _num(self.dist_spread[i]),
                    "log_area_ratio_median": _num(self.ratio_center[i]),
                    "log_area_ratio_spread": _num(self.ratio_spread[i]),
                }
                for i, c in enumerate(CLASSES)
            },
            "ranked": self.suspects,
        }


def _num(v: float) -> float | None:
    return round(float(v), 5) if math.isfinite(float(v)) else None


class Predictions:
    """Predictions (`boneseg.predictions`: a submission CSV or a probability folder) read per image at the
    audit's working size."""

    def __init__(self, path: str | os.PathLike, threshold: float | str | os.PathLike = 0.5):
        self.source = open_predictions(path, threshold)
        self.names = self.source.images

    def get(self, name: str, shape: tuple[int, int], work: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(masks (29, h, w) bool, probabilities (29, h, w) float32) of image `name` at the size `work`."""
        src = self.source
        if isinstance(src, CsvPredictions):
            masks = _resize(src.masks(name, shape)[0].view(np.uint8), work, cv2.INTER_NEAREST).view(np.bool_)
            return masks, masks.astype(np.float32)
        q = _resize(src.quantized(name, shape), work, cv2.INTER_AREA)
        return src.binarize(q), q.astype(np.float32) / probs_mod.SCALE


def _resize(stack: np.ndarray, work: tuple[int, int], interpolation: int) -> np.ndarray:
    if stack.shape[1:] == tuple(work):
        return stack
    return np.stack([cv2.resize(m, (work[1], work[0]), interpolation=interpolation) for m in stack])


def work_shape(shape: tuple[int, int]) -> tuple[tuple[int, int], float]:
    """The working size for an image of `shape` and its scale."""
    f = min(1.0, WORK_SIDE / max(shape))
    return (max(1, round(shape[0] * f)), max(1, round(shape[1] * f))), f


def _edge(mask: np.ndarray) -> np.ndarray:
    m = mask.view(np.uint8)
    return mask & ~cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0).view(np.bool_)


def boundary_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean distance between the outlines of two non-empty masks (pixels); nan if one is empty."""
    both = a | b
    rows, cols = np.flatnonzero(both.any(1)), np.flatnonzero(both.any(0))
    if not a.any() or not b.any():
        return math.nan
    box = np.s_[max(rows[0] - 1, 0) : rows[-1] + 2, max(cols[0] - 1, 0) : cols[-1] + 2]
    ea, eb = _edge(a[box]), _edge(b[box])
    da = cv2.distanceTransform((~ea).view(np.uint8), cv2.DIST_L2, 3)
    db = cv2.distanceTransform((~eb).view(np.uint8), cv2.DIST_L2, 3)
    return 0.5 * (float(db[ea].mean()) + float(da[eb].mean()))


def stray_fraction(mask: np.ndarray) -> float:
    """The share of a mask's area outside its largest connected piece (specks under 2% of it ignored),
    after a 3x3 opening: a piece joined to the bone by a bridge a pixel or two wide counts as apart."""
    opened = cv2.morphologyEx(mask.view(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if n <= 2:
        return 0.0
    areas = np.sort(stats[1:, cv2.CC_STAT_AREA])[::-1]
    rest = areas[1:][areas[1:] >= 0.02 * areas.sum()]
    return float(rest.sum() / areas.sum())


def twist_fraction(points: np.ndarray, filled: float) -> float:
    """For a self-intersecting outline, how much its filled area (`filled`, px) and its signed area differ,
    relative to the filled area; 0 for a simple polygon."""
    if filled <= 0 or not self_intersections(points):
        return 0.0
    signed = abs(float(cv2.contourArea(points.astype(np.float32).reshape(-1, 1, 2))))
    return float(min(1.0, abs(filled - signed) / filled))


def out_of_row(centres: dict[str, np.ndarray], axis: np.ndarray, trust: dict[str, float]) -> set[str]:
    """Finger bones out of place in their row along `axis` (thumb -> little finger): those outside the
    longest in-order run of the row, ties kept for the bones with the higher `trust`."""
    wrong: set[str] = set()
    for row in FINGER_ROWS:
        names = [c for c in row if c in centres]
        pos = [float(centres[c] @ axis) for c in names]
        best: list[tuple[float, list[str]]] = []  # per bone: (value, the best in-order run ending there)
        for j, name in enumerate(names):
            prev = max((best[i] for i in range(j) if pos[i] < pos[j]), default=(0.0, []), key=lambda b: b[0])
            best.append((prev[0] + 1 + 0.01 * trust.get(name, 0.0), prev[1] + [name]))
        keep = max(best, default=(0.0, []), key=lambda b: b[0])[1]
        wrong.update(set(names) - set(keep))
    return wrong


def _centre(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else None


def _mean_centre(centres: dict[str, np.ndarray | None], names: tuple[str, ...]) -> np.ndarray | None:
    found = [v for v in (centres.get(c) for c in names) if v is not None]
    return np.mean(found, axis=0) if found else None


def measure_image(
    gt: np.ndarray,
    pred: np.ndarray,
    prob: np.ndarray,
    polygons: dict[str, np.ndarray],
    scale: float,
    unsure: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-class raw measurements of one image at the working size (see the module notes); `unsure`, the
    (29, h, w) uncertainty in [0, 1] of the predictions, gives each class's ``unsure`` (0 without it)."""
    g = gt.reshape(NUM_CLASSES, -1).astype(np.float32)
    p = pred.reshape(NUM_CLASSES, -1).astype(np.float32)
    ga, pa = g.sum(1), p.sum(1)
    cross = 2 * (g @ p.T) / np.maximum(ga[:, None] + pa[None, :], 1)  # Dice of label c with prediction k
    dice = np.where((ga == 0) & (pa == 0), 1.0, np.diag(cross))
    others = cross - np.eye(NUM_CLASSES) * 2
    pf = prob.reshape(NUM_CLASSES, -1)
    conf = np.array([pf[c][pred[c].ravel()].mean() if pa[c] else 0.0 for c in range(NUM_CLASSES)])
    support = np.array([pf[c][gt[c].ravel()].mean() if ga[c] else 0.0 for c in range(NUM_CLASSES)])
    dist = np.array([boundary_distance(gt[c], pred[c]) / scale for c in range(NUM_CLASSES)])
    stray = np.array([stray_fraction(gt[c]) if ga[c] else 0.0 for c in range(NUM_CLASSES)])
    twist = np.zeros(NUM_CLASSES)
    for name, pts in polygons.items():
        twist[CLASS_INDEX[name]] = twist_fraction(pts, ga[CLASS_INDEX[name]] / scale**2)
    centres = {c: _centre(gt[CLASS_INDEX[c]]) for row in FINGER_ROWS for c in row}
    first, last = (_mean_centre(centres, finger) for finger in (INDEX_FINGER, LITTLE_FINGER))
    order = np.zeros(NUM_CLASSES)
    if first is not None and last is not None:
        wrong = out_of_row(
            {c: v for c, v in centres.items() if v is not None},
            last - first,
            {c: float(dice[CLASS_INDEX[c]]) for c in centres},
        )
        order[[CLASS_INDEX[c] for c in wrong]] = 1.0
    return {
        "dice": dice,
        "conf": conf,
        "support": support,
        "label_area": ga,
        "pred_area": pa,
        "swap_dice": others.max(1),
        "swap_with": others.argmax(1).astype(float),
        "distance": dist,
        "stray": stray,
        "twist": twist,
        "order": order,
        "unsure": _unsureness(gt, pred, unsure) if unsure is not None else np.zeros(NUM_CLASSES),
    }


def _unsureness(gt: np.ndarray, pred: np.ndarray, unsure: np.ndarray) -> np.ndarray:
    """Per class, the mean of `unsure` where label and prediction disagree (their union when they agree)."""
    out = np.zeros(NUM_CLASSES)
    for c in range(NUM_CLASSES):
        region = gt[c] ^ pred[c]
        if not region.any():
            region = gt[c] | pred[c]
        if region.any():
            out[c] = float(unsure[c][region].mean())
    return out


def _unsure_map(folder: str | os.PathLike, name: str, shape: tuple[int, int], work: tuple[int, int]) -> np.ndarray:
    """The pixel-wise largest of an image's uncertainty maps, in [0, 1] at the working size.

    Raises:
        DataError: no readable maps for `name`, or maps of another size than the image's `shape`.
    """
    from boneseg import uncertainty

    maps = uncertainty.load(folder, name)
    u = np.maximum.reduce(list(maps.values()))
    if u.shape[1:] != tuple(shape):
        raise DataError(
            f"{uncertainty.path_of(folder, name)}: uncertainty maps are {u.shape[2]}x{u.shape[1]}, "
            f"the image is {shape[1]}x{shape[0]}"
        )
    return _resize(u, work, cv2.INTER_AREA).astype(np.float32) / probs_mod.SCALE


def _robust(values: np.ndarray, floor: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column median and spread (1.4826 MAD, at least `floor`) of (images, classes) `values`, ignoring nan."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns: a class never both labelled and predicted
        center = np.nanmedian(values, axis=0)
        spread = 1.4826 * np.nanmedian(np.abs(values - center), axis=0)
    return np.nan_to_num(center, nan=0.0), np.maximum(np.nan_to_num(spread, nan=0.0), floor)


def score(m: dict[str, np.ndarray], scales: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, tuple]:
    """(evidence per kind, z-scores per kind (kinds, images, classes), the robust statistics) from stacked
    measurements (images, classes)."""
    labelled, predicted = m["label_area"] > 0, m["pred_area"] > 0
    both = labelled & predicted
    sure = 1 - m["unsure"]  # 1 without uncertainty maps: every value below unchanged
    med_area = np.array([np.median(a[a > 0]) if (a > 0).any() else 1.0 for a in m["label_area"].T])
    dis = np.where(both, (1 - m["dice"]) * m["conf"] * sure, np.nan)
    swapped = both & (m["swap_dice"] >= 0.5) & (m["swap_dice"] > m["dice"])
    spurious = labelled & ~swapped & (m["support"] < NOTHING)
    tiny = np.where(labelled & (m["label_area"] < TINY_FRACTION * med_area), 1 - m["label_area"] / med_area, 0.0)
    evidence = {
        "disagreement": np.where(both & ~swapped & ~spurious, dis, 0.0),
        "swap": np.where(swapped, np.maximum(dis, m["order"]), 0.0),
        "missing": np.where(~labelled & predicted, np.minimum(1, m["pred_area"] / med_area) * m["conf"] * sure, 0.0),
        "spurious": np.where(spurious, (1 - m["support"]) * np.minimum(1, m["label_area"] / med_area) * sure, 0.0),
        "geometry": np.maximum.reduce([m["stray"], m["twist"], tiny, m["order"] * ~swapped]),
    }
    center, spread = _robust(dis, MIN_SPREAD)
    dist = np.where(both, m["distance"] * sure, np.nan)
    dcenter, dspread = _robust(dist, 1.0 / float(scales.min()))  # at least one working pixel
    ratio = np.where(
        both, np.log(np.maximum(m["label_area"], 1) / np.maximum(m["pred_area"], 1)) * m["conf"] * sure, np.nan
    )
    rcenter, rspread = _robust(ratio, MIN_RATIO_SPREAD)
    gcenter, gspread = _robust(evidence["geometry"], MIN_SPREAD)
    z = np.stack([(evidence[k] - center) / spread * (evidence[k] > 0) for k in KINDS])
    z[KINDS.index("geometry")] = (evidence["geometry"] - gcenter) / gspread * (evidence["geometry"] > 0)
    shape = np.nan_to_num(np.maximum((dist - dcenter) / dspread, np.abs(ratio - rcenter) / rspread), nan=0.0)
    for k in ("disagreement", "swap"):
        i = KINDS.index(k)
        z[i] = np.where(evidence[k] > 0, np.maximum(z[i], shape), 0.0)
    return evidence, z, (center, spread, dcenter, dspread, rcenter, rspread)


def audit(
    data: str | os.PathLike,
    pred: str | os.PathLike,
    *,
    threshold: float | str | os.PathLike = 0.5,
    min_score: float = 3.5,
    uncertainty: str | os.PathLike | None = None,
    reporter: Reporter = SILENT,
) -> AuditResult:
    """Rank the train labels of `data` by how likely they are wrong, given predictions `pred` (a CSV or a
    probability folder, ideally out-of-fold: `boneseg.workflows.oof`). See the module notes; `uncertainty`
    is the ``predict --save-uncertainty`` folder of the same predictions.

    Raises:
        UsageError: a non-finite `min_score`. DataError: unreadable labels, predictions or uncertainty maps,
        no train image among the predictions, an audited image without uncertainty maps.
    """
    if not math.isfinite(min_score):
        raise UsageError(f"--min-score {min_score}: must be a finite number")
    predictions = Predictions(pred, threshold)
    have = set(predictions.names)
    samples = discover(data)
    by_name = by_image_name(samples, data)
    audited = [s for s in samples if s.image_name in have]
    if not audited:
        raise DataError(f"{pred}: predicts none of the {len(samples)} train images of {data}")
    notes = []
    if len(audited) < len(samples):
        notes.append(
            f"{len(samples) - len(audited)} of the {len(samples)} train images have no prediction and are not audited"
        )
    foreign = [n for n in predictions.names if n not in by_name]
    if foreign:
        notes.append(
            f"{len(foreign)} predicted image(s) are no train image of {data} (e.g. {foreign[0]}) and are ignored"
        )
    if len(audited) < MIN_IMAGES:
        notes.append(
            f"only {len(audited)} image(s) audited: a class's usual value and spread need at least {MIN_IMAGES}, "
            "so disagreement, swap and geometry suspects cannot stand out (missing and spurious labels still can)"
        )
    for note in notes:
        warnings.warn(f"{pred}: {note}", BonesegWarning, stacklevel=2)
    unc_maps = _check_uncertainty(uncertainty, [s.image_name for s in audited]) if uncertainty is not None else None
    rows, scales, broken = [], [], []
    for s in track(audited, reporter, "audit", "img"):
        gt, pred_masks, prob, polygons, f, problems = _load(s, predictions)
        if problems:
            broken.append(f"{s.image_name}: {problems[0]}")
        unsure = None
        if uncertainty is not None:
            shape = png_shape(s.image) or read_image(s.image).shape[:2]
            unsure = _unsure_map(uncertainty, s.image_name, shape, gt.shape[1:])
        rows.append(measure_image(gt, pred_masks, prob, polygons, f, unsure))
        scales.append(f)
    if broken:  # what `train` refuses (or leaves out under --skip-bad): audited as far as the label is usable
        warnings.warn(
            f"{data}: {len(broken)} label(s) have problems that train refuses, audited as read (e.g. {broken[0]}); "
            "boneseg eda lists them all",
            BonesegWarning,
            stacklevel=2,
        )
    m = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    labelled = m["label_area"] > 0
    mean_dice = float(m["dice"][labelled].mean()) if labelled.any() else None
    if mean_dice is not None and mean_dice < WEAK_DICE:
        warnings.warn(
            f"{pred}: the predictions match the labels poorly (mean Dice {mean_dice:.3f}, below {WEAK_DICE}): too "
            "weak to rank labels, the suspects are mostly the model's own errors; use a trained model's "
            "out-of-fold predictions (boneseg oof)",
            BonesegWarning,
            stacklevel=2,
        )
    evidence, z, (center, spread, dcenter, dspread, rcenter, rspread) = score(m, np.array(scales))
    best = z.max(0)
    kind = z.argmax(0)
    order = np.argsort(-best, axis=None, kind="stable")
    suspects = []
    for flat in order:
        i, c = divmod(int(flat), NUM_CLASSES)
        if best[i, c] < min_score:
            break
        k = KINDS[kind[i, c]]
        entry = {
            "image_name": audited[i].image_name,
            "class": CLASSES[c],
            "kind": k,
            "score": round(float(best[i, c]), 3),
            "evidence": round(float(evidence[k][i, c]), 4),
            "dice": round(float(m["dice"][i, c]), 4),
            "distance": _num(m["distance"][i, c]),
        }
        if uncertainty is not None:
            entry["uncertainty"] = round(float(m["unsure"][i, c]), 4)
        if k == "swap":
            entry["with"] = CLASSES[int(m["swap_with"][i, c])]
        suspects.append(entry)
    names = [s.image_name for s in audited]
    return AuditResult(
        names,
        evidence,
        m["distance"],
        center,
        spread,
        dcenter,
        dspread,
        rcenter,
        rspread,
        suspects,
        min_score,
        mean_dice,
        {"folder": str(uncertainty), "maps": unc_maps} if uncertainty is not None else None,
    )


def _check_uncertainty(folder: str | os.PathLike, images: list[str]) -> list[str]:
    """The maps of a ``predict --save-uncertainty`` folder that covers every audited image.

    Raises:
        DataError: not such a folder, or an audited image it has no maps of.
    """
    from boneseg.uncertainty import read_manifest

    doc = read_manifest(folder)
    have = set(map(str, doc["images"]))
    lacking = [n for n in images if n not in have]
    if lacking:
        raise DataError(
            f"--uncertainty {folder}: no maps of {len(lacking)} of the {len(images)} audited image(s) "
            f"(e.g. {lacking[0]}): the maps of other predictions?"
        )
    return [str(m) for m in doc.get("maps", [])]


def _load(sample: Sample, predictions: Predictions):
    """(label masks, predicted masks, probabilities, polygons, scale, the label's problems other than a
    missing class) of one image at the working size."""
    if sample.label is None:
        raise DataError(f"{sample.image}: no label file")
    shape = png_shape(sample.image) or read_image(sample.image).shape[:2]
    label = load_label(sample.label, shape, strict=False)
    work, f = work_shape(shape)
    gt = rasterize(label.polygons, work, (f, f))
    pred, prob = predictions.get(sample.image_name, shape, work)
    problems = [p for p in label.problems if not p.startswith("missing class")]
    return gt, pred, prob, label.polygons, f, problems


def check_audit_out(out: str | os.PathLike, crops: int = 12, force: bool = False) -> list[Path]:
    """Check `write_audit`'s options and outputs before any work; returns the two files it writes.

    Raises:
        UsageError: a negative `crops`. OutputExistsError: a file of the audit (or a crop) in `out`, without
            `force`.
    """
    out = Path(out)
    if crops < 0:
        raise UsageError(f"--crops must be 0 or more, got {crops}")
    paths = [out / SUSPECTS_FILE, out / AUDIT_FILE]
    for p in paths:
        check_output(p, force)
    crops_dir = out / CROPS_DIR
    if crops_dir.is_dir() and any(crops_dir.iterdir()) and not force:
        raise OutputExistsError(f"{crops_dir} is not empty (use --force to overwrite)")
    return paths


def run_audit(
    data: str | os.PathLike,
    pred: str | os.PathLike,
    out: str | os.PathLike,
    *,
    threshold: float | str | os.PathLike = 0.5,
    min_score: float = 3.5,
    uncertainty: str | os.PathLike | None = None,
    crops: int = 12,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> tuple[AuditResult, list[Path]]:
    """``boneseg audit``: `audit`, then `write_audit` into `out`, every option and output checked first.

    Returns:
        The result and the files written.
    """
    check_audit_out(out, crops, force)
    result = audit(data, pred, threshold=threshold, min_score=min_score, uncertainty=uncertainty, reporter=reporter)
    return result, write_audit(result, data, pred, out, crops, threshold, force, reporter)


def write_audit(
    result: AuditResult,
    data: str | os.PathLike,
    pred: str | os.PathLike,
    out: str | os.PathLike,
    crops: int = 12,
    threshold: float | str | os.PathLike = 0.5,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> list[Path]:
    """Write ``suspects.csv`` (``image_name,class,kind,score``, most suspect first; ``uncertainty`` fifth when
    the audit weighed by uncertainty maps), ``audit.json`` and ``crops/`` (the top `crops` suspects:
    prediction red, label green, both yellow) into `out`."""
    out = Path(out)
    paths = check_audit_out(out, crops, force)
    crops_dir = out / CROPS_DIR
    # one unit: the suspects, the summary and the crops (published whole, so no crop of an earlier audit stays)
    with hold(out), publishing(force) as pub:
        staging = pub.folder(crops_dir)
        top = result.suspects[:crops]
        if top:
            predictions = Predictions(pred, threshold)
            by_name = {s.image_name: s for s in discover(data)}
            for rank, s in enumerate(track(top, reporter, "crops", "img"), 1):
                name = f"{rank:03d}-{Path(s['image_name']).stem}-{s['class']}.png"
                _crop(by_name[s["image_name"]], predictions, s, staging / name)
                paths.append(crops_dir / name)
        weighed = result.uncertainty is not None  # a fifth column: the pair's unsureness
        with open(pub.file(paths[0]), "w", encoding="utf-8", newline="") as fh:
            fh.write(format_row(*SUSPECT_COLUMNS, *(("uncertainty",) if weighed else ())))
            for s in result.suspects:
                extra = (f"{s['uncertainty']:.4f}",) if weighed else ()
                fh.write(format_row(s["image_name"], s["class"], s["kind"], f"{s['score']:.3f}", *extra))
        write_json(pub.file(paths[1]), {"data": str(data), "pred": str(pred), **result.to_json()}, force=True)
    return paths


def _crop(sample: Sample, predictions: Predictions, suspect: dict, path: Path) -> Path:
    """The region of one suspect pair: prediction (red) and label (green) over the image, at least 192 px."""
    gt, pred, *_ = _load(sample, predictions)
    c = CLASS_INDEX[suspect["class"]]
    region = gt[c] | pred[c]
    if "with" in suspect:
        region = region | pred[CLASS_INDEX[suspect["with"]]]
    image = read_image(sample.image)
    image = cv2.resize(image, (gt.shape[2], gt.shape[1]), interpolation=cv2.INTER_AREA)
    ys, xs = np.nonzero(region)
    if len(xs) == 0:
        ys, xs = np.array([0, gt.shape[1] - 1]), np.array([0, gt.shape[2] - 1])
    margin = max(8, int(0.5 * max(np.ptp(xs), np.ptp(ys))))
    y0, y1 = max(ys.min() - margin, 0), min(ys.max() + margin + 1, gt.shape[1])
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, gt.shape[2])
    rgb = overlay_compare(image[y0:y1, x0:x1], pred[c, y0:y1, x0:x1], gt[c, y0:y1, x0:x1])
    zoom = max(1, math.ceil(192 / max(rgb.shape[:2])))
    rgb = cv2.resize(rgb, (rgb.shape[1] * zoom, rgb.shape[0] * zoom), interpolation=cv2.INTER_NEAREST)
    return save_png(rgb, path)


def read_suspects(audit: str | os.PathLike) -> list[dict]:
    """The rows of ``audit/suspects.csv`` (written by ``boneseg audit``), most suspect first.

    Raises:
        DataError: no such file, a missing column, an unknown class or a score that is not a finite
            number (naming the file and line).
    """
    path = Path(audit) / SUSPECTS_FILE
    if not path.is_file():
        raise DataError(f"--audit {audit}: no {SUSPECTS_FILE} in it (written by `boneseg audit`)")
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in SUSPECT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: header lacks {', '.join(missing)} (expected {','.join(SUSPECT_COLUMNS)})")
        rows = []
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            if row["class"] not in CLASSES:
                raise DataError(f"{where}: unknown class {row['class']!r}{suggest(row['class'] or '', CLASSES)}")
            try:
                score = float(row["score"])
            except (TypeError, ValueError):
                score = math.nan
            if not math.isfinite(score):
                raise DataError(f"{where}: score {row['score']!r} is not a finite number")
            rows.append(
                {
                    "image": row["image_name"],
                    "class": CLASSES.index(row["class"]),
                    "kind": row["kind"] or "",
                    "score": score,
                }
            )
    return rows
