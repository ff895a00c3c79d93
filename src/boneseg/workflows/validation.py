"""`boneseg tta` as a library call: score TTA policies on validation images and tune thresholds.

Every policy is predicted through the same image stream and options as `predict`
(`boneseg.inference.pipeline`; views shared between policies are computed once per image). For each
(image, class) the quantised probabilities inside and outside the ground truth are histogrammed (256 bins
each); that gives the exact competition Dice at every one of the 256 possible cuts at once, summed over
images in constant memory. The best policy is the one with the highest mean Dice at the 0.5 threshold; the
per-class thresholds maximise each class's mean Dice
over the cuts inside a search range.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from boneseg import probs as probs_mod
from boneseg.classes import CLASSES, GROUPS, NUM_CLASSES
from boneseg.data.layout import Sample, discover
from boneseg.errors import DataError, UsageError
from boneseg.inference.encode import quantize
from boneseg.inference.pipeline import ImageStream, PredictOptions
from boneseg.inference.predictor import LoadedModel, Predictor
from boneseg.inference.tta import DEFAULT_SCALES, Policy, default_policies
from boneseg.metrics import dice_from_counts
from boneseg.progress import SILENT, Reporter

LEVELS = probs_mod.SCALE + 1


def dice_curves(q: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """(29, 256) competition Dice of one image at every cut ``k`` (foreground: ``q > k``).

    Args:
        q: (29, H, W) uint8 quantised probabilities. gt: (29, H, W) bool ground truth (same device).
    """
    hist = (
        torch.stack(
            [
                torch.bincount(q[c].reshape(-1).long() + LEVELS * gt[c].reshape(-1).long(), minlength=2 * LEVELS)
                for c in range(q.shape[0])
            ]
        )
        .cpu()
        .numpy()
    )
    out_h, in_h = hist[:, :LEVELS].astype(np.int64), hist[:, LEVELS:].astype(np.int64)
    g = in_h.sum(1, keepdims=True)
    inter = g - np.cumsum(in_h, 1)  # |P∩G| with P = q > k
    pred = (g + out_h.sum(1, keepdims=True)) - np.cumsum(in_h + out_h, 1)
    return dice_from_counts(inter, pred, np.broadcast_to(g, inter.shape))


def check_search(low: float, high: float) -> None:
    """Raise `UsageError` unless ``0 <= low <= high <= 1`` (the threshold search range, ``--search``)."""
    if not 0.0 <= low <= high <= 1.0:
        raise UsageError(f"--search {low},{high}: the threshold search range must satisfy 0 <= low <= high <= 1")


def search_thresholds(
    curves: np.ndarray, low: float = 0.3, high: float = 0.7, default: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class best threshold from mean-Dice curves (29, 256): (thresholds (29,), their mean Dice (29,)).

    Only cuts whose threshold lies in [low, high] are searched; ties go to the cut nearest `default`.
    Each threshold is written as ``(k + 0.5) / 255`` (4 decimals; 1.0 for the top cut, an empty mask) so
    `boneseg.probs.cutoffs` gives back k.
    """
    check_search(low, high)
    k_lo, k_hi = int(probs_mod.cutoffs(low)[0]), int(probs_mod.cutoffs(high)[0])
    k_def = int(probs_mod.cutoffs(default)[0])
    ks = np.arange(k_lo, k_hi + 1)
    window = curves[:, ks]
    best = window.max(1, keepdims=True)
    tie_break = np.where(np.isclose(window, best, rtol=0, atol=1e-12), -np.abs(ks - k_def)[None], -(10**9))
    chosen = ks[tie_break.argmax(1)]
    thresholds = np.minimum(np.round((chosen + 0.5) / probs_mod.SCALE, 4), 1.0)
    assert (probs_mod.cutoffs(thresholds) == chosen).all()
    return thresholds, curves[np.arange(len(chosen)), chosen]


@dataclass
class TTAReport:
    """Scores of each policy (mean and per-class Dice at 0.5), the best one, and tuned thresholds."""

    images: int
    policies: dict[str, dict] = field(default_factory=dict)
    best: str = ""
    thresholds: dict[str, float] | None = None
    tuned_mean_dice: float | None = None
    fold: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        doc = {"best": self.best, "images": self.images, "fold": self.fold, "policies": self.policies}
        if self.thresholds is not None:
            doc.update(thresholds=self.thresholds, tuned_mean_dice=self.tuned_mean_dice, tuned_policy=self.best)
        if self.notes:
            doc["notes"] = self.notes
        return doc


