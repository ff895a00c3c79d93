"""Ensembles of submissions and probability folders (``boneseg ensemble``).

Hard voting works in run-length space: each input's RLE for one (image, class) is parsed into runs,
the run boundaries of all inputs are merged (+weight at a start, -weight at an end, sorted, cumulative
sum) and the spans where the vote passes the cut are written back as runs. The cost follows the number
of runs (a few hundred per bone), not the 4 M pixels of a 2048² mask, and no mask is ever decoded.
Rows are matched by (image_name, class), never by row order, and images run in parallel processes.

Soft voting averages ``predict --save-probs`` folders (uint8 probabilities) with weights and binarises
the re-quantised mean exactly as ``predict`` does, so one folder with weight 1 gives predict's CSV.

Soft voting may calibrate each input first (``--calibration``, one `boneseg.calibration` file per input):
each folder's uint8 values go through its calibration's table before the mean, so models whose
probabilities are on different scales are averaged on one.

Both take an optional per-class plan: a JSON object mapping a class to one input (its 0-based index or
its path/name: that input alone decides the class) or to a list of weights, one per input (a weighted
vote). `per_class_from_scores` builds such a file from validation scores (``analyze --json``,
``tta --json``) by picking the best input per class.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boneseg import calibration as calibration_mod
from boneseg import probs as probs_mod
from boneseg import rle as rle_mod
from boneseg.classes import CLASSES, NUM_CLASSES, class_index
from boneseg.errors import BonesegWarning, DataError, UsageError, check_workers, quote
from boneseg.io import read_json, write_json
from boneseg.names import VOTES
from boneseg.progress import SILENT, Reporter
from boneseg.submission import Submission, SubmissionWriter, read_submission
from boneseg.workflows.parallel import STATE, parallel_map

__all__ = [
    "VotePlan",
    "EnsembleSummary",
    "vote_runs",
    "hard_plan",
    "soft_plan",
    "read_per_class",
    "plan_thresholds",
    "per_class_from_scores",
    "write_per_class",
    "hard_vote",
    "soft_vote",
    "read_calibrations",
    "vote_image_rles",
    "soft_vote_image",
    "check_same_images",
    "resolve_vote",
    "ensemble",
]

_TOL = 1e-9


# -- run-length voting ----------------------------------------------------------------------------


def vote_runs(
    runs: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float], cut: float
) -> tuple[np.ndarray, np.ndarray]:
    """Spans covered by inputs whose summed weight exceeds `cut`.

    Args:
        runs: per input, 0-based run starts and exclusive ends (as `boneseg.rle.parse` returns them).
        weights: one weight per input (1 each for a plain count).
        cut: a pixel is kept when the weight of the inputs covering it is greater than `cut` (>= 0;
            ``k - 0.5`` for "at least k votes").

    Returns:
        0-based starts and exclusive ends of the kept spans (sorted, disjoint, adjacent spans merged).
    """
    if cut < 0:
        raise ValueError(f"cut must be >= 0 (uncovered pixels have weight 0), got {cut}")
    pos, step, count = [], [], []
    for (starts, ends), w in zip(runs, weights):
        if len(starts) and w:
            pos += [starts, ends]
            step += [float(w), -float(w)]
            count += [len(starts), len(ends)]
    if not pos:
        empty = np.empty(0, np.int64)
        return empty, empty
    pos_all = np.concatenate(pos)
    order = np.argsort(pos_all, kind="stable")
    pos_all = pos_all[order]
    level = np.cumsum(np.repeat(step, count)[order])
    last = np.empty(len(pos_all), np.bool_)  # the level after the last event at each position
    last[:-1] = pos_all[1:] != pos_all[:-1]
    last[-1] = True
    pos_all, level = pos_all[last], level[last]
    on = level > cut + _TOL * max(1.0, abs(cut))
    before = np.empty_like(on)
    before[0] = False
    before[1:] = on[:-1]
    return pos_all[on & ~before], pos_all[before & ~on]


@dataclass(frozen=True)
class VotePlan:
    """How each class is voted: per-class input weights and a cut.

    ``weights`` is (29, n_inputs). Hard voting keeps a pixel when the weight of the inputs that cover it
    exceeds ``cuts[c]``; soft voting averages probabilities with the weights and keeps ``mean > cuts[c]``
    (the probability threshold).
    """

    weights: np.ndarray
    cuts: np.ndarray


def _as_weights(values: Sequence[float] | None, n: int, what: str) -> np.ndarray:
    if values is None:
        return np.ones(n)
    w = np.asarray([float(v) for v in values], np.float64)
    if w.shape != (n,):
        raise UsageError(f"{what}: expected {n} weights (one per input), got {len(w)}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise UsageError(f"{what}: weights must be finite, >= 0 and not all zero, got {w.tolist()}")
    return w


def _resolve_input(value: Any, inputs: Sequence[str], where: str) -> int:
    """An input named by 0-based index, by path as given, or by its file/folder name."""
    n = len(inputs)
    if isinstance(value, bool):
        raise DataError(f"{where}: expected an input index, name or list of weights, got {quote(value)}")
    if isinstance(value, int):
        if not 0 <= value < n:
            raise DataError(f"{where}: input index {value} out of range (0..{n - 1})")
        return value
    if isinstance(value, str):
        exact = [i for i, p in enumerate(inputs) if p == value]
        named = [i for i, p in enumerate(inputs) if Path(p).name == value or Path(p).stem == value]
        hits = exact or named
        if len(hits) == 1:
            return hits[0]
        from boneseg.errors import suggest

        what = "is ambiguous" if hits else "is not one of the inputs"
        raise DataError(f"{where}: {quote(value)} {what}{suggest(value, [Path(p).name for p in inputs])}")
    raise DataError(f"{where}: expected an input index, name or list of weights, got {type(value).__name__}")


def _plan_document(spec: str | os.PathLike | Mapping[str, Any]) -> tuple[str, Any]:
    """(name for messages, document) of a per-class plan given as a JSON file or a mapping."""
    return (str(spec), read_json(spec)) if not isinstance(spec, Mapping) else ("per-class plan", spec)


def plan_thresholds(spec: str | os.PathLike | Mapping[str, Any]) -> np.ndarray | None:
    """The (29,) thresholds a soft-vote plan carries (``boneseg select`` writes them), else None.

    Raises:
        DataError: thresholds that are not a ``{class: t}`` object of finite numbers within [0, 1], or
            a select plan's lacking a class.
    """
    where, doc = _plan_document(spec)
    if not isinstance(doc, Mapping) or "thresholds" not in doc:
        return None
    if not isinstance(doc["thresholds"], Mapping):
        raise DataError(f"{where}: 'thresholds' must be an object {{class: threshold}}")
    if _is_select_plan(doc):
        _every_class(doc["thresholds"], f"{where}: 'thresholds'")
    try:
        return probs_mod.thresholds_array(doc["thresholds"])
    except (UsageError, DataError) as exc:
        raise DataError(f"{where}: {exc}") from None


def _is_select_plan(doc: Mapping[str, Any]) -> bool:
    """A plan written by ``boneseg select``: weights for every class, by position of its ``inputs``."""
    return isinstance(doc.get("per_class"), Mapping) and isinstance(doc.get("inputs"), list)


def _every_class(mapping: Mapping[str, Any], where: str) -> None:
    missing = [c for c in CLASSES if c not in mapping]
    if missing:
        raise DataError(
            f"{where} lacks {len(missing)} class(es), e.g. {missing[0]} (a select plan holds all {NUM_CLASSES})"
        )


def _check_select_plan(doc: Mapping[str, Any], inputs: Sequence[str], where: str) -> None:
    """A select plan's weights are positional: the same number of inputs, none given at another input's
    place (matched by file name, the only thing OOF and test predictions may share), every class."""
    made = [Path(str(p)).name for p in doc["inputs"]]
    if len(made) != len(inputs):
        raise DataError(f"{where}: a plan for {len(made)} inputs ({', '.join(made)}), given {len(inputs)}")
    for i, p in enumerate(inputs):
        name = Path(p).name
        if name in made and made[i] != name:
            raise DataError(
                f"{where}: {quote(p)} is input {i + 1} here but input {made.index(name) + 1} of the plan "
                f"(give the inputs in the plan's order: {', '.join(made)})"
            )
    _every_class(doc["per_class"], f"{where}: 'per_class'")


def read_per_class(
    spec: str | os.PathLike | Mapping[str, Any], inputs: Sequence[str], vote: str | None = None
) -> dict[int, np.ndarray]:
    """Per-class weights from a per-class plan (a JSON file or a mapping).

    Each class maps to one input (0-based index, path or file name: that input alone decides) or to a
    list of weights, one per input. Classes not listed are absent from the result. The mapping may sit
    under a ``per_class`` key beside a ``vote`` (as ``boneseg select`` writes it), which must then be `vote`;
    a select plan (with its ``inputs``) must also match the inputs given (`_check_select_plan`).

    Raises:
        DataError: naming the file and class, for unknown classes, inputs or bad weights, a plan made
            for the other vote, or a select plan made for other inputs or lacking a class.
    """
    where, doc = _plan_document(spec)
    if isinstance(doc, Mapping) and isinstance(doc.get("per_class"), Mapping):
        if doc.get("vote", vote) not in ("hard", "soft", None):
            raise DataError(f"{where}: 'vote' must be hard or soft, got {quote(doc['vote'])}")
        if vote is not None and doc.get("vote", vote) != vote:
            raise DataError(
                f"{where}: a plan for a {doc['vote']} vote, used in a {vote} vote "
                f"({'CSVs' if doc['vote'] == 'hard' else 'probability folders'} were selected)"
            )
        if _is_select_plan(doc):
            _check_select_plan(doc, inputs, where)
        doc = doc["per_class"]
    if not isinstance(doc, Mapping):
        raise DataError(f"{where}: expected a JSON object mapping classes to an input or weights")
    n = len(inputs)
    out: dict[int, np.ndarray] = {}
    for name, value in doc.items():
        try:
            c = class_index(name)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if isinstance(value, list):
            try:
                out[c] = _as_weights(value, n, f"{where}: class {name!r}")
            except (UsageError, TypeError, ValueError) as exc:
                raise DataError(
                    str(exc) if isinstance(exc, UsageError) else f"{where}: class {name!r}: weights must be numbers"
                ) from None
        else:
            w = np.zeros(n)
            w[_resolve_input(value, inputs, f"{where}: class {name!r}")] = 1.0
            out[c] = w
    return out


def hard_plan(
    n: int,
    min_votes: int | None = None,
    weights: Sequence[float] | None = None,
    per_class: Mapping[int, np.ndarray] | None = None,
) -> VotePlan:
    """The plan of a hard vote over `n` inputs.

    Default: strict majority (``n // 2 + 1`` votes); `min_votes` k: at least k of n; `weights`: more
    than half of the total weight. Classes in `per_class` get their own weights (more than half of
    their total weight; one input alone for a one-hot row).

    Raises:
        UsageError: `min_votes` outside 1..n, both `min_votes` and `weights`, bad weights.
    """
    if n < 1:
        raise UsageError("ensemble needs at least one input")
    if min_votes is not None and weights is not None:
        raise UsageError("--min-votes and --weights exclude each other (weights vote by majority of weight)")
    if min_votes is not None and not 1 <= min_votes <= n:
        raise UsageError(f"--min-votes must be within 1..{n} for {n} inputs, got {min_votes}")
    w = _as_weights(weights, n, "--weights")
    cut = (min_votes - 0.5) if min_votes is not None else (n // 2 + 0.5 if weights is None else w.sum() / 2)
    W = np.tile(w, (NUM_CLASSES, 1))
    cuts = np.full(NUM_CLASSES, float(cut))
    for c, row in (per_class or {}).items():
        W[c] = row
        cuts[c] = row.sum() / 2
    return VotePlan(W, cuts)


def soft_plan(
    n: int,
    weights: Sequence[float] | None = None,
    threshold: float | str | os.PathLike | Sequence[float] | Mapping[str, float] | None = 0.5,
    per_class: Mapping[int, np.ndarray] | None = None,
) -> VotePlan:
    """The plan of a soft vote: per-class weights for the mean and per-class probability thresholds
    (`threshold` as `boneseg.probs.read_thresholds` takes it)."""
    if n < 1:
        raise UsageError("ensemble needs at least one input")
    W = np.tile(_as_weights(weights, n, "--weights"), (NUM_CLASSES, 1))
    for c, row in (per_class or {}).items():
        W[c] = row
    return VotePlan(W, probs_mod.read_thresholds(threshold))


# -- per-class choice from validation scores -------------------------------------------------------


def _per_class_scores(doc: Any, where: str) -> dict[str, float]:
    """``per_class_dice`` of an ``analyze --json`` document, or of the best policy of ``tta --json``."""
    if isinstance(doc, Mapping):
        if isinstance(doc.get("per_class_dice"), Mapping):
            out = {}
            for k, v in doc["per_class_dice"].items():
                if v is None:
                    continue
                try:
                    out[str(k)] = float(v)
                except (TypeError, ValueError):
                    raise DataError(f"{where}: per_class_dice values must be numbers") from None
                if not 0.0 <= out[str(k)] <= 1.0:  # also refuses nan and ±inf
                    raise DataError(f"{where}: per_class_dice {k!r}: {v} must be a finite number within [0, 1]")
            return out
        best, policies = doc.get("best"), doc.get("policies", doc.get("results"))
        if isinstance(best, Mapping):
            best = best.get("policy", best.get("name"))
        if best is not None and isinstance(policies, Mapping) and isinstance(policies.get(best), Mapping):
            return _per_class_scores(policies[best], where)
        if best is not None and isinstance(policies, list):
            for p in policies:
                if isinstance(p, Mapping) and best in (p.get("policy"), p.get("name")):
                    return _per_class_scores(p, where)
    raise DataError(f"{where}: no 'per_class_dice' scores (expected `boneseg analyze --json` or `tta --json` output)")


def per_class_from_scores(
    scores: Sequence[str | os.PathLike | Mapping[str, Any]], inputs: Sequence[str] | None = None
) -> dict[str, int | str]:
    """The per-class plan that gives each class to the input with the best validation Dice.

    Args:
        scores: one score document (or JSON file) per input, in input order: ``analyze --json`` output
            (``{"per_class_dice": {class: dice}}``) or ``tta --json`` output (its best policy).
        inputs: the inputs' paths; when given, the plan names inputs by path, else by 0-based index.

    Returns:
        ``{class: input}`` for every class scored by at least one input (ties go to the earlier input).

    Raises:
        DataError: a document without per-class scores or with unknown classes.
        UsageError: a number of documents that differs from `inputs`.
    """
    if inputs is not None and len(scores) != len(inputs):
        raise UsageError(f"--scores: expected one score file per input ({len(inputs)}), got {len(scores)}")
    table = []
    for i, s in enumerate(scores):
        where = str(s) if not isinstance(s, Mapping) else f"scores of input {i}"
        per = _per_class_scores(s if isinstance(s, Mapping) else read_json(s), where)
        for name in per:
            try:
                class_index(name)
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None
        table.append([per.get(c, np.nan) for c in CLASSES])
    arr = np.asarray(table, np.float64)  # (n, 29)
    plan: dict[str, int | str] = {}
    for c, name in enumerate(CLASSES):
        col = arr[:, c]
        if np.isnan(col).all():
            continue
        best = int(np.nanargmax(col))
        plan[name] = inputs[best] if inputs is not None else best
    return plan


def write_per_class(path: str | os.PathLike, plan: Mapping[str, Any], force: bool = False) -> None:
    """Save a per-class plan as JSON (atomically)."""
    write_json(path, dict(plan), force=force)


# -- hard vote over submissions -------------------------------------------------------------------


@dataclass
class EnsembleSummary:
    """What an ensemble run did."""

    output: str
    vote: str
    inputs: list[str]
    images: int
    plan: VotePlan
    per_class_out: str | None = None  # where `ensemble` saved the per-class choice made from scores

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "vote": self.vote,
            "inputs": self.inputs,
            "images": self.images,
            "weights": {c: self.plan.weights[i].tolist() for i, c in enumerate(CLASSES)},
            "cuts": {c: float(self.plan.cuts[i]) for i, c in enumerate(CLASSES)},
        }


def check_same_images(names: Sequence[str], image_lists: Sequence[Sequence[str]], what: str = "image") -> None:
    """All inputs cover the same images; otherwise a `DataError` naming the input and an image."""
    first = set(image_lists[0])
    for name, images in zip(names[1:], image_lists[1:]):
        these = set(images)
        if these == first:
            continue
        missing = [i for i in image_lists[0] if i not in these]
        if missing:
            raise DataError(
                f"{name}: lacks {what} {quote(missing[0])} (in {names[0]})"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            )
        extra = [i for i in images if i not in first]
        raise DataError(
            f"{name}: has {what} {quote(extra[0])} that {names[0]} lacks"
            + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
        )


def vote_image_rles(
    rles: Sequence[Sequence[str]], plan: VotePlan, size: int, names: Sequence[str] | None = None, image: str = ""
) -> list[str]:
    """Hard-vote one image: `rles[i]` are input i's 29 RLE texts in class order; returns 29 RLE texts.

    Raises:
        DataError: malformed RLE or runs past `size` pixels, naming the input, image and class.
    """
    out = []
    for c, cls in enumerate(CLASSES):
        runs = []
        for i, texts in enumerate(rles):  # every input is validated, even one with no say on this class
            try:
                runs.append(rle_mod.parse(texts[c], size))
            except DataError as exc:
                who = names[i] if names else f"input {i}"
                raise DataError(f"{who}: image {quote(image)}, class {quote(cls)}: {exc}") from None
        out.append(rle_mod.runs_to_rle(*vote_runs(runs, plan.weights[c], plan.cuts[c])))
    return out


def _hard_worker(image: str) -> list[str]:
    subs: list[Submission] = STATE["subs"]
    return vote_image_rles(
        [s.image_rles(image) for s in subs], STATE["plan"], STATE["size"], [str(s.path) for s in subs], image
    )


def hard_vote(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None,
    *,
    min_votes: int | None = None,
    weights: Sequence[float] | None = None,
    per_class: str | os.PathLike | Mapping[str, Any] | None = None,
    shape: tuple[int, int] = (2048, 2048),
    workers: int | None = None,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> EnsembleSummary:
    """Pixel-wise vote over submission CSVs, written as a submission CSV (``-``/None: stdout).

    Rows are matched by (image_name, class), so any row order works; the output lists images in the first
    input's order (`predict` writes the contract's sorted relative-path order).

    Args:
        inputs: submission CSVs.
        out: output CSV (written atomically; existing only with `force`).
        min_votes: keep pixels with at least this many votes (default: strict majority).
        weights: per-input weights: keep pixels with more than half of the total weight.
        per_class: per-class plan (JSON file or mapping), see `read_per_class`.
        shape: (height, width) of the images; every run must fit.
        workers: processes (default: all usable cores).
        reporter: its progress (`boneseg.progress`), one step per image.

    Raises:
        DataError: unreadable inputs, inputs with different images, malformed RLE (naming file, image
            and class). UsageError: impossible options.
    """
    check_workers(workers)
    names = [str(p) for p in inputs]
    per = read_per_class(per_class, names, "hard") if per_class is not None else None
    plan = hard_plan(len(names), min_votes, weights, per)
    subs = [read_submission(p) for p in inputs]
    check_same_images(names, [s.images for s in subs])
    images = list(subs[0].images)  # the first input's order: only a predict CSV knows the relative paths
    size = int(shape[0]) * int(shape[1])
    state = {"subs": subs, "plan": plan, "size": size}
    with SubmissionWriter(out, force=force) as writer, reporter.task("hard vote", len(images), "img") as task:
        for image, rles in zip(images, parallel_map(_hard_worker, images, state, workers, task)):
            writer.write_rles(image, rles)
    if len(names) == 2 and min_votes is None and weights is None and len(per or {}) < NUM_CLASSES:
        warnings.warn(
            "a hard vote over 2 inputs keeps only the pixels both predict (the intersection); "
            "--min-votes 1 gives the union",
            BonesegWarning,
            stacklevel=2,
        )
    return EnsembleSummary(str(out or "-"), "hard", names, len(images), plan)


# -- soft vote over probability folders -----------------------------------------------------------


def read_calibrations(
    calibration: Sequence[str | os.PathLike | None] | None, n: int
) -> list[calibration_mod.Calibration | None]:
    """One calibration (or None) per input from `calibration` (None: no input calibrated).

    Raises:
        UsageError: a count other than the number of inputs. DataError: a file that is not a calibration.
    """
    if not calibration:
        return [None] * n
    if len(calibration) != n:
        raise UsageError(
            f"--calibration: {len(calibration)} file(s) for {n} input(s) (give 'none' for an input left as is)"
        )
    return [calibration_mod.resolve(c) if c is not None and str(c).lower() != "auto" else None for c in calibration]


def soft_vote_image(qs: Sequence[np.ndarray], plan: VotePlan) -> np.ndarray:
    """(29, H, W) masks from the weighted mean of uint8 probabilities (`boneseg.probs.weighted_mean`)."""
    return probs_mod.binarize(probs_mod.weighted_mean(qs, plan.weights), plan.cuts)


def _soft_worker(image: str) -> list[str]:
    folders: list[str] = STATE["folders"]
    plan: VotePlan = STATE["plan"]
    calibrations: list[calibration_mod.Calibration | None] = STATE["calibrations"]
    used = np.asarray(plan.weights.any(axis=0))
    qs: list[np.ndarray | None] = []
    shape = None
    for folder, use, cal in zip(folders, used, calibrations):
        if not use:
            qs.append(None)
            continue
        q = probs_mod.load(folder, image)
        q = cal.apply_quantized(q) if cal is not None else q
        if shape is None:
            shape, first = q.shape, folder
        elif q.shape != shape:
            raise DataError(
                f"image {image!r}: probabilities of shape {q.shape[1:]} in {folder} but {shape[1:]} in {first}"
            )
        qs.append(q)
    assert shape is not None  # weights are never all zero
    blank = np.zeros(shape, np.uint8)
    masks = soft_vote_image([q if q is not None else blank for q in qs], plan)
    return [rle_mod.encode(m) for m in masks]


def soft_vote(
    folders: Sequence[str | os.PathLike],
    out: str | os.PathLike | None,
    *,
    weights: Sequence[float] | None = None,
    threshold: float | str | os.PathLike | Sequence[float] | Mapping[str, float] | None = None,
    per_class: str | os.PathLike | Mapping[str, Any] | None = None,
    calibration: Sequence[str | os.PathLike | None] | None = None,
    workers: int | None = None,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> EnsembleSummary:
    """Weighted mean of ``predict --save-probs`` folders, binarised per class, as a submission CSV.

    `calibration`: one calibration file per folder (None or ``none``: that folder as it is), applied to
    each folder's probabilities before the mean (`calibrate_inputs`).

    One folder with weight 1 reproduces ``predict``'s CSV exactly (same stored values, same rule).
    `threshold` defaults to 0.5, or to the thresholds the `per_class` plan carries.

    Raises:
        DataError: a folder that is not a probability folder, folders with different images or shapes
            (naming the folders and the image). UsageError: impossible options, a `threshold` beside a
            plan that carries its own.
    """
    check_workers(workers)
    names = [str(p) for p in folders]
    per = read_per_class(per_class, names, "soft") if per_class is not None else None
    carried = plan_thresholds(per_class) if per_class is not None else None
    if carried is not None:
        if threshold is not None:
            raise UsageError(f"--threshold: the plan {per_class} carries its own thresholds")
        threshold = carried.tolist()
    plan = soft_plan(len(names), weights, threshold, per)
    calibrations = read_calibrations(calibration, len(names))
    manifests = [probs_mod.read_manifest(f) for f in folders]
    check_same_images(names, [m["images"] for m in manifests])
    for name, manifest, cal in zip(names, manifests, calibrations):
        if cal is not None:
            probs_mod.refuse_calibrated(name, manifest, "give 'none' as its --calibration")
    if carried is None:
        calibrated = all(c is not None or bool(m.get("calibration")) for m, c in zip(manifests, calibrations))
        probs_mod.check_thresholds_calibration(threshold, calibrated)
    images = [str(i) for i in manifests[0]["images"]]
    state = {"folders": names, "plan": plan, "calibrations": calibrations}
    with SubmissionWriter(out, force=force) as writer, reporter.task("soft vote", len(images), "img") as task:
        for image, rles in zip(images, parallel_map(_soft_worker, images, state, workers, task)):
            writer.write_rles(Path(image).name, rles)
    return EnsembleSummary(str(out or "-"), "soft", names, len(images), plan)


# -- one entry point ------------------------------------------------------------------------------


def resolve_vote(inputs: Sequence[str | os.PathLike], vote: str | None = None) -> str:
    """The vote over `inputs`: `vote` checked against them, or (None) inferred: soft for probability folders,
    hard for submission CSVs.

    Raises:
        UsageError: an unknown vote, inputs mixing folders and files without a vote, or an input of the
            other kind than the vote takes.
    """
    paths = [Path(p) for p in inputs]
    dirs = [p.is_dir() for p in paths]
    if vote is None:
        if any(dirs) and not all(dirs):
            raise UsageError(
                "inputs mix folders and files: give --vote soft (probability folders) or --vote hard (CSVs)"
            )
        return "soft" if all(dirs) else "hard"
    if vote not in VOTES:
        from boneseg.errors import suggest

        raise UsageError(f"--vote must be hard or soft, got {vote!r}{suggest(str(vote), VOTES)}")
    for p, d in zip(paths, dirs):
        if d != (vote == "soft"):
            raise UsageError(
                f"--vote {vote} takes {'probability folders' if vote == 'soft' else 'submission CSVs'}; "
                f"{p} is {'a folder' if d else 'not a folder'}"
            )
    return vote


def ensemble(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = "-",
    *,
    vote: str | None = None,
    min_votes: int | None = None,
    weights: Sequence[float] | None = None,
    threshold: float | str | os.PathLike | Sequence[float] | Mapping[str, float] | None = None,
    per_class: str | os.PathLike | Mapping[str, Any] | None = None,
    scores: Sequence[str | os.PathLike | Mapping[str, Any]] | None = None,
    per_class_out: str | os.PathLike | None = None,
    calibration: Sequence[str | os.PathLike | None] | None = None,
    shape: tuple[int, int] = (2048, 2048),
    workers: int | None = None,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> EnsembleSummary:
    """Ensemble predictions (``boneseg ensemble``): `hard_vote` over submission CSVs or `soft_vote` over
    probability folders, the vote checked against the inputs or inferred from them (`resolve_vote`).

    Every option is checked against the vote and every value before any input is read or an output
    touched. `scores` (validation scores per input, `per_class_from_scores`) give each class to its best
    input instead of a `per_class` plan; `per_class_out` saves that choice once the vote has passed.
    Options of the other vote (`min_votes` for soft; `threshold`, `calibration` for hard) are refused.

    Raises:
        UsageError: impossible or contradictory options. DataError, OutputExistsError: as `hard_vote` /
            `soft_vote`, or an existing `per_class_out` without `force`.
    """
    from boneseg.io import check_output, is_stdout

    if not inputs:
        raise UsageError("give at least one input (submission CSVs or probability folders)")
    if vote is None:
        vote = resolve_vote(inputs)
    elif vote not in VOTES:
        resolve_vote(inputs, vote)  # says which votes there are
    if vote == "soft" and min_votes is not None:
        raise UsageError("--min-votes applies to --vote hard only")
    if vote == "hard" and threshold is not None:
        raise UsageError("--threshold applies to --vote soft only")
    if vote == "hard" and calibration:
        raise UsageError("--calibration applies to --vote soft only")
    if per_class is not None and scores:
        raise UsageError("give either --per-class or --scores, not both")
    if per_class_out is not None and not scores:
        raise UsageError("--per-class-out needs --scores")
    resolve_vote(inputs, vote)  # each input of the kind the vote takes
    # every option value before any input is read or an output checked
    check_workers(workers)
    if vote == "hard":
        hard_plan(len(inputs), min_votes, weights)
    else:
        soft_plan(len(inputs), weights, threshold)
        read_calibrations(calibration, len(inputs))
    if not is_stdout(out):
        check_output(out, force)  # type: ignore[arg-type]  # not None: is_stdout(None)
    if per_class_out is not None:
        check_output(per_class_out, force)
    plan: str | os.PathLike | Mapping[str, Any] | None = per_class
    if scores:
        plan = per_class_from_scores(scores, [str(p) for p in inputs])
    if vote == "hard":
        summary = hard_vote(
            inputs,
            out,
            min_votes=min_votes,
            weights=weights,
            per_class=plan,
            shape=shape,
            workers=workers,
            force=force,
            reporter=reporter,
        )
    else:
        summary = soft_vote(
            inputs,
            out,
            weights=weights,
            threshold=threshold,
            per_class=plan,
            calibration=calibration,
            workers=workers,
            force=force,
            reporter=reporter,
        )
    if per_class_out is not None and isinstance(plan, Mapping):  # written once the vote has passed every check
        write_per_class(per_class_out, plan, force=force)
        summary.per_class_out = str(per_class_out)
    return summary
