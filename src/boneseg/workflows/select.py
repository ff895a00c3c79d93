"""Ensemble selection by cross-validation (``boneseg select``).

Greedy forward selection with replacement (Caruana et al. 2004) over out-of-fold (OOF) predictions of
several models: start from the best single model and at each step add the model (again, possibly) whose
vote maximises the OOF Dice, per class or overall. An ensemble is a count per model; the counts are the
weights of ``boneseg ensemble``'s per-class plan, so the plan applies to test predictions as it is.

Speed. The pixels of every (image, class) are grouped once into *atoms*: pixels on which every model
says the same thing (hard: the set of models covering them; soft: the tuple of uint8 probabilities) and
the label agrees, with their pixel count. A vote is a function of the atom alone, so each step of the
greedy loop is arithmetic on a few atoms per mask instead of millions of pixels: with ``S`` the weighted
sum of the models' values on an atom and ``W`` the total weight of the class, a candidate model ``j``
keeps the atom when ``2 (S + v_j) > W + 1`` (hard: more than half of the weight, in integers) or
``rint((S + q_j) / (W + 1)) > cut`` (soft, exactly as `ensemble` re-quantises the weighted mean). Hard
atoms come from a sweep over the run boundaries of all CSVs and the labels (each model is one bit of a
code that the sorted boundaries add and remove), so no mask is decoded; soft atoms come from the
probability files, one image at a time.

Scores. Dice per (image, class), a class's score the mean over the OOF images, the overall score the mean
over classes. Each fold's score is the same mean over its images (folds from a splits file); a step's
gain (or loss) is noise when it is no larger than the spread (standard deviation) of its fold-wise gains.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boneseg import probs as probs_mod
from boneseg.classes import CLASSES, NUM_CLASSES
from boneseg.errors import DataError, UsageError, quote
from boneseg.io import check_output, write_json
from boneseg.metrics import dice_from_counts
from boneseg.progress import SILENT, Reporter, track
from boneseg.rle_dice import RunTable
from boneseg.workflows.parallel import STATE, parallel_map

__all__ = [
    "Atoms",
    "hard_atoms",
    "soft_atoms",
    "Step",
    "Selection",
    "greedy_select",
    "select",
    "THRESHOLD_GRID",
    "MAX_MODELS",
    "PLAN_FORMAT",
]

MAX_MODELS = 30
"""Most inputs a selection takes (a hard atom's code has one bit per model)."""
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))
"""Thresholds tried per class by ``--tune-thresholds`` (0.05 … 0.95)."""
PLAN_FORMAT = "boneseg-ensemble-plan"


# -- atoms ----------------------------------------------------------------------------------------


@dataclass
class Atoms:
    """Pixels of the OOF masks grouped by what the models say about them (see the module docstring)."""

    key: np.ndarray  # (A,) int64 image * 29 + class
    values: np.ndarray  # (A, M) per model: 0/1 (hard) or uint8 probability (soft)
    truth: np.ndarray  # (A,) bool: the atom lies inside the label mask
    count: np.ndarray  # (A,) int64 pixels
    gt_area: np.ndarray  # (N * 29,) int64 label pixels per mask

    @property
    def models(self) -> int:
        return self.values.shape[1]


