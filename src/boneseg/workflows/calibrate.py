"""``boneseg calibrate``: measure and fit per-class probability calibration on out-of-fold probabilities.

Counting. Saved probabilities are uint8 (`boneseg.probs`), so a class's pixels are summarised exactly by a
histogram: for each of the 256 values, how many pixels hold it with the label on and off. Every statistic
below is computed from these histograms over **every pixel** (no sampling, so the figures are
deterministic), in two regions per class:

- ``all``: every pixel of every image;
- ``band``: the pixels within ``band`` pixels (a square neighbourhood, at the image's own size) of the class's
  labelled or predicted (p > 0.5) pixels, so that the background far from the bone does not drown the figure.

Measures, per class and region: the expected calibration error (ECE: ``bins`` equal-mass bins of pixels
sorted by probability; pixels sharing a value are split across a bin edge in proportion, so every bin holds
exactly ``1 / bins`` of the pixels; ECE = mean over bins of ``|positive rate - mean probability|``), the
reliability curve (those bins' mean probability and positive rate), and the negative log-likelihood (NLL,
nats per pixel).

Fit. Per class, ``p -> sigmoid((logit(p) - bias) / temperature)`` (`boneseg.calibration`; ``bias`` 0 unless
``platt``) minimising the NLL of the ``fit_on`` region by Newton's method on the histogram (a convex
two-parameter logistic regression on 256 weighted points). Logits come from the dequantised probabilities
clipped to ``[0.5/255, 1 - 0.5/255]``. A class without positive or negative pixels keeps the identity.
With ``isotonic``, per class a non-decreasing step per uint8 value instead (`isotonic_steps`: the pooled
adjacent violators of the positive rates, weighted by pixels, the least NLL among all monotone maps of the
histogram), kept within ``[STEP_FLOOR, 1 - STEP_FLOOR]``.

Out of fold. With the folds the OOF manifest records (``boneseg oof``), the "after" figures are
cross-fitted: each fold is calibrated by the fit on the other folds; the spread is the standard deviation
of the per-fold figures, and of the temperature fitted on each fold alone. The thresholds stored with the
calibration maximise each class's mean per-image Dice of the calibrated probabilities over all images; the
reported Dice with searched thresholds is cross-fitted the same way (searched on the other folds).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boneseg import probs as probs_mod
from boneseg.calibration import Calibration, logits
from boneseg.classes import CLASSES, NUM_CLASSES
from boneseg.errors import DataError, UsageError
from boneseg.io import check_output, hold, publishing
from boneseg.metrics import dice_from_counts
from boneseg.progress import SILENT, Reporter
from boneseg.workflows.parallel import STATE, parallel_map

LEVELS = probs_mod.SCALE + 1
STEP_FLOOR = 1e-4
"""Isotonic steps stay within [STEP_FLOOR, 1 - STEP_FLOOR]: a step of exactly 0 or 1 (a value no positive, or
no negative, pixel of the fit held) would make one such pixel of another image cost unbounded NLL."""
REGIONS = ("band", "all")
FIT_ON = ("all", "band")


# -- histograms -----------------------------------------------------------------------------------


def histograms(q: np.ndarray, truth: np.ndarray, band: int) -> tuple[np.ndarray, np.ndarray]:
    """(29, 2, 256) pixel counts per class, label (0 off, 1 on) and uint8 value: over every pixel, and over
    the band of `band` pixels around the class's labelled or predicted (q > 127) pixels."""
    import cv2

    every = np.empty((NUM_CLASSES, 2, LEVELS), np.int64)
    near = np.empty_like(every)
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8) if band > 0 else None
    for c in range(NUM_CLASSES):
        code = q[c].astype(np.int64) + LEVELS * truth[c].astype(np.int64)
        every[c] = np.bincount(code.ravel(), minlength=2 * LEVELS).reshape(2, LEVELS)
        region = (truth[c] > 0) | (q[c] > probs_mod.SCALE // 2)
        if kernel is not None and region.any():
            region = cv2.dilate(region.view(np.uint8), kernel).astype(bool)
        near[c] = np.bincount(code[region], minlength=2 * LEVELS).reshape(2, LEVELS)
    return every, near


def _image_worker(index: int) -> tuple[np.ndarray, np.ndarray]:
    folder, image, sample = STATE["folder"], STATE["images"][index], STATE["samples"][index]
    q = probs_mod.load(folder, image)
    masks = STATE["cache"].get(sample).masks
    if q.shape != masks.shape:
        raise DataError(
            f"{probs_mod.prob_path(folder, image)}: probabilities of shape {q.shape[1:]} but the labelled image "
            f"{sample.image} is {masks.shape[1:]}"
        )
    return histograms(q, masks, STATE["band"])


# -- measures -------------------------------------------------------------------------------------


def ece(conf: np.ndarray, pos: np.ndarray, neg: np.ndarray, bins: int = 15) -> tuple[float, list[list[float]]]:
    """ECE and reliability curve of weighted points: `conf` probabilities with `pos`/`neg` pixel counts.

    Pixels sorted by probability fill `bins` equal-mass bins; a value's pixels straddling an edge are
    split in proportion. Returns (ECE, ``[[mean probability, positive rate, mass share], …]`` per bin);
    nan and ``[]`` without pixels.
    """
    n = pos + neg
    keep = n > 0
    conf, pos, n = conf[keep], pos[keep], n[keep]
    total = float(n.sum())
    if total == 0:
        return float("nan"), []
    order = np.argsort(conf, kind="stable")
    conf, pos, n = conf[order], pos[order].astype(np.float64), n[order].astype(np.float64)
    hi = np.cumsum(n)
    lo = hi - n
    edges = np.linspace(0.0, total, bins + 1)
    overlap = np.clip(np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1]), 0, None)
    mass = overlap.sum(axis=0)
    mean_p = (overlap * conf[:, None]).sum(axis=0) / np.maximum(mass, 1e-300)
    rate = (overlap * (pos / n)[:, None]).sum(axis=0) / np.maximum(mass, 1e-300)
    share = mass / total
    err = float((share * np.abs(rate - mean_p)).sum())
    return err, [[float(a), float(b), float(s)] for a, b, s in zip(mean_p, rate, share) if s > 0]