def validation_samples(
    data: str | os.PathLike, splits: str | os.PathLike | None, fold: int | None, models: Sequence[LoadedModel]
) -> tuple[list[Sample], int | None, list[str]]:
    """The images to score and notes: fold `fold` of `splits`, by default the images the first model's run
    validated on (`boneseg.runs.run.Run.validation`: recorded by training, else its fold made again as
    training made it); for a model without a run (an export), every train image. A note names each model
    that trained on some of the images (its scores there are optimistic)."""
    from boneseg.data.split import fold_samples, load_splits
    from boneseg.runs.run import Run

    samples = discover(data, "train")
    if (splits is None) != (fold is None):
        raise UsageError("give --fold and --splits together")
    runs = [lm.run if isinstance(lm.run, Run) else None for lm in models]
    val: list[Sample] = []
    if splits is not None:
        assert fold is not None  # given together with splits
        _, val = fold_samples(samples, load_splits(splits, samples), int(fold))
        if not val:
            raise UsageError(f"--fold {fold}: no validation images in {splits}")
    elif runs[0] is not None:
        val, fold = runs[0].validation(samples), runs[0].fold
    if not val:
        return (
            samples,
            None,
            [
                f"no --fold/--splits and no validation fold recorded in {models[0].source}: scored on "
                "every train image (optimistic if the model saw them)"
            ],
        )
    notes = []
    for lm, run in zip(models, runs):
        try:
            own = {s.name for s in run.validation(samples)} if run is not None else None
        except DataError as exc:
            notes.append(f"cannot tell which of these images {lm.source} trained on: {exc}")
            continue
        seen = sum(s.name not in own for s in val) if own is not None else 0
        if seen:
            notes.append(f"{lm.source} trained on {seen} of these {len(val)} images: its scores are optimistic")
    return val, int(fold) if fold is not None else None, notes