def hard_atoms(tables: Sequence[RunTable], truth: RunTable) -> Atoms:
    """Atoms of hard votes from the `RunTable`s of M predictions and of the labels (one layout).

    Model ``i`` is bit ``i`` of a code and the labels bit ``M``: each run start adds its bit, each run
    end removes it, so the running sum of the sorted boundary events is the code of the span that
    follows. Spans of one mask with the same code are one atom.
    """
    m = len(tables)
    layers = [*tables, truth]
    pos = np.concatenate([a for t in layers for a in (t.starts, t.ends)])
    steps = np.concatenate(
        [np.full(len(t.starts), sign << i, np.int64) for i, t in enumerate(layers) for sign in (1, -1)]
    )
    order = np.argsort(pos, kind="stable")
    pos, code = pos[order], np.cumsum(steps[order])
    last = np.append(pos[1:] != pos[:-1], True)[: pos.size]  # the code after the last event at a position
    pos, code = pos[last], code[last]
    length, code, start = np.diff(pos), code[:-1], pos[:-1]
    keep = (code & ((1 << m) - 1)) != 0  # covered by some prediction (label-only pixels are never kept)
    group = ((start[keep] // truth.block) << (m + 1)) | code[keep]
    group, inverse = np.unique(group, return_inverse=True)
    count = np.bincount(inverse, weights=length[keep]).astype(np.int64)
    code = group & ((1 << (m + 1)) - 1)
    values = ((code[:, None] >> np.arange(m)) & 1).astype(np.uint8)
    return Atoms(group >> (m + 1), values, (code >> m & 1).astype(bool), count, truth.areas.copy())


def _soft_image(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Atoms of one image (key, values, truth, count) and its label areas, from the probability files."""
    folders, entries, sample = STATE["folders"], STATE["entries"][index], STATE["samples"][index]
    masks = STATE["cache"].get(sample).masks
    calibrations = STATE.get("calibrations") or [None] * len(folders)
    qs = [probs_mod.load(f, e) for f, e in zip(folders, entries)]
    qs = [cal.apply_quantized(q) if cal is not None else q for q, cal in zip(qs, calibrations)]
    for f, e, q in zip(folders, entries, qs):
        if q.shape != masks.shape:
            raise DataError(
                f"{probs_mod.prob_path(f, e)}: probabilities of shape {q.shape[1:]} but the "
                f"labelled image {sample.image} is {masks.shape[1:]}"
            )
    parts = []
    for c in range(NUM_CLASSES):
        q = np.stack([x[c].ravel() for x in qs], axis=1)
        some = q.any(axis=1)
        rows = np.column_stack([q[some], masks[c].ravel()[some]])
        uniq, count = np.unique(rows, axis=0, return_counts=True)
        parts.append((np.full(len(uniq), index * NUM_CLASSES + c, np.int64), uniq[:, :-1], uniq[:, -1] > 0, count))
    key, values, truth, count = (np.concatenate(x) for x in zip(*parts))
    return key, values, truth, count.astype(np.int64), masks.sum(axis=(1, 2)).astype(np.int64)


def soft_atoms(
    folders: Sequence[str],
    entries: Sequence[Sequence[str]],
    samples: Sequence,
    cache,
    workers: int | None = None,
    reporter: Reporter = SILENT,
    calibrations: Sequence | None = None,
) -> Atoms:
    """Atoms of soft votes: `entries[n][i]` is image n's name in folder i, `samples[n]` its labelled sample;
    `calibrations`: one `boneseg.calibration.Calibration` (or None) per folder, applied to its values."""
    state = {
        "folders": list(folders),
        "entries": entries,
        "samples": samples,
        "cache": cache,
        "calibrations": list(calibrations) if calibrations is not None else None,
    }
    with reporter.task("atoms", len(samples), "img") as task:
        parts = list(parallel_map(_soft_image, list(range(len(samples))), state, workers, task))
    key, values, truth, count, gt = (np.concatenate(x) for x in zip(*parts))
    return Atoms(key, values.reshape(len(key), len(folders)), truth, count, gt)


# -- greedy selection -----------------------------------------------------------------------------


@dataclass
class Step:
    """The ensembles after one greedy step: per class, the counts and the scores."""

    weights: np.ndarray  # (29, M) counts
    score: np.ndarray  # (29,) OOF Dice per class
    folds: np.ndarray  # (F, 29) Dice per fold and class


class _Scorer:
    """OOF Dice of a vote, per class and per fold, from the atoms' pixel counts."""

    def __init__(self, atoms: Atoms, fold_of: np.ndarray):
        self.atoms, self.n = atoms, len(fold_of)
        self.cls = atoms.key % NUM_CLASSES
        self.hits = atoms.count * atoms.truth
        present = np.unique(fold_of)
        self.fold_ids = [int(f) for f in present]
        onehot = (fold_of[None, :] == present[:, None]).astype(np.float64)
        self.fold_mean = onehot / onehot.sum(axis=1, keepdims=True)  # (F, N)

    def atom_cuts(self, cuts: np.ndarray | None) -> np.ndarray:
        """Each atom's class cut (soft voting); zeros when there are none (hard voting)."""
        return (np.zeros(NUM_CLASSES, np.int64) if cuts is None else np.asarray(cuts))[self.cls]

    def __call__(self, on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, size = self.atoms, self.n * NUM_CLASSES
        inter = np.bincount(a.key, weights=np.where(on, self.hits, 0), minlength=size)
        area = np.bincount(a.key, weights=np.where(on, a.count, 0), minlength=size)
        dice = dice_from_counts(inter, area, a.gt_area).reshape(self.n, NUM_CLASSES)
        return dice.mean(axis=0), self.fold_mean @ dice


def _kept(vote: str, total: np.ndarray, weight: np.ndarray | int, cut: np.ndarray) -> np.ndarray:
    """Atoms a vote keeps: `total` the weighted sum of the models' values, `weight` the class's weight."""
    if vote == "hard":
        return 2 * total > weight
    return np.rint(total / weight) > cut


@dataclass
class Greedy:
    """What `greedy_select` found: the steps, each model's own scores, and the scorer."""

    steps: list[Step]
    singles: np.ndarray  # (M, 29) OOF Dice of each model alone
    single_folds: np.ndarray  # (M, F, 29)
    scorer: _Scorer


def greedy_select(
    atoms: Atoms,
    fold_of: np.ndarray,
    vote: str = "hard",
    steps: int = 10,
    per_class: bool = True,
    cuts: np.ndarray | None = None,
) -> Greedy:
    """Greedy forward selection with replacement (Caruana et al. 2004), per class or overall.

    Step 1 is the best *sorted initialisation*: the k best models by their own score, for the k (1..M) that
    scores best -- a hard vote of two models is their intersection, so one model at a time could never
    reach a majority of three. Each further step adds to every class's ensemble the model that maximises
    its OOF Dice (`per_class`) or the one that maximises the mean over classes. Ties go to the smaller
    ensemble and the earlier model. `cuts`: soft voting's (29,) integer cuts (`boneseg.probs.cutoffs`).
    """
    scorer = _Scorer(atoms, fold_of)
    cut = scorer.atom_cuts(cuts)
    m, classes, rows = atoms.models, np.arange(NUM_CLASSES), np.arange(len(atoms.key))

    def best(tried: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per class, the index of the best try (or the best on the mean over classes), its scores."""
        score, folds = np.stack([t[0] for t in tried]), np.stack([t[1] for t in tried])
        pick = score.argmax(axis=0) if per_class else np.full(NUM_CLASSES, score.mean(axis=1).argmax())
        return pick, score[pick, classes], folds[pick, :, classes].T

    alone = [scorer(_kept(vote, atoms.values[:, j].astype(np.int64), np.ones(1, np.int64), cut)) for j in range(m)]
    singles, single_folds = np.stack([a[0] for a in alone]), np.stack([a[1] for a in alone])
    ranking = np.argsort(
        -(singles if per_class else np.tile(singles.mean(axis=1, keepdims=True), NUM_CLASSES)), axis=0, kind="stable"
    )  # (M, 29): models by their own score, per class
    tops = []
    for k in range(1, m + 1):
        w = np.zeros((NUM_CLASSES, m), np.int64)
        w[classes[:, None], ranking[:k].T] = 1
        tops.append(w)
    tried = [scorer(_kept(vote, (atoms.values * w[scorer.cls]).sum(axis=1), k + 1, cut)) for k, w in enumerate(tops)]
    pick, score, folds = best(tried)
    weights = np.stack([tops[k][c] for c, k in enumerate(pick)])
    total = (atoms.values * weights[scorer.cls]).sum(axis=1)
    history = [Step(weights.copy(), score, folds)]
    for _ in range(steps - 1):
        weight = weights.sum(axis=1)[scorer.cls] + 1
        pick, score, folds = best([scorer(_kept(vote, total + atoms.values[:, j], weight, cut)) for j in range(m)])
        weights[classes, pick] += 1
        total += atoms.values[rows, pick[scorer.cls]]
        history.append(Step(weights.copy(), score, folds))
    return Greedy(history, singles, single_folds, scorer)


# -- the selection and its plan -------------------------------------------------------------------


def _versus(new: tuple[np.ndarray, np.ndarray], old: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Gain of `new` over `old` (score, per-fold scores), the spread of its fold-wise gains, and whether it is
    noise (a gain or loss no larger than that spread)."""
    gain, spread = float(new[0] - old[0]), float(np.std(new[1] - old[1]))
    return {"gain": gain, "gain_sd": spread, "noise": bool(abs(gain) <= spread)}


def _summary(score: float, folds: np.ndarray) -> dict[str, float]:
    return {"mean": float(score), "sd": float(np.std(folds))}


@dataclass
class Selection:
    """The outcome of `select`: the greedy steps, the ensemble kept per class and its scores."""

    vote: str
    inputs: list[str]
    per_class: bool
    images: int
    fold_ids: list[int]
    steps: list[Step]
    chosen: np.ndarray  # (29,) index of the step kept for each class
    weights: np.ndarray  # (29, M) counts of the kept ensembles
    score: np.ndarray  # (29,) OOF Dice of the plan
    folds: np.ndarray  # (F, 29)
    singles: np.ndarray  # (M, 29) OOF Dice of each model alone
    single_folds: np.ndarray  # (M, F, 29)
    thresholds: np.ndarray | None = None  # (29,) soft voting's thresholds
    untuned: tuple[np.ndarray, np.ndarray] | None = None  # (score, folds) before threshold tuning
    notes: list[str] = field(default_factory=list)

    def names(self, models: np.ndarray | Sequence[int]) -> list[str]:
        return [self.inputs[int(m)] for m in models]

    def _added(self) -> list[np.ndarray]:
        """Per step, the (29, M) counts it added."""
        out, before = [], np.zeros_like(self.weights)
        for step in self.steps:
            out.append(step.weights - before)
            before = step.weights
        return out

    def best_single(self) -> int:
        return int(self.singles.mean(axis=1).argmax())

    def step_rows(self) -> list[dict[str, Any]]:
        """The greedy trajectory, mean over classes: each step's score, spread and gain over the previous."""
        rows: list[dict[str, Any]] = []
        previous = None
        for k, added in enumerate(self._added()):
            step = self.steps[k]
            now = (step.score.mean(), step.folds.mean(axis=1))
            counts = added.sum(axis=0)  # (M,) classes to which each model was added
            row = {"step": k + 1, "added": {n: int(v) for n, v in zip(self.inputs, counts) if v}, **_summary(*now)}
            if previous is not None:
                row.update(_versus(now, previous))
            rows.append(row)
            previous = now
        return rows

    def plan(self) -> dict[str, Any]:
        """The plan as JSON: ``per_class`` counts that ``boneseg ensemble --per-class`` applies, the scores
        and the trajectory."""
        best = self.best_single()
        total = (self.score.mean(), self.folds.mean(axis=1))
        single = (self.singles[best].mean(), self.single_folds[best].mean(axis=1))
        classes = {}
        for c, name in enumerate(CLASSES):
            trail, previous = [], None
            for step, added in zip(self.steps, self._added()):
                now = (step.score[c], step.folds[:, c])
                trail.append(
                    {
                        "added": [n for n, v in zip(self.inputs, added[c]) for _ in range(v)],
                        **_summary(*now),
                        **(_versus(now, previous) if previous is not None else {}),
                    }
                )
                previous = now
            b = int(self.singles[:, c].argmax())
            classes[name] = {
                "weights": self.weights[c].tolist(),
                "step": int(self.chosen[c]) + 1,
                **_summary(self.score[c], self.folds[:, c]),
                "best_single": {
                    "input": self.inputs[b],
                    **_summary(self.singles[b, c], self.single_folds[b, :, c]),
                    **_versus((self.score[c], self.folds[:, c]), (self.singles[b, c], self.single_folds[b, :, c])),
                },
                "steps": trail,
            }
            if self.thresholds is not None:
                classes[name]["threshold"] = float(self.thresholds[c])
        doc: dict[str, Any] = {
            "format": PLAN_FORMAT,
            "version": 1,
            "vote": self.vote,
            "select": "class" if self.per_class else "overall",
            "inputs": list(self.inputs),
            "images": self.images,
            "folds": self.fold_ids,
            "per_class": {name: self.weights[c].tolist() for c, name in enumerate(CLASSES)},
        }
        if self.thresholds is not None:
            doc["thresholds"] = {name: float(t) for name, t in zip(CLASSES, self.thresholds)}
        doc["score"] = {**_summary(*total), "per_fold": {str(f): float(v) for f, v in zip(self.fold_ids, total[1])}}
        doc["best_single"] = {"input": self.inputs[best], **_summary(*single), **_versus(total, single)}
        if self.untuned is not None:
            doc["thresholds_gain"] = _versus(total, (self.untuned[0].mean(), self.untuned[1].mean(axis=1)))
        doc["steps"] = self.step_rows()
        doc["classes"] = classes
        doc["notes"] = list(self.notes)
        return doc

    def write(self, path: str | os.PathLike, force: bool = False) -> None:
        """Write the plan JSON atomically (an existing file only with `force`)."""
        write_json(path, self.plan(), force=force)


def _train_samples(data: Path, images: Sequence[str], where: str) -> list:
    """The labelled train samples of `images` (base names), in that order."""
    from boneseg.data.layout import by_image_name, discover

    by_name = by_image_name([s for s in discover(data, "train") if s.label is not None], data)
    unknown = [i for i in images if i not in by_name]
    if unknown:
        raise DataError(
            f"{where}: image {quote(unknown[0])} is not a labelled train image of {data}"
            + (f" ({len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + " (OOF predictions are predictions of the train images)"
        )
    return [by_name[i] for i in images]


def _soft_inputs(
    folders: Sequence[Path], data: Path, calibrations: Sequence | None = None
) -> tuple[list[str], list[list[str]], list]:
    """Images (base names, sorted), each folder's entry per image, and the labelled samples; a folder given a
    calibration whose probabilities were already calibrated is refused."""
    from boneseg.workflows.ensemble import check_same_images

    names = [str(f) for f in folders]
    manifests = [probs_mod.read_manifest(f) for f in folders]
    for name, manifest, cal in zip(names, manifests, calibrations or [None] * len(names)):
        if cal is not None:
            probs_mod.refuse_calibrated(name, manifest, "give 'none' as its --calibration")
    entries = [{Path(str(e)).name: str(e) for e in m["images"]} for m in manifests]
    check_same_images(names, [list(e) for e in entries])
    images = sorted(entries[0])
    samples = _train_samples(data, images, names[0])
    return images, [[e[i] for e in entries] for i in images], samples


def select(
    inputs: Sequence[str | os.PathLike],
    data: str | os.PathLike,
    splits: str | os.PathLike,
    *,
    vote: str | None = None,
    steps: int = 10,
    per_class: bool = True,
    threshold: float | str | os.PathLike | None = None,
    tune_thresholds: bool = False,
    calibration: Sequence[str | os.PathLike | None] | None = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> Selection:
    """Select an ensemble of models by greedy forward selection on their OOF predictions.

    Args:
        inputs: one OOF prediction per model: submission CSVs (hard vote) or ``predict --save-probs``
            folders (soft vote), over labelled train images of `data`.
        data: the dataset root (its train labels are the truth).
        splits: the splits file (``boneseg split``) whose folds give the fold-wise spread.
        vote: "hard" or "soft" (default: soft for folders, hard for files).
        steps: greedy steps (ensemble size at most `steps`).
        per_class: choose an ensemble per class; else one ensemble for all classes (mean Dice).
        threshold: soft voting's threshold during selection (number or ``{class: t}`` JSON; default 0.5).
        tune_thresholds: soft vote: afterwards, pick each class's threshold from `THRESHOLD_GRID`.
        calibration: soft vote: one calibration file per input (``none``: that input as it is), applied to
            its probabilities before the vote (`boneseg.workflows.ensemble.read_calibrations`); the plan's
            ``ensemble`` must then be given the same ``--calibration`` files.
        workers: processes reading probability files.
        out: where to write the plan (`Selection.plan`), checked before anything is read; existing only
            with `force`.

    Raises:
        UsageError: impossible options. DataError: unreadable or mismatched inputs, images that are not
            labelled train images, a splits file from another dataset or with fewer than 2 folds among
            the images.
    """
    from boneseg.data.layout import discover
    from boneseg.data.masks import MaskCache, default_cache_dir
    from boneseg.data.split import load_splits

    paths = [Path(p) for p in inputs]
    if not paths:
        raise UsageError("give at least one OOF prediction (CSV or probability folder)")
    if len(paths) > MAX_MODELS:
        raise UsageError(f"at most {MAX_MODELS} inputs, got {len(paths)}")
    if steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    from boneseg.workflows.ensemble import read_calibrations, resolve_vote

    vote = resolve_vote(paths, vote)
    if vote == "hard" and (threshold is not None or tune_thresholds):
        raise UsageError("--threshold and --tune-thresholds apply to --vote soft only")
    cuts = probs_mod.cutoffs(probs_mod.read_thresholds(threshold)) if vote == "soft" else None
    if vote == "hard" and calibration:
        raise UsageError("--calibration applies to --vote soft only")
    calibrations = read_calibrations(calibration, len(paths))
    if out is not None:
        check_output(out, force)
    data = Path(data)
    cache = MaskCache(cache_dir or default_cache_dir(data))
    if vote == "hard":
        from boneseg.workflows.analysis import load_inputs, prediction_runs, truth_runs

        loaded = load_inputs(paths, data, cache_dir=cache_dir, reporter=reporter)
        tables = [prediction_runs(loaded, m) for m in track(range(len(paths)), reporter, "parse RLE", "file")]
        atoms = hard_atoms(tables, truth_runs(loaded, cache_dir, reporter))
        samples = list(loaded.samples or [])
    else:
        _, entries, samples = _soft_inputs(paths, data, calibrations)
        atoms = soft_atoms([str(p) for p in paths], entries, samples, cache, workers, reporter, calibrations)
    assignment = load_splits(splits, discover(data, "train"))["assignments"]
    fold_of = np.array([assignment[s.name] for s in samples])
    if len(np.unique(fold_of)) < 2:
        raise DataError(
            f"{splits}: the {len(samples)} OOF image(s) all lie in fold {fold_of[0]}; the fold-wise "
            "spread needs images of at least 2 folds"
        )
    found = greedy_select(atoms, fold_of, vote, steps, per_class, cuts)
    history, scorer = found.steps, found.scorer
    scores = np.stack([h.score for h in history])  # (steps, 29)
    chosen = scores.argmax(axis=0) if per_class else np.full(NUM_CLASSES, scores.mean(axis=1).argmax())
    classes = np.arange(NUM_CLASSES)
    weights = np.stack([history[k].weights[c] for c, k in enumerate(chosen)])
    score = scores[chosen, classes]
    folds = np.stack([history[k].folds[:, c] for c, k in enumerate(chosen)], axis=1)
    result = Selection(
        vote,
        [str(p) for p in paths],
        per_class,
        len(samples),
        scorer.fold_ids,
        history,
        chosen,
        weights,
        score,
        folds,
        found.singles,
        found.single_folds,
    )
    if vote == "soft":
        base = probs_mod.read_thresholds(threshold)
        result.thresholds = base
        if tune_thresholds:
            _tune(result, atoms, scorer, base)
    if out is not None:
        result.write(out, force)
    return result


def _tune(result: Selection, atoms: Atoms, scorer: _Scorer, base: np.ndarray) -> None:
    """Per class, the threshold of `THRESHOLD_GRID` (or the base one, kept on ties) that maximises the OOF
    Dice of the selected soft vote."""
    w = result.weights[scorer.cls]
    total = (atoms.values.astype(np.int64) * w).sum(axis=1)
    weight = w.sum(axis=1)
    candidates = [base, *(np.full(NUM_CLASSES, t) for t in THRESHOLD_GRID)]
    tried = [scorer(_kept("soft", total, weight, scorer.atom_cuts(probs_mod.cutoffs(t)))) for t in candidates]
    score = np.stack([t[0] for t in tried])  # (K, 29)
    best = score.argmax(axis=0)
    classes = np.arange(NUM_CLASSES)
    result.untuned = (result.score, result.folds)
    result.thresholds = np.array([candidates[k][c] for c, k in enumerate(best)])
    result.score = score[best, classes]
    result.folds = np.stack([tried[k][1][:, c] for c, k in enumerate(best)], axis=1)