def nll(conf: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """Mean negative log-likelihood (nats per pixel); nan without pixels."""
    total = float(pos.sum() + neg.sum())
    if total == 0:
        return float("nan")
    p = np.clip(conf, 1e-12, 1 - 1e-12)
    return float(-(pos * np.log(p) + neg * np.log1p(-p)).sum() / total)


def fit_class(hist: np.ndarray, platt: bool = False, iterations: int = 100) -> tuple[float, float]:
    """(temperature, bias) minimising the NLL of one class's (2, 256) histogram; (1, 0) when the class has
    no positive or no negative pixel. The temperature is kept within [1e-3, 1e3], the bias within ±100."""
    from boneseg.calibration import MAX_BIAS, MAX_TEMPERATURE

    neg, pos = hist[0].astype(np.float64), hist[1].astype(np.float64)
    if pos.sum() == 0 or neg.sum() == 0:
        return 1.0, 0.0
    z = logits(np.arange(LEVELS) / probs_mod.SCALE)
    n = pos + neg
    keep = n > 0
    z, pos, n = z[keep], pos[keep], n[keep]
    x = np.stack([z, np.ones_like(z)], axis=1) if platt else z[:, None]
    w = np.zeros(x.shape[1])
    w[0] = 1.0

    def loss(w: np.ndarray) -> float:
        s = x @ w
        return float((n * np.logaddexp(0, s) - pos * s).sum())

    current = loss(w)
    for _ in range(iterations):
        s = x @ w
        p = 0.5 * (1 + np.tanh(0.5 * s))
        grad = x.T @ (n * p - pos)
        hess = (x * (n * p * (1 - p))[:, None]).T @ x + 1e-9 * n.sum() * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:
            trial = w - t * step
            value = loss(trial)
            if value <= current:
                break
            t /= 2
        else:
            break
        done = current - value <= 1e-12 * max(1.0, abs(current))
        w, current = trial, value
        if done:
            break
    a = float(np.clip(w[0], 1 / MAX_TEMPERATURE, MAX_TEMPERATURE))
    temperature = 1.0 / a
    bias = float(np.clip(-w[1] * temperature, -MAX_BIAS, MAX_BIAS)) if platt else 0.0
    return temperature, bias


def isotonic_steps(hist: np.ndarray) -> np.ndarray:
    """(256,) non-decreasing positive rate per uint8 value fitted to one class's (2, 256) histogram (pool
    adjacent violators, weighted by pixels); a value without pixels takes the step it falls in; the identity
    table when the class has no positive or no negative pixel. Steps stay within ``[STEP_FLOOR, 1 - STEP_FLOOR]``."""
    n = (hist[0] + hist[1]).astype(np.float64)
    pos = hist[1].astype(np.float64)
    if pos.sum() == 0 or pos.sum() == n.sum():
        return Calibration.identity().table()[0]
    blocks: list[list[float]] = []  # [positives, pixels, first value]
    for v in np.flatnonzero(n):
        blocks.append([pos[v], n[v], float(v)])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] >= blocks[-1][0] * blocks[-2][1]:
            p2, n2, _ = blocks.pop()
            blocks[-1][0] += p2
            blocks[-1][1] += n2
    steps = np.empty(LEVELS)
    starts = [0] + [int(b[2]) for b in blocks[1:]] + [LEVELS]
    for b, lo, hi in zip(blocks, starts[:-1], starts[1:]):
        steps[lo:hi] = b[0] / b[1]
    return np.clip(steps, STEP_FLOOR, 1 - STEP_FLOOR)