def evaluate_policies(
    data: str | os.PathLike,
    models: Predictor | Sequence[str | os.PathLike],
    *,
    options: PredictOptions = PredictOptions(),
    policies: Sequence[str | Policy] | None = None,
    fold: int | None = None,
    splits: str | os.PathLike | None = None,
    samples: Sequence[Sample] | None = None,
    scales: Sequence[float] | str = DEFAULT_SCALES,
    sliding: bool = False,
    search: tuple[float, float] | None = (0.3, 0.7),
    thresholds_out: str | os.PathLike | None = None,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> TTAReport:
    """Predict the validation images under each policy and score them with the competition Dice.

    Args:
        data: dataset root with labelled ``train`` images.
        models: checkpoints/run folders or a ready `Predictor` (several: averaged as in predict).
        options: how the models run, as for `boneseg.inference.predict` (`PredictOptions`; ``meta`` defaults
            to the dataset's ``meta_data.xlsx``), so the scores and thresholds are those of the same predict
            command; with a calibration, policies are scored and thresholds searched on the calibrated
            probabilities.
        policies: names (``none``, ``hflip``, ``scale``, ``hflip+scale``, optionally ``sliding:``-prefixed)
            or `Policy` objects; default every TTA name. A name without a mode is scored in resize mode,
            and also in sliding mode with `sliding`. scales: the scales of ``scale``.
        fold, splits: the validation fold (default: the checkpoint's). samples: score these instead.
        search: (low, high) range of the per-class threshold search on the best policy; None skips it.
        thresholds_out: write the tuned per-class thresholds there as JSON (for ``predict --threshold``;
            needs `search`); an existing file only with `force`. With a calibration the file is
            ``{"thresholds": {…}, "calibration": {…}}``: thresholds of the calibrated probabilities.
        reporter: where the progress goes (`boneseg.progress`).

    Raises:
        UsageError: bad options, reported before any checkpoint or image is read or an output checked.
        OutputExistsError: `thresholds_out` exists and `force` is false (before any image is read).
    """
    from boneseg.io import check_output, write_json

    # every option first: a bad value is reported before any input is read or output checked
    options.check(models)
    if search is not None:
        check_search(*search)
    elif thresholds_out is not None:
        raise UsageError("--thresholds-out needs a threshold search range (--search)")
    if policies:
        modes = (False, True) if sliding else (False,)
        pols = list(
            dict.fromkeys(p if isinstance(p, Policy) else Policy.parse(p, scales, s) for p in policies for s in modes)
        )
    else:
        pols = default_policies(scales, sliding)
    if thresholds_out is not None:
        check_output(thresholds_out, force)
    predictor = options.predictor(models)
    notes: list[str] = []
    dropped = [p.name for p in pols if predictor.applied(p) != p]
    if dropped:
        notes.append(f"hand-side unified model(s): flip TTA does not apply; dropped {', '.join(dropped)}")
    pols = list(dict.fromkeys(predictor.applied(p) for p in pols))
    fold_used = fold
    if samples is None:
        samples, fold_used, extra = validation_samples(data, splits, fold, predictor.models)
        notes += extra
    from boneseg.data.masks import default_cache_dir

    sums = {p: np.zeros((NUM_CLASSES, LEVELS)) for p in pols}
    seconds = dict.fromkeys(pols, 0.0)
    n = 0
    stream = ImageStream(
        samples,
        predictor,
        options.stages(predictor, data),
        pols,
        workers=options.workers,
        labels=True,
        cache_dir=default_cache_dir(data),
        keep_views=True,
        reporter=reporter,
        label="tta",
    )
    with stream:
        for image in stream:
            assert image.item.masks is not None  # read with labels
            gt = image.item.masks.to(predictor.device)
            for p in pols:
                q = quantize(image.probabilities(p))
                seconds[p] += image.seconds
                sums[p] += dice_curves(q, gt)
            n += 1
    k_def = int(probs_mod.cutoffs(0.5)[0])
    report = TTAReport(images=n, fold=fold_used, notes=notes)
    for p in pols:
        per_class = sums[p][:, k_def] / n
        report.policies[p.name] = {
            "mean_dice": float(per_class.mean()),
            "per_class_dice": dict(zip(CLASSES, map(float, per_class))),
            "group_dice": {g: float(np.mean([per_class[CLASSES.index(c)] for c in cs])) for g, cs in GROUPS.items()},
            "views": len(p.views()),
            "seconds_per_image": seconds[p] / n,
        }
    best = max(pols, key=lambda p: (report.policies[p.name]["mean_dice"], -len(p.views())))
    report.best = best.name
    if search is not None:
        thresholds, tuned = search_thresholds(sums[best] / n, *search)
        report.thresholds = dict(zip(CLASSES, map(float, thresholds)))
        report.tuned_mean_dice = float(tuned.mean())
        if thresholds_out is not None:
            applied = predictor.calibrations
            doc = report.thresholds if applied is None else {"thresholds": report.thresholds, "calibration": applied}
            write_json(thresholds_out, doc, force=force)
    return report


# -- post-processing fitted on the validation fold (nnU-Net's rule: keep a step only where it helps) --


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
    from boneseg.postprocess import clean_mask

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


def check_fit_model(wrist: bool) -> None:
    """Raise `UsageError` for a wrist second-stage model: post-processing is fitted on whole-image models."""
    if wrist:
        raise UsageError("--fit-postprocess applies to whole-image models, not a --wrist model")


def fit_postprocess(
    run: str | os.PathLike,
    data: str | os.PathLike,
    *,
    options: PredictOptions = PredictOptions(workers=0),
    threshold: float = 0.5,
    cache_dir: str | os.PathLike | None = None,
    force: bool = True,
    reporter: Reporter = SILENT,
) -> dict:
    """Choose per-class post-processing on a run's validation fold and write ``RUN/postprocess.json``.

    The run's ``best.pt`` predicts its own validation images (the fold and split it was trained with) through
    the same image stream as ``predict``: at full resolution, without TTA, thresholded at `threshold`, FiLM
    models with their patients' metadata (DATA's metadata file unless ``options.meta``), with
    ``options.wrist_model``'s second stage when given; `choose_rules` keeps a rule for a class only where it
    raises that class's validation Dice. ``boneseg predict -m RUN`` then applies it.
    `options`: how the model runs (`PredictOptions`; by default in this process); no calibration is applied
    (``auto`` and ``none`` alike: the rules are fitted on the raw probabilities, before any calibration).
    `cache_dir`: the mask cache (default ``DATA/.boneseg-cache``). `reporter`: its progress (`boneseg.progress`).

    Returns:
        The written document: ``{"rule", "fold", "images", "threshold", "mean_dice_before",
        "mean_dice_after", "classes": {class: {...}}}``.
    """
    from boneseg import probs as probs_mod
    from boneseg.data.layout import discover
    from boneseg.data.masks import default_cache_dir
    from boneseg.inference.encode import binarize
    from boneseg.io import write_json
    from boneseg.runs.run import Run

    options.check([run])
    options = options.uncalibrated("post-processing is fitted on the raw probabilities")
    opened = Run.open(run)
    check_fit_model(opened.config.wrist)
    predictor = options.predictor([opened])
    val = opened.validation(discover(data))
    if not val:
        raise UsageError(f"{opened.path}: no validation images to fit post-processing on")
    policy = Policy.parse("none")
    cuts = probs_mod.cutoffs(threshold)
    preds, gts = [], []
    stream = ImageStream(
        val,
        predictor,
        options.stages(predictor, data),
        [policy],
        workers=options.workers,
        labels=True,
        cache_dir=cache_dir or default_cache_dir(data),
        reporter=reporter,
        label="fit post-processing",
    )
    with stream:
        for image in stream:
            assert image.item.masks is not None  # read with labels
            preds.append(binarize(quantize(image.probabilities(policy)), cuts).cpu().numpy())
            gts.append(image.item.masks.numpy())
    classes = choose_rules(preds, gts)
    doc = {
        "rule": "per class, the keep-largest / remove-small-islands option that raises validation Dice",
        "checkpoint": str(opened.checkpoint),
        "fold": opened.fold,
        "images": len(val),
        "threshold": threshold,
        "mean_dice_before": float(np.mean([v["dice_before"] for v in classes.values()])),
        "mean_dice_after": float(np.mean([v["dice_after"] for v in classes.values()])),
        "classes": classes,
    }
    write_json(opened.rules_path, doc, force=force)
    return doc
