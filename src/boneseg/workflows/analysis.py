"""Score predictions and compare models in run-length space (``boneseg analyze``).

Every mask -- predicted (RLE text) or true (label polygons) -- becomes a list of pixel runs, and the runs
of all (image, class) masks of one input one `boneseg.rle_dice.RunTable`, so the Dice of two inputs is one
vectorised pass over their runs: a 2048² image is never decoded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from boneseg import rle as rle_mod
from boneseg.classes import CARPALS, CLASSES, FINGERS, NUM_CLASSES
from boneseg.errors import DataError, OutputExistsError, UsageError
from boneseg.metrics import dice_from_counts
from boneseg.progress import SILENT, Reporter, track
from boneseg.rle_dice import RunTable, intersections, iou_from_counts, runs_table
from boneseg.submission import Submission, read_submission

if TYPE_CHECKING:
    from boneseg.data.masks import CachedSample

T = TypeVar("T")

__all__ = [
    "Inputs",
    "load_inputs",
    "Analysis",
    "analyze",
    "suggest_ensemble",
    "write_plots",
    "PLOT_FILES",
]


PLOT_FILES = {
    "per_class": "per_class.png",
    "dice_vs_area": "dice_vs_area.png",
    "worst": "worst_cases.png",
    "similarity": "similarity.png",
}
JSON_FILE = "analysis.json"


# -- inputs ---------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """Predictions matched to a common, ordered image list (and to ground truth when given)."""

    paths: list[Path]
    names: list[str]  # unique display names (file paths as given)
    subs: list[Submission]
    images: list[str]  # evaluated image base names, in order
    shapes: list[tuple[int, int]]  # (H, W) of each image
    samples: list | None = None  # matching `Sample`s with labels (with ground truth)
    data: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def block(self) -> int:
        return max((h * w for h, w in self.shapes), default=1)


def _listing(names: Sequence[str], limit: int = 5) -> str:
    names = list(names)
    head = ", ".join(names[:limit])
    return head + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    seen: dict[str, int] = {}
    for p in paths:
        name = str(p)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


def _fold_images(samples: list, fold: int, splits: Path) -> list:
    """The validation samples of `fold` under the splits file."""
    from boneseg.data.split import fold_samples, load_splits

    return fold_samples(samples, load_splits(splits, samples), fold)[1]


def load_inputs(
    preds: Sequence[str | os.PathLike],
    gt: str | os.PathLike | None = None,
    fold: int | None = None,
    splits: str | os.PathLike | None = None,
    size: int = 2048,
    cache_dir: str | os.PathLike | None = None,
    reporter: Reporter = SILENT,
    images: str | os.PathLike | None = None,
) -> Inputs:
    """Read prediction CSVs and fix the images to evaluate.

    Without `gt`, every CSV must hold the same images, each of the size its PNG header under `images` gives
    (an image folder or dataset root, matched by base name as ``check --images`` does), else `size`². With
    `gt` (a dataset root),
    the CSV images are matched by base name to its labelled train images and take their sizes; with
    `fold` and `splits` only that fold's validation images are evaluated (every CSV must cover them,
    extra images are ignored with a note).

    Raises:
        UsageError: no input, `fold` without `splits` (or the reverse), a bad size.
        DataError: unreadable CSVs, images missing from the labels or from a CSV.
    """
    from boneseg.data.layout import by_image_name, discover
    from boneseg.data.masks import MaskCache, default_cache_dir

    if not preds:
        raise UsageError("give at least one prediction CSV")
    if (fold is None) != (splits is None):
        raise UsageError("--fold and --splits go together")
    if fold is not None and gt is None:
        raise UsageError("--fold/--splits need --gt DATA")
    from boneseg.submission import check_image_side

    check_image_side(size)
    if images is not None and gt is not None:
        raise UsageError("--images is for CSVs without --gt (with --gt the images are DATA's train images)")
    paths = [Path(p) for p in preds]
    subs = [read_submission(p) for p in track(paths, reporter, "read CSVs", "file")]
    notes: list[str] = []
    if gt is None:
        names = sorted(subs[0].images)
        for p, s in zip(paths[1:], subs[1:]):
            _same_images(paths[0], set(names), p, set(s.images))
        shapes = [(size, size)] * len(names)
        if images is not None:
            from boneseg.data.layout import image_files, image_shape

            files = image_files(images, names)
            shapes = [image_shape(files[n]) for n in track(names, reporter, "image sizes", "img")]
        return Inputs(paths, _unique_names(paths), subs, names, shapes, notes=notes)

    data = Path(gt)
    train = discover(data, "train")
    by_name = by_image_name(train, data)
    if fold is not None:
        assert splits is not None  # checked to come with fold
        samples = _fold_images(train, fold, Path(splits))
        wanted = {s.image_name for s in samples}
        for p, s in zip(paths, subs):
            missing = sorted(wanted - set(s.images))
            if missing:
                raise DataError(f"{p}: lacks {len(missing)} validation image(s) of fold {fold}: {_listing(missing)}")
            extra = len(set(s.images) - wanted)
            if extra:
                notes.append(f"{p}: {extra} image(s) outside fold {fold}'s validation set ignored")
    else:
        first = set(subs[0].images)
        unknown = sorted(first - by_name.keys())
        if unknown:
            raise DataError(
                f"{paths[0]}: {len(unknown)} image(s) not among the labelled train images of {data}: "
                f"{_listing(unknown)} (use --fold/--splits to score one fold's validation images)"
            )
        for p, s in zip(paths[1:], subs[1:]):
            _same_images(paths[0], first, p, set(s.images))
        samples = sorted((by_name[n] for n in first), key=lambda s: s.name)
    if not samples:
        raise DataError("no images to evaluate")
    cache = MaskCache(cache_dir or default_cache_dir(data))
    shapes = [_image_shape(s, cache) for s in track(samples, reporter, "image sizes", "img")]
    return Inputs(paths, _unique_names(paths), subs, [s.image_name for s in samples], shapes, samples, data, notes)


def _image_shape(sample, cache) -> tuple[int, int]:
    """(H, W) from the PNG header (cheap); falls back to decoding through the cache."""
    from boneseg.data.layout import png_shape

    return png_shape(sample.image) or tuple(cache.get(sample).original_shape)


def _same_images(ref: Path, ref_images: set[str], path: Path, images: set[str]) -> None:
    if images != ref_images:
        missing, extra = sorted(ref_images - images), sorted(images - ref_images)
        parts = ([f"lacks {len(missing)} of its image(s): {_listing(missing)}"] if missing else []) + (
            [f"has {len(extra)} image(s) {ref.name} lacks: {_listing(extra)}"] if extra else []
        )
        raise DataError(f"{path}: images differ from {ref}: " + "; ".join(parts))


def prediction_runs(inputs: Inputs, index: int) -> RunTable:
    """The `RunTable` of input `index` over the evaluated images (RLE validated per image size)."""
    sub, runs = inputs.subs[index], []
    for image, (h, w) in zip(inputs.images, inputs.shapes):
        for cls, text in zip(CLASSES, sub.image_rles(image)):
            try:
                runs.append(rle_mod.parse(text, h * w))
            except DataError as exc:
                raise DataError(f"{inputs.paths[index]}: image {image!r}, class {cls!r}: {exc}") from None
    return runs_table(runs, inputs.block)


def truth_runs(inputs: Inputs, cache_dir: str | os.PathLike | None = None, reporter: Reporter = SILENT) -> RunTable:
    """The `RunTable` of the label masks of the evaluated images (through the mask cache)."""
    from boneseg.data.masks import MaskCache, default_cache_dir

    assert inputs.samples is not None and inputs.data is not None  # truth comes with labelled samples
    cache = MaskCache(cache_dir or default_cache_dir(inputs.data))
    runs: list[tuple[np.ndarray, np.ndarray]] = []
    for sample, shape in track(list(zip(inputs.samples, inputs.shapes)), reporter, "ground truth", "img"):
        masks = cache.get(sample).masks
        assert masks is not None  # the labelled train images
        if masks.shape[1:] != tuple(shape):
            raise DataError(
                f"{sample.image}: image is {masks.shape[2]}x{masks.shape[1]}, header said {shape[1]}x{shape[0]}"
            )
        runs.extend(rle_mod.runs_from_mask(m) for m in masks)
    return runs_table(runs, inputs.block)


# -- analysis -------------------------------------------------------------------------------------


@dataclass
class Analysis:
    """Scores of one or more predictions: arrays indexed [model, image, class]."""

    inputs: Inputs
    pred_area: np.ndarray  # (M, N, 29) predicted pixels
    gt_area: np.ndarray | None = None  # (N, 29) true pixels
    dice: np.ndarray | None = None  # (M, N, 29) against the truth
    similarity: np.ndarray | None = None  # (M, M, N, 29) model-vs-model Dice
    gt_overlap: np.ndarray | None = None  # (M, N, 29) |P ∩ G| pixels
    overlap: np.ndarray | None = None  # (M, M, N, 29) model-vs-model |A ∩ B| pixels (diagonal: areas)
    worst: int = 10
    tolerance: float = 0.02

    @property
    def models(self) -> int:
        return len(self.inputs.names)

    def per_class_dice(self, m: int = 0) -> np.ndarray | None:
        return None if self.dice is None else self.dice[m].mean(axis=0)

    def mean_dice(self, m: int = 0) -> float | None:
        per_class = self.per_class_dice(m)
        return None if per_class is None else float(per_class.mean())

    @property
    def iou(self) -> np.ndarray | None:
        """(M, N, 29) IoU against the truth (both empty -> 1.0)."""
        if self.gt_overlap is None or self.gt_area is None:
            return None
        return iou_from_counts(self.gt_overlap, self.pred_area, self.gt_area[None])

    def per_class_iou(self, m: int = 0) -> np.ndarray | None:
        iou = self.iou
        return None if iou is None else iou[m].mean(axis=0)

    def mean_iou(self, m: int = 0) -> float | None:
        per_class = self.per_class_iou(m)
        return None if per_class is None else float(per_class.mean())

    def changes(self, m: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(added, removed) pixels per class (29,), summed over images, going from the first input to input
        `m`: pixels `m` has and the first lacks, and the reverse."""
        if self.overlap is None:
            return None
        both = self.overlap[0, m].sum(axis=0)
        return self.pred_area[m].sum(axis=0) - both, self.pred_area[0].sum(axis=0) - both

    def area_spread(self) -> dict[str, np.ndarray] | None:
        """Per class, across the inputs, the spread of each input's mean predicted area per image: ``mean``,
        ``std`` (population) and ``cv`` = std / mean (NaN where every input predicts nothing); None with
        one input."""
        if self.models < 2:
            return None
        areas = self.pred_area.mean(axis=1)  # (M, 29)
        mean, std = areas.mean(axis=0), areas.std(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            cv = np.where(mean > 0, std / mean, np.nan)
        return {"mean": mean, "std": std, "cv": cv}

    def pairwise_dice(self) -> np.ndarray | None:
        """(N, 29) mean model-vs-model Dice over all pairs of inputs; None with one input."""
        if self.similarity is None:
            return None
        k = self.models
        return np.mean([self.similarity[a, b] for a in range(k) for b in range(a + 1, k)], axis=0)

    def disagreement_images(self) -> list[dict]:
        """The `worst` images the inputs agree on least (lowest mean pairwise Dice over classes), with the
        class they disagree on most."""
        pairwise = self.pairwise_dice()
        if pairwise is None:
            return []
        per_image = pairwise.mean(axis=1)
        order = np.argsort(per_image, kind="stable")[: self.worst]
        return [
            {
                "image": self.inputs.images[i],
                "mean_pairwise_dice": float(per_image[i]),
                "worst_class": CLASSES[int(pairwise[i].argmin())],
                "worst_class_dice": float(pairwise[i].min()),
            }
            for i in order
        ]

    def area_ratio(self, m: int = 0) -> np.ndarray | None:
        """Predicted / true pixels per class (summed over images); NaN where the truth is empty."""
        if self.gt_area is None:
            return None
        gt = self.gt_area.sum(axis=0).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gt > 0, self.pred_area[m].sum(axis=0) / gt, np.nan)

    def similarity_matrices(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean over classes (M, M), per class (29, M, M)) of the mean-over-images model-vs-model Dice."""
        if self.similarity is None:
            return None
        per_class = self.similarity.mean(axis=2).transpose(2, 0, 1)
        return per_class.mean(axis=0), per_class

    def worst_images(self, m: int = 0) -> list[dict]:
        if self.dice is None:
            return []
        per_image = self.dice[m].mean(axis=1)
        order = np.argsort(per_image, kind="stable")[: self.worst]
        return [
            {
                "image": self.inputs.images[i],
                "dice": float(per_image[i]),
                "worst_class": CLASSES[int(self.dice[m, i].argmin())],
                "worst_class_dice": float(self.dice[m, i].min()),
            }
            for i in order
        ]

    def worst_cases(self, m: int = 0) -> list[tuple[int, int, float]]:
        """The `worst` (image index, class index, Dice) pairs, lowest Dice first."""
        if self.dice is None:
            return []
        flat = self.dice[m].ravel()
        order = np.argsort(flat, kind="stable")[: self.worst]
        return [(int(k // NUM_CLASSES), int(k % NUM_CLASSES), float(flat[k])) for k in order if flat[k] < 1.0]

    def dice_vs_area(self, m: int = 0, bins: int = 5) -> dict | None:
        """Mean Dice in quantile bins of the true bone area (non-empty truths only)."""
        if self.dice is None:
            return None
        assert self.gt_area is not None  # set with dice
        area, score = self.gt_area.ravel(), self.dice[m].ravel()
        keep = area > 0
        if not keep.any():
            return {"edges": [], "mean_dice": [], "count": []}
        edges = np.unique(np.quantile(area[keep], np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:  # every true area the same: one bin
            edges = np.repeat(edges, 2)
        which = np.clip(np.searchsorted(edges, area[keep], side="right") - 1, 0, len(edges) - 2)
        count = np.bincount(which, minlength=len(edges) - 1)
        total = np.bincount(which, weights=score[keep], minlength=len(count))
        means = [float(t / c) if c else None for t, c in zip(total, count)]
        return {"edges": edges.tolist(), "mean_dice": means, "count": count.tolist()}

    def suggested_ensemble(self) -> list[str]:
        if self.models < 2:
            return []
        mean_sim, _ = _present(self.similarity_matrices())
        scores = [_present(self.mean_dice(m)) for m in range(self.models)] if self.dice is not None else None
        return [self.inputs.names[i] for i in suggest_ensemble(mean_sim, scores, self.tolerance)]

    def model_report(self, m: int) -> dict:
        ratio = self.area_ratio(m)
        out = {
            "mean_dice": self.mean_dice(m),
            "per_class_dice": _by_class(self.per_class_dice(m)),
            "mean_iou": self.mean_iou(m),
            "per_class_iou": _by_class(self.per_class_iou(m)),
            "area_ratio": _by_class(ratio),
            "mean_area": _by_class(self.pred_area[m].mean(axis=0)),
            "empty_masks": _by_class((self.pred_area[m] == 0).sum(axis=0), int),
        }
        change = self.changes(m) if m > 0 else None
        if change is not None:
            added, removed = change
            out["changes"] = {
                "from": self.inputs.names[0],
                "added": int(added.sum()),
                "removed": int(removed.sum()),
                "per_class": {c: {"added": int(a), "removed": int(r)} for c, a, r in zip(CLASSES, added, removed)},
            }
        return out

    def to_json(self) -> dict:
        """The stable report: see docs/analyze.md. Top-level scores are those of the first input."""
        first = self.model_report(0)
        sims = self.similarity_matrices()
        spread = self.area_spread()
        per_image = (
            {}
            if self.dice is None
            else {name: float(v) for name, v in zip(self.inputs.images, self.dice[0].mean(axis=1))}
        )
        return {
            "inputs": [str(p) for p in self.inputs.paths],
            "images": len(self.inputs.images),
            "mean_dice": first["mean_dice"],
            "per_class_dice": first["per_class_dice"],
            "mean_iou": first["mean_iou"],
            "per_class_iou": first["per_class_iou"],
            "per_image_dice": per_image,
            "worst_images": self.worst_images(0),
            "area_ratio": first["area_ratio"],
            "gt_mean_area": None if self.gt_area is None else _by_class(self.gt_area.mean(axis=0)),
            "dice_vs_area": self.dice_vs_area(0),
            "models": {name: self.model_report(m) for m, name in enumerate(self.inputs.names)},
            "similarity": None
            if sims is None
            else {
                "models": list(self.inputs.names),
                "mean": _rounded(sims[0]),
                "per_class": {c: _rounded(sims[1][i]) for i, c in enumerate(CLASSES)},
            },
            "area_spread": None
            if spread is None
            else {
                c: {"mean": float(spread["mean"][i]), "std": float(spread["std"][i]), "cv": _finite(spread["cv"][i])}
                for i, c in enumerate(CLASSES)
            },
            "disagreement_images": self.disagreement_images(),
            "suggested_ensemble": self.suggested_ensemble(),
            "notes": list(self.inputs.notes),
        }


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _by_class(values: np.ndarray | None, kind=float) -> dict | None:
    if values is None:
        return None
    return {c: (kind(v) if kind is int else _finite(v)) for c, v in zip(CLASSES, values)}


def _rounded(matrix: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in matrix]


def suggest_ensemble(
    similarity: np.ndarray, scores: Sequence[float] | None = None, tolerance: float = 0.02, max_models: int = 3
) -> list[int]:
    """Indices of models to ensemble.

    With `scores` (mean Dice against the truth): start from the best model and greedily add, among the
    models within `tolerance` of the best score, the one maximising ``score + (1 - mean similarity to the
    chosen)`` -- accurate yet different -- up to `max_models`; exact copies (similarity 1 to a chosen
    model) are skipped. Without scores: the least similar pair.
    """
    similarity = np.asarray(similarity, np.float64)
    n = len(similarity)
    if n < 2:
        return list(range(n))
    if scores is None:
        off = similarity.copy()
        np.fill_diagonal(off, np.inf)
        i, j = np.unravel_index(np.argmin(off), off.shape)
        return sorted((int(i), int(j)))
    score = np.asarray(scores, np.float64)
    best = int(np.argmax(score))
    candidates = [i for i in range(n) if i != best and score[i] >= score[best] - tolerance]
    chosen = [best]
    while candidates and len(chosen) < max_models:
        candidates = [c for c in candidates if similarity[c, chosen].max() < 1.0]  # a copy adds nothing
        if not candidates:
            break
        gain = [score[c] + 1 - similarity[c, chosen].mean() for c in candidates]
        chosen.append(candidates.pop(int(np.argmax(gain))))
    return chosen


def analyze(
    preds: Sequence[str | os.PathLike],
    gt: str | os.PathLike | None = None,
    *,
    fold: int | None = None,
    splits: str | os.PathLike | None = None,
    size: int = 2048,
    images: str | os.PathLike | None = None,
    worst: int = 10,
    tolerance: float = 0.02,
    cache_dir: str | os.PathLike | None = None,
    reporter: Reporter = SILENT,
) -> Analysis:
    """Score prediction CSVs against the train labels (`gt`) and/or against each other.

    Args:
        preds: submission CSVs.
        gt: dataset root whose labelled train images the CSVs are scored against.
        fold, splits: score only this fold's validation images (see `load_inputs`).
        size: image side assumed without `gt` (and without `images`).
        images: without `gt`, an image folder or dataset root whose PNG headers give each image's size.
        worst: how many worst images / cases to report.
        tolerance: Dice tolerance of the ensemble suggestion (see `suggest_ensemble`).

    Raises:
        UsageError, DataError: see `load_inputs`; malformed RLE names file, image and class.
    """
    inputs = load_inputs(preds, gt, fold, splits, size, cache_dir, reporter, images)
    tables = [prediction_runs(inputs, m) for m in track(range(len(inputs.paths)), reporter, "parse RLE", "file")]
    n = len(inputs.images)
    shape = (n, NUM_CLASSES)
    result = Analysis(inputs, np.stack([t.areas.reshape(shape) for t in tables]), worst=worst, tolerance=tolerance)
    if gt is not None:
        truth = truth_runs(inputs, cache_dir, reporter)
        result.gt_area = truth.areas.reshape(shape)
        result.gt_overlap = np.stack([intersections(t, truth).reshape(shape) for t in tables])
        result.dice = dice_from_counts(result.gt_overlap, result.pred_area, result.gt_area[None])
    if len(tables) > 1:
        k = len(tables)
        both = np.zeros((k, k, *shape), np.int64)
        for i in range(k):
            both[i, i] = result.pred_area[i]
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        for i, j in track(pairs, reporter, "similarity", "pair"):
            both[i, j] = both[j, i] = intersections(tables[i], tables[j]).reshape(shape)
        result.overlap = both
        result.similarity = dice_from_counts(both, result.pred_area[:, None], result.pred_area[None, :])
    return result


# -- plots ----------------------------------------------------------------------------------------


def _present(value: T | None) -> T:
    """`value`, known to be set where it is used (plots with truth or several models are drawn only then)."""
    assert value is not None
    return value


def _group_colour(c: int) -> str:
    name = CLASSES[c]
    return "tab:blue" if name in FINGERS else "tab:orange" if name in CARPALS else "tab:green"


def _per_class_figure(result: Analysis):
    """Dice per class (axis from 0 to 1, so differences look as large as they are) and the area ratio."""
    from boneseg.plots import new_figure

    models = result.models
    dice = [_present(result.per_class_dice(m)) for m in range(models)]
    order = np.argsort(np.mean(dice, axis=0), kind="stable")
    names = [CLASSES[i] for i in order]
    fig = new_figure(15, 0.36 * NUM_CLASSES + 2.2)
    ax_d, ax_r = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    height = 0.8 / models
    y = np.arange(NUM_CLASSES)
    for m in range(models):
        label = Path(result.inputs.names[m]).name
        ax_d.barh(y + m * height, dice[m][order], height, label=label)
        ax_r.barh(y + m * height, np.nan_to_num(_present(result.area_ratio(m))[order], nan=0.0), height, label=label)
    ax_d.set_xlim(0.0, 1.0)
    ax_d.set_xticks(np.linspace(0, 1, 11))
    ax_d.grid(axis="x", alpha=0.3)
    ax_d.set_xlabel("Dice (axis from 0 to 1)", fontsize=11)
    mean = float(np.mean(dice[0]))
    ax_d.axvline(mean, color="k", lw=0.8, ls="--")
    first = f" ({Path(result.inputs.names[0]).name})" if models > 1 else ""
    ax_d.text(mean, -0.9, f" mean {mean:.3f}{first}", fontsize=10, va="bottom")
    ax_d.set_title("Dice per class (worst at the top)", fontsize=13)
    ax_r.axvline(1.0, color="k", lw=0.8)
    ax_r.grid(axis="x", alpha=0.3)
    ax_r.set_xlabel("predicted / true pixels (1 = same area)", fontsize=11)
    ax_r.set_title("area ratio: > 1 over-, < 1 under-segmentation", fontsize=13)
    for ax in (ax_d, ax_r):
        ax.set_yticks(y + height * (models - 1) / 2, names, fontsize=10)
        ax.tick_params(axis="x", labelsize=10)
        ax.invert_yaxis()
    if models > 1:
        ax_d.legend(fontsize=10, loc="lower left")
    fig.tight_layout()
    return fig


def _dice_vs_area_figure(result: Analysis):
    from boneseg.plots import new_figure

    fig = new_figure(8, 5)
    ax = fig.add_subplot(1, 1, 1)
    area, score = _present(result.gt_area), _present(result.dice)[0]
    colours = np.array([_group_colour(c) for c in range(NUM_CLASSES)])[None].repeat(len(area), axis=0)
    keep = area > 0
    ax.scatter(area[keep], score[keep], s=6, c=colours[keep], alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("true bone area (pixels)")
    ax.set_ylabel("Dice")
    ax.set_title(
        f"Dice vs bone area ({Path(result.inputs.names[0]).name}; blue fingers, orange carpals, green forearm)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _crop_box(pred: np.ndarray, gt: np.ndarray, shape: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
    from boneseg.maskops import bbox

    box = bbox(pred | gt)
    if box is None:
        return 0, shape[0], 0, shape[1]
    y0, y1, x0, x1 = box
    return max(0, y0 - margin), min(shape[0], y1 + margin), max(0, x0 - margin), min(shape[1], x1 + margin)


def _worst_figure(result: Analysis, cache, max_side: int = 384):
    import cv2

    from boneseg.plots import image_grid, overlay_compare

    inputs, tiles, titles = result.inputs, [], []
    samples = _present(inputs.samples)
    loaded: dict[int, CachedSample] = {}
    for i, c, score in result.worst_cases(0):
        item = loaded.get(i) or cache.get(samples[i])
        loaded = {i: item}
        shape = item.image.shape
        pred = rle_mod.decode(inputs.subs[0].rles[(inputs.images[i], CLASSES[c])], shape)
        gt = _present(item.masks)[c]
        y0, y1, x0, x1 = _crop_box(pred, gt, shape, margin=max(8, shape[0] // 32))
        tile = overlay_compare(item.image[y0:y1, x0:x1], pred[y0:y1, x0:x1], gt[y0:y1, x0:x1])
        scale = max_side / max(tile.shape[:2])
        if scale < 1:
            tile = cv2.resize(
                tile,
                (max(1, round(tile.shape[1] * scale)), max(1, round(tile.shape[0] * scale))),
                interpolation=cv2.INTER_AREA,
            )
        tiles.append(tile)
        titles.append(f"{inputs.images[i]}\n{CLASSES[c]}  Dice {score:.3f}")
    return (
        image_grid(tiles, titles, columns=4, suptitle="worst cases: prediction red, truth green, both yellow")
        if tiles
        else None
    )


def _similarity_figure(result: Analysis):
    from boneseg.plots import heatmap

    mean, _ = _present(result.similarity_matrices())
    labels = [Path(n).name for n in result.inputs.names]
    return heatmap(
        mean,
        labels,
        "model-vs-model Dice (mean over classes)",
        "Dice",
        annotate=True,
        cmap="magma",
        vmin=min(float(mean.min()), 0.99),
        vmax=1.0,
    )


def write_plots(
    result: Analysis, out_dir: str | os.PathLike, force: bool = False, cache_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Write ``analysis.json`` and the PNG plots that apply into `out_dir`; returns the files written.

    Raises:
        OutputExistsError: a file exists and `force` is false, or `out_dir` is a file (checked before anything
            is written).
    """
    from boneseg.io import check_output, hold, publishing, write_json
    from boneseg.plots import save_png

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out}: exists and is not a folder")
    makers: dict[str, Callable] = {}
    if result.dice is not None:
        from boneseg.data.masks import MaskCache, default_cache_dir

        cache = MaskCache(cache_dir or default_cache_dir(_present(result.inputs.data)))
        makers[PLOT_FILES["per_class"]] = lambda: _per_class_figure(result)
        makers[PLOT_FILES["dice_vs_area"]] = lambda: _dice_vs_area_figure(result)
        makers[PLOT_FILES["worst"]] = lambda: _worst_figure(result, cache)
    if result.similarity is not None:
        makers[PLOT_FILES["similarity"]] = lambda: _similarity_figure(result)
    for name in [JSON_FILE, *makers]:
        check_output(out / name, force)
    written = [out / JSON_FILE]
    with hold(out), publishing(force) as pub:  # the files are one unit: all new, or all as they were
        write_json(pub.file(out / JSON_FILE), result.to_json(), force=True)
        for name, make in makers.items():
            fig = make()
            if fig is not None:
                save_png(fig, pub.file(out / name), force=True)
                written.append(out / name)
    return written