def fit(hist: np.ndarray, platt: bool = False, isotonic: bool = False) -> Calibration:
    """A calibration fitted per class on (29, 2, 256) histograms (`fit_class`, or `isotonic_steps`)."""
    if isotonic:
        identity = Calibration.identity()
        steps = np.stack([isotonic_steps(hist[c]) for c in range(NUM_CLASSES)])
        return Calibration(identity.temperature, identity.bias, steps=steps)
    params = np.array([fit_class(hist[c], platt) for c in range(NUM_CLASSES)])
    return Calibration(params[:, 0], params[:, 1])


# -- thresholds -----------------------------------------------------------------------------------


def _cut_dice(per_image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(images, 29, 256) Dice of every cut ``q' > k`` (k = 0 … 255) on the calibrated uint8 values ``q'`` (the
    quantised `table`), from per-image (images, 29, 2, 256) histograms of the raw values."""
    lut = np.rint(table * probs_mod.SCALE).astype(np.int64)  # (29, 256)
    n_img = per_image.shape[0]
    mapped = np.zeros((n_img, NUM_CLASSES, 2, LEVELS))
    for c in range(NUM_CLASSES):
        onehot = np.zeros((LEVELS, LEVELS))
        onehot[np.arange(LEVELS), lut[c]] = 1.0  # raw value -> calibrated value
        mapped[:, c] = per_image[:, c].astype(np.float64) @ onehot
    above = np.cumsum(mapped[..., ::-1], axis=-1)[..., ::-1]  # pixels with value >= v
    zero = np.zeros(above.shape[:-1] + (1,))
    tp = np.concatenate([above[:, :, 1, 1:], zero[:, :, 1]], axis=-1)  # value > k for k = 0 … 255
    fp = np.concatenate([above[:, :, 0, 1:], zero[:, :, 0]], axis=-1)
    gt = mapped[:, :, 1].sum(axis=-1)[..., None]
    return dice_from_counts(tp, tp + fp, np.broadcast_to(gt, tp.shape))


def search_cuts(dice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the threshold with the best mean Dice over images of (images, 29, 256) cut Dice, over the
    whole range (`boneseg.workflows.validation.search_thresholds`), and its uint8 cut."""
    from boneseg.workflows.validation import search_thresholds

    thresholds, _ = search_thresholds(dice.mean(axis=0), 0.0, 1.0)
    return thresholds, probs_mod.cutoffs(thresholds)


# -- the job ---------------------------------------------------------------------------------------


@dataclass
class CalibrationReport:
    """What `calibrate` measured and fitted (``as_dict`` is the ``--json`` output and the file's ``report``)."""

    calibration: Calibration
    images: int
    folds: list[int]
    settings: dict[str, Any]
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    plot: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "plot": self.plot,
            "images": self.images,
            "folds": self.folds,
            **self.settings,
            "summary": self.summary,
            "per_class": self.classes,
        }


def _points(hist: np.ndarray, table: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability, positives, negatives) per uint8 value of a (2, 256) histogram, calibrated by `table`."""
    conf = table if table is not None else np.arange(LEVELS) / probs_mod.SCALE
    return conf, hist[1], hist[0]


def _stack(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conf, pos, neg = (np.concatenate(x) for x in zip(*parts))
    return conf, pos, neg


def _sd(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    return float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def calibrate(
    oof_probs: str | os.PathLike,
    gt: str | os.PathLike,
    out: str | os.PathLike,
    *,
    bins: int = 15,
    band: int = 16,
    fit_on: str = "all",
    platt: bool = True,
    isotonic: bool = False,
    thresholds: bool = True,
    plot: str | os.PathLike | None = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> CalibrationReport:
    """Measure, fit and write a per-class calibration from out-of-fold probabilities.

    Args:
        oof_probs: a probability folder of train images (``boneseg oof --save-probs``; its manifest's ``folds``
            give the fold-wise figures, else one fold).
        gt: the dataset root (its train labels are the truth).
        out: the calibration file to write (`boneseg.calibration`; its ``report`` holds the figures).
        bins: equal-mass bins of the ECE. band: width in pixels of the band region (see the module notes).
        fit_on: the region whose NLL the fit minimises: ``all`` or ``band``.
        platt: fit a bias beside the temperature.
        isotonic: fit a non-decreasing step per uint8 value instead of temperature and bias (file version 2).
        thresholds: also store per-class thresholds searched on the calibrated probabilities.
        plot: the PNG of the 29 reliability curves (default: `out` with ``.png``; ``none``: no picture).
        workers: processes reading the probabilities (default: all cores). cache_dir: the mask cache.
        force: overwrite existing outputs. reporter: progress, one step per image.

    Raises:
        UsageError: impossible options. DataError: not a probability folder, images that are not labelled
            train images, shapes that differ from the labels. OutputExistsError: an existing output
            without `force`.
    """
    from boneseg.data.masks import MaskCache, default_cache_dir
    from boneseg.workflows.select import _train_samples

    if not 2 <= bins <= 1000:
        raise UsageError(f"--bins must be within 2..1000, got {bins}")
    if not 0 <= band <= 4096:
        raise UsageError(f"--band must be within 0..4096 pixels, got {band}")
    if fit_on not in FIT_ON:
        from boneseg.errors import suggest

        raise UsageError(f"--fit-on must be one of {', '.join(FIT_ON)}, got {fit_on!r}{suggest(fit_on, FIT_ON)}")
    check_output(out, force)
    plot_path = (
        None if plot is not None and str(plot).lower() == "none" else Path(plot or Path(out).with_suffix(".png"))
    )
    if plot_path is not None:
        if plot_path.resolve() == Path(out).resolve():
            raise UsageError("--plot: give another file than --out")
        check_output(plot_path, force)
    manifest = probs_mod.read_manifest(oof_probs)
    probs_mod.refuse_calibrated(oof_probs, manifest, "fit on uncalibrated ones (boneseg oof --save-probs)")
    images = [str(i) for i in manifest["images"]]
    if not images:
        raise DataError(f"{oof_probs}: holds no images")
    samples = _train_samples(Path(gt), [Path(i).name for i in images], str(oof_probs))
    recorded: dict = manifest["folds"] if isinstance(manifest.get("folds"), dict) else {}
    fold_of = np.array([int(recorded.get(i, recorded.get(Path(i).name, 0))) for i in images])
    fold_ids = sorted(set(fold_of.tolist()))
    state = {
        "folder": str(oof_probs),
        "images": images,
        "samples": samples,
        "cache": MaskCache(cache_dir or default_cache_dir(gt)),
        "band": band,
    }
    with reporter.task("histograms", len(images), "img") as task:
        parts = list(parallel_map(_image_worker, list(range(len(images))), state, workers, task))
    per_image = np.stack([p[0] for p in parts])  # (N, 29, 2, 256)
    per_band = np.stack([p[1] for p in parts])
    region_hist = {"all": per_image, "band": per_band}
    folds = {f: fold_of == f for f in fold_ids}

    final = fit(region_hist[fit_on].sum(axis=0), platt, isotonic)
    # cross-fitted: fold f calibrated by the fit on the others (in-sample with one fold)
    held_out = {
        f: fit(region_hist[fit_on][~m].sum(axis=0), platt, isotonic) if len(fold_ids) > 1 else final
        for f, m in folds.items()
    }
    alone = {f: fit(region_hist[fit_on][m].sum(axis=0), platt, isotonic) for f, m in folds.items()}
    tables = {f: held_out[f].table() for f in fold_ids}

    report: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(CLASSES):
        row: dict[str, Any] = {"temperature": float(final.temperature[c]), "bias": float(final.bias[c])}
        row["temperature_folds"] = [float(alone[f].temperature[c]) for f in fold_ids]
        row["temperature_sd"] = _sd(row["temperature_folds"])
        for region in REGIONS:
            h = region_hist[region]
            before = _stack([_points(h[m, c].sum(axis=0), None) for m in folds.values()])
            after = _stack([_points(h[m, c].sum(axis=0), tables[f][c]) for f, m in folds.items()])
            row[f"ece_{region}_before"], curve_before = ece(*before, bins=bins)
            row[f"ece_{region}_after"], curve_after = ece(*after, bins=bins)
            row[f"nll_{region}_before"], row[f"nll_{region}_after"] = nll(*before), nll(*after)
            fold_before = [ece(*_points(h[m, c].sum(axis=0), None), bins=bins)[0] for m in folds.values()]
            fold_after = [ece(*_points(h[m, c].sum(axis=0), tables[f][c]), bins=bins)[0] for f, m in folds.items()]
            row[f"ece_{region}_sd_before"], row[f"ece_{region}_sd_after"] = _sd(fold_before), _sd(fold_after)
            row[f"curve_{region}_before"], row[f"curve_{region}_after"] = curve_before, curve_after
        report[name] = row

    identity = Calibration.identity().table()
    dice_before = _cut_dice(per_image, identity)[:, :, 127]  # (N, 29) raw probabilities at 0.5
    dice_cal = np.zeros_like(dice_before)
    dice_tuned = np.zeros_like(dice_before)
    for f, m in folds.items():
        d = _cut_dice(per_image[m], tables[f])
        dice_cal[m] = d[:, :, 127]
        train = ~m if len(fold_ids) > 1 else m
        cuts = search_cuts(_cut_dice(per_image[train], tables[f]))[1]
        dice_tuned[m] = np.take_along_axis(d, cuts[None, :, None], axis=2)[:, :, 0]
    searched = None
    if thresholds:
        searched = search_cuts(_cut_dice(per_image, final.table()))[0]
    for c, name in enumerate(CLASSES):
        report[name]["dice_before"] = float(dice_before[:, c].mean())
        report[name]["dice_calibrated"] = float(dice_cal[:, c].mean())
        report[name]["dice_tuned"] = float(dice_tuned[:, c].mean())
        if searched is not None:
            report[name]["threshold"] = float(searched[c])

    def fold_sd(d: np.ndarray) -> float:
        return _sd([float(d[m].mean()) for m in folds.values()])

    summary: dict[str, Any] = {}
    for region in REGIONS:
        for when in ("before", "after"):
            key = f"ece_{region}_{when}"
            summary[key] = float(np.nanmean([report[n][key] for n in CLASSES]))
            summary[f"nll_{region}_{when}"] = float(np.nanmean([report[n][f"nll_{region}_{when}"] for n in CLASSES]))
            mean_by_fold = [
                float(np.nanmean([ece(*_points(region_hist[region][m, c].sum(axis=0),
                                               tables[f][c] if when == "after" else None), bins=bins)[0]
                                  for c in range(NUM_CLASSES)]))
                for f, m in folds.items()
            ]  # fmt: skip
            summary[f"{key}_sd"] = _sd(mean_by_fold)
    for key, d in (("dice_before", dice_before), ("dice_calibrated", dice_cal), ("dice_tuned", dice_tuned)):
        summary[key] = float(d.mean())
        summary[f"{key}_sd"] = fold_sd(d)

    result = Calibration(final.temperature, final.bias, searched, str(out), final.steps)
    settings = {
        "method": "isotonic" if isotonic else "platt" if platt else "temperature",
        "fit_on": fit_on,
        "band": band,
        "bins": bins,
        "source": str(oof_probs),
        "cross_fitted": len(fold_ids) > 1,
    }
    rep = CalibrationReport(result, len(images), fold_ids, settings, report, summary, str(out))
    if plot_path is not None:
        rep.plot = str(plot_path)
    doc = rep.as_dict()
    with hold(out, plot_path), publishing(force) as pub:  # the calibration and its picture are one unit
        extra = {"fit": settings, "report": {k: v for k, v in doc.items() if k not in settings}}
        result.write(pub.file(out), extra, force=True)
        if plot_path is not None:
            reliability_plot(rep, pub.file(plot_path), True)
    return rep


def reliability_plot(report: CalibrationReport, path: str | os.PathLike, force: bool = False) -> Path:
    """The 29 reliability curves (band region) before and after calibration, one panel per class, as PNG."""
    from boneseg.plots import new_figure, save_png

    fig = new_figure(18, 15, 80)
    axes = fig.subplots(5, 6)
    for ax, name in zip(axes.ravel(), CLASSES):
        row = report.classes[name]
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
        for when, colour in (("before", "tab:red"), ("after", "tab:blue")):
            curve = np.asarray(row[f"curve_band_{when}"]).reshape(-1, 3)
            ax.plot(curve[:, 0], curve[:, 1], "o-", ms=2.5, lw=1, color=colour, label=when)
        ax.set_title(
            f"{name}  ECE {row['ece_band_before']:.3f}→{row['ece_band_after']:.3f}  T {row['temperature']:.2f}",
            fontsize=8,
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    last = axes.ravel()[-1]
    last.axis("off")
    s = report.summary
    last.text(
        0.0,
        0.5,
        f"{report.images} images, folds {report.folds}\nband {report.settings['band']} px, "
        f"{report.settings['bins']} equal-mass bins\nmean ECE (band) {s['ece_band_before']:.4f} → "
        f"{s['ece_band_after']:.4f}\nmean ECE (all) {s['ece_all_before']:.5f} → {s['ece_all_after']:.5f}\n"
        "red: before, blue: after\nx: mean probability, y: positive rate",
        fontsize=9,
        va="center",
    )
    fig.suptitle("Reliability per class (pixels within the band around labelled or predicted bone)")
    return save_png(fig, path, force=force)
