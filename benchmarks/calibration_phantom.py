"""Calibration and uncertainty on the phantom: the figures of docs/benchmarks.md ("Calibration on the phantom").

Given a folder prepared as docs/calibrate.md shows (``data/``, ``splits3.json``, fold runs ``runs/a_f{0,1,2}``
and ``runs/b_f{0,1,2}``, their OOF probabilities ``oof_a`` and ``oof_b``), prints:

1. per model, ``boneseg calibrate``'s figures (ECE before/after per class, cross-fitted; Dice before and with
   thresholds searched after calibration);
2. the soft vote of the two models' OOF probabilities before and after calibrating each input (each fold
   calibrated by the fit on the other folds): ECE of the mean and Dice at 0.5;
3. the band ECE that each kind of per-class calibration map reaches (cross-fitted, and in-sample as the
   map's capacity): Platt fitted on all pixels or on the band, temperature alone on the band, and the
   isotonic map (``calibrate --isotonic``: a monotone step per saved value) on all pixels or on the band;
4. AUROC of each uncertainty map (``predict --save-uncertainty``: entropy, TTA views, ensemble members) against
   per-pixel error, per fold with the two fold models on their validation images; and of combinations: the
   pixel-wise largest and mean of the three maps, the entropy of probabilities calibrated on the other folds,
   the distance to thresholds searched on the other folds (with the error at those thresholds), and the
   error rate of the (entropy, TTA, ensemble) cell (16 levels each) measured on the other folds.

    python benchmarks/calibration_phantom.py FOLDER [--workers N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from boneseg import probs, uncertainty
from boneseg.calibration import logits
from boneseg.classes import CLASSES, NUM_CLASSES
from boneseg.data.layout import discover
from boneseg.data.masks import MaskCache, default_cache_dir
from boneseg.workflows.calibrate import LEVELS, _cut_dice, calibrate, ece, fit, histograms, search_cuts


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC of a score with uint8 values: `pos`/`neg` are counts per value of the positives (errors) and the
    negatives; ties count one half."""
    pos, neg = pos.astype(np.float64), neg.astype(np.float64)
    below = np.cumsum(neg) - neg  # negatives with a lower score
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def auroc_scores(score: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC of weighted points: `score` with `pos` errors and `neg` correct pixels each; ties count one half."""
    order = np.argsort(score, kind="stable")
    score, pos, neg = score[order], pos[order].astype(np.float64), neg[order].astype(np.float64)
    _, start, counts = np.unique(score, return_index=True, return_counts=True)
    gpos = np.add.reduceat(pos, start)
    gneg = np.add.reduceat(neg, start)
    below = np.cumsum(gneg) - gneg
    return float((gpos * (below + 0.5 * gneg)).sum() / (gpos.sum() * gneg.sum()))


def band_ece_of(tables: dict, hists: dict, bins: int = 15) -> float:
    """Mean over classes of the ECE of fold f's (29, 2, 256) histograms (of a region) mapped by `tables[f]`."""
    out = []
    for c in range(NUM_CLASSES):
        conf = np.concatenate([tables[f][c] for f in hists])
        pos = np.concatenate([hists[f][c, 1] for f in hists])
        neg = np.concatenate([hists[f][c, 0] for f in hists])
        out.append(ece(conf, pos, neg, bins)[0])
    return float(np.nanmean(out))


def map_table(kind: str, every: np.ndarray, near: np.ndarray, train: np.ndarray) -> np.ndarray:
    """(29, 256) calibrated probability per uint8 value of the map `kind` fitted on the `train` images'
    (images, 29, 2, 256) histograms of all pixels (`every`) or of the band (`near`)."""
    if kind == "none":
        return np.tile(np.arange(LEVELS) / 255, (NUM_CLASSES, 1))
    if kind == "platt, fit on all pixels":
        return fit(every[train].sum(axis=0), platt=True).table()
    if kind.startswith("isotonic"):
        source = near if kind.endswith("band") else every
        return fit(source[train].sum(axis=0), isotonic=True).table()
    return fit(near[train].sum(axis=0), platt=kind.startswith("platt")).table()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--fit-on", default="all", choices=("all", "band"))
    args = ap.parse_args()
    root = args.folder
    data = root / "data"
    out: dict = {}
    for v in ("a", "b"):
        rep = calibrate(
            root / f"oof_{v}",
            data,
            root / f"cal_{v}.json",
            workers=args.workers,
            force=True,
            band=16,
            fit_on=args.fit_on,
        )
        out[v] = {"summary": rep.summary, "per_class": rep.classes, "folds": rep.folds}
        s = rep.summary
        print(
            f"model {v}: ECE band {s['ece_band_before']:.4f} -> {s['ece_band_after']:.4f} "
            f"(sd {s['ece_band_before_sd']:.4f} / {s['ece_band_after_sd']:.4f}); all {s['ece_all_before']:.5f} -> "
            f"{s['ece_all_after']:.5f}; NLL all {s['nll_all_before']:.4f} -> {s['nll_all_after']:.4f}; "
            f"Dice {s['dice_before']:.4f}±{s['dice_before_sd']:.4f} -> cal@0.5 {s['dice_calibrated']:.4f} -> "
            f"tuned {s['dice_tuned']:.4f}±{s['dice_tuned_sd']:.4f}",
            flush=True,
        )

    # soft vote of a and b, before and after calibrating each input (cross-fitted per fold)
    manifest = probs.read_manifest(root / "oof_a")
    images = [str(i) for i in manifest["images"]]
    fold_of = np.array([manifest["folds"][i] for i in images])
    by_name = {s.image_name: s for s in discover(data, "train")}
    cache = MaskCache(default_cache_dir(data))
    per: dict[str, list] = {"a": [], "b": [], "mean_before": []}
    truths, qa_all, qb_all = [], [], []
    for name in images:
        truth = cache.get(by_name[name]).masks
        qa, qb = probs.load(root / "oof_a", name), probs.load(root / "oof_b", name)
        truths.append(truth)
        qa_all.append(qa)
        qb_all.append(qb)
        for key, q in (("a", qa), ("b", qb)):
            per[key].append(histograms(q, truth, 16))
    vote: dict[str, list] = {"before": [], "after": [], "after (isotonic)": []}
    for f in sorted(set(fold_of.tolist())):
        train = fold_of != f
        cals = {}
        for when, isotonic in (("after", False), ("after (isotonic)", True)):
            cals[when] = {
                key: fit(
                    np.stack([h[0 if args.fit_on == "all" else 1] for h, t in zip(per[key], train) if t]).sum(axis=0),
                    platt=True,
                    isotonic=isotonic,
                )
                for key in ("a", "b")
            }
        for i in np.flatnonzero(fold_of == f):
            qa, qb, truth = qa_all[i], qb_all[i], truths[i]
            before = np.rint((qa.astype(np.float64) + qb) / 2).astype(np.uint8)
            vote["before"].append(histograms(before, truth, 16))
            for when, cal in cals.items():
                ca, cb = cal["a"].apply_quantized(qa), cal["b"].apply_quantized(qb)
                after = np.rint((ca.astype(np.float64) + cb) / 2).astype(np.uint8)
                vote[when].append(histograms(after, truth, 16))
    identity = np.arange(LEVELS) / 255
    out["vote"] = {}
    for when, hs in vote.items():
        every = np.stack([h[0] for h in hs])
        band = np.stack([h[1] for h in hs]).sum(axis=0)
        eces = [ece(identity, band[c, 1], band[c, 0])[0] for c in range(NUM_CLASSES)]
        curves = _cut_dice(every, np.tile(identity, (NUM_CLASSES, 1)))
        dice = curves[:, :, 127]
        tuned = np.zeros_like(dice)
        for f in sorted(set(fold_of.tolist())):  # thresholds searched on the other folds
            cuts = search_cuts(curves[fold_of != f])[1]
            tuned[fold_of == f] = np.take_along_axis(curves[fold_of == f], cuts[None, :, None], axis=2)[:, :, 0]
        folds = sorted(set(fold_of.tolist()))
        fold_dice = [float(dice[fold_of == f].mean()) for f in folds]
        fold_tuned = [float(tuned[fold_of == f].mean()) for f in folds]
        out["vote"][when] = {
            "ece_band": float(np.mean(eces)),
            "dice": float(dice.mean()),
            "dice_sd": float(np.std(fold_dice, ddof=1)),
            "dice_tuned": float(tuned.mean()),
            "dice_tuned_sd": float(np.std(fold_tuned, ddof=1)),
        }
        print(f"soft vote a+b {when} calibration: {out['vote'][when]}")

    # band ECE by kind of calibration map, cross-fitted (fold f mapped by a fit on the others) and in-sample
    folds = sorted(set(fold_of.tolist()))
    out["calibrators"] = {}
    for key in ("a", "b"):
        every = np.stack([h[0] for h in per[key]])
        near = np.stack([h[1] for h in per[key]])
        band_by_fold = {f: near[fold_of == f].sum(axis=0) for f in folds}
        all_by_fold = {f: every[fold_of == f].sum(axis=0) for f in folds}
        kinds = (
            "none",
            "platt, fit on all pixels",
            "platt, fit on the band",
            "temperature, fit on the band",
            "isotonic, fit on all pixels",
            "isotonic, fit on the band",
        )
        row = {}
        for kind in kinds:
            tables = {f: map_table(kind, every, near, fold_of != f) for f in folds}
            crossed = band_ece_of(tables, band_by_fold)
            everywhere = band_ece_of(tables, all_by_fold)
            inside = band_ece_of({f: map_table(kind, every, near, fold_of >= 0) for f in folds}, band_by_fold)
            row[kind] = {"cross_fitted": crossed, "in_sample": inside, "all_pixels_cross_fitted": everywhere}
            print(
                f"model {key}: band ECE, {kind}: cross-fitted {crossed:.4f}, in-sample {inside:.4f}; "
                f"all-pixel ECE cross-fitted {everywhere:.5f}",
                flush=True,
            )
        out["calibrators"][key] = row

    # uncertainty maps against per-pixel error: each fold's two models on their validation images
    import cv2

    from boneseg.inference import PredictOptions, predict

    extra = ("max", "mean")
    counts = {m: np.zeros((2, 2, LEVELS)) for m in (*uncertainty.MAPS, *extra)}  # map -> region -> error
    cells = 16**3
    joint = {f: np.zeros((2, 2, cells)) for f in folds}  # fold -> region -> error -> (e, t, s) cell
    prob_hist: dict[str, tuple] = {}  # image -> (all, band) histograms of the uncertainty run's probabilities
    for f in sorted(set(fold_of.tolist())):
        samples = [by_name[images[i]] for i in np.flatnonzero(fold_of == f)]
        folder = root / f"unc_f{f}"
        pfolder = root / f"unc_probs_f{f}"
        if not (folder / uncertainty.MANIFEST).is_file():
            predict(
                samples,
                [root / "runs" / f"a_f{f}", root / "runs" / f"b_f{f}"],
                root / f"unc_f{f}.csv",
                tta="scale",
                save_probs=pfolder,
                save_uncertainty=folder,
                force=True,
                options=PredictOptions(device="cpu", workers=0, calibration="none"),
            )
        for s in samples:
            maps = uncertainty.load(folder, s.image_name)
            q = probs.load(pfolder, s.image_name)
            truth = cache.get(s).masks.astype(bool)
            pred = q > 127
            error = (pred != truth).astype(np.int64)
            prob_hist[s.image_name] = histograms(q, truth, 16)
            stack = np.stack([maps[m] for m in uncertainty.MAPS]).astype(np.int64)  # (3, 29, H, W)
            derived = {"max": stack.max(axis=0), "mean": (stack.sum(axis=0) + 1) // 3}
            cell = (stack[0] >> 4) * 256 + (stack[1] >> 4) * 16 + (stack[2] >> 4)
            for c in range(NUM_CLASSES):
                region = truth[c] | pred[c]
                band = cv2.dilate(region.view(np.uint8), np.ones((33, 33), np.uint8)).astype(bool)
                for m, u in (*maps.items(), *derived.items()):
                    code = u[c].astype(np.int64) + LEVELS * error[c]
                    counts[m][0] += np.bincount(code.ravel(), minlength=2 * LEVELS).reshape(2, LEVELS)
                    counts[m][1] += np.bincount(code[band], minlength=2 * LEVELS).reshape(2, LEVELS)
                code = cell[c] + cells * error[c]
                joint[f][0] += np.bincount(code.ravel(), minlength=2 * cells).reshape(2, cells)
                joint[f][1] += np.bincount(code[band], minlength=2 * cells).reshape(2, cells)

    # cross-fitted on the other folds' probabilities of the same predictor: calibrations (Platt, fit on all
    # pixels or on the band), thresholds searched on raw and on calibrated values; per fold, class, error rule
    # (at 0.5, at the raw searched cut, at the calibrated searched cut) and region: (error, uint8 value) counts
    rules = ("0.5", "raw cut", "calibrated cut", "isotonic cut")
    per_value = {f: np.zeros((len(rules), NUM_CLASSES, 2, 2, LEVELS)) for f in folds}
    fitted = {}
    cell_points: dict[int, list] = {0: [], 1: []}
    for f in folds:
        held = [i for i in images if i in prob_hist and fold_of[images.index(i)] != f]
        cal_all = fit(np.stack([prob_hist[i][0] for i in held]).sum(axis=0), platt=True)
        cal_band = fit(np.stack([prob_hist[i][1] for i in held]).sum(axis=0), platt=True)
        per_image = np.stack([prob_hist[i][0] for i in held])
        raw_cuts = search_cuts(_cut_dice(per_image, np.tile(identity, (NUM_CLASSES, 1))))[1]  # q > cut: on
        cal_cuts = search_cuts(_cut_dice(per_image, cal_all.table()))[1]  # on calibrated uint8 values
        lut = np.rint(cal_all.table() * 255).astype(np.int64)
        iso = fit(np.stack([prob_hist[i][0] for i in held]).sum(axis=0), isotonic=True)
        iso_cuts = search_cuts(_cut_dice(per_image, iso.table()))[1]
        iso_lut = np.rint(iso.table() * 255).astype(np.int64)
        fitted[f] = (cal_all, cal_band, raw_cuts, cal_cuts, lut, iso_cuts, iso_lut)
        for r in (0, 1):
            other = sum(joint[g][r] for g in folds if g != f)
            rate = other[1] / np.maximum(other[0] + other[1], 1)
            cell_points[r].append((rate, joint[f][r][1], joint[f][r][0]))
        for s in (by_name[images[i]] for i in np.flatnonzero(fold_of == f)):
            q = probs.load(root / f"unc_probs_f{f}", s.image_name).astype(np.int64)
            truth = cache.get(s).masks.astype(bool)
            for c in range(NUM_CLASSES):
                region = truth[c] | (q[c] > 127)
                band = cv2.dilate(region.view(np.uint8), np.ones((33, 33), np.uint8)).astype(bool)
                errors = (
                    (q[c] > 127),
                    (q[c] > raw_cuts[c]),
                    (lut[c][q[c]] > cal_cuts[c]),
                    (iso_lut[c][q[c]] > iso_cuts[c]),
                )
                for k, on in enumerate(errors):
                    code = q[c] + LEVELS * (on != truth[c])
                    per_value[f][k, c, 0] += np.bincount(code.ravel(), minlength=2 * LEVELS).reshape(2, LEVELS)
                    per_value[f][k, c, 1] += np.bincount(code[band], minlength=2 * LEVELS).reshape(2, LEVELS)

    def quantized_entropy(p: np.ndarray) -> np.ndarray:
        return np.rint(uncertainty.entropy(p) * 255)  # as predict saves it

    def logit_distance(p: np.ndarray, cut: np.ndarray) -> np.ndarray:
        return -np.abs(logits(p) - logits((cut[:, None] + 0.5) / 255))

    values = np.tile(identity, (NUM_CLASSES, 1))
    scores = {  # name: (error rule, fold -> (29, 256) score per class and raw value)
        "entropy (error at 0.5)": (0, lambda f: quantized_entropy(values)),
        "entropy of Platt-calibrated probabilities, fit on all pixels (error at 0.5)": (
            0,
            lambda f: quantized_entropy(fitted[f][0].table()),
        ),
        "entropy of Platt-calibrated probabilities, fit on the band (error at 0.5)": (
            0,
            lambda f: quantized_entropy(fitted[f][1].table()),
        ),
        "entropy (error at searched cuts)": (1, lambda f: quantized_entropy(values)),
        "logit distance to the searched cut (error at searched cuts)": (
            1,
            lambda f: logit_distance(values, fitted[f][2]),
        ),
        "entropy of calibrated probabilities (error at cuts searched after calibration)": (
            2,
            lambda f: quantized_entropy(fitted[f][4] / 255),
        ),
        "logit distance to the cut searched after calibration (error there)": (
            2,
            lambda f: logit_distance(fitted[f][4] / 255, fitted[f][3]),
        ),
        "entropy of isotonic-calibrated probabilities (error at cuts searched after calibration)": (
            3,
            lambda f: quantized_entropy(fitted[f][6] / 255),
        ),
    }
    out["auroc"] = {}
    for m, c in counts.items():
        if c.sum() == 0:
            continue
        out["auroc"][m] = {"all": auroc(c[0, 1], c[0, 0]), "band": auroc(c[1, 1], c[1, 0])}
        print(f"AUROC {m}: all pixels {out['auroc'][m]['all']:.4f}, band {out['auroc'][m]['band']:.4f}")
    for name, (rule, score_of) in scores.items():
        row = {}
        for r, region in ((0, "all"), (1, "band")):
            parts = [(score_of(f), per_value[f][rule, :, r, 1], per_value[f][rule, :, r, 0]) for f in folds]
            row[region] = auroc_scores(*(np.concatenate([x.ravel() for x in xs]) for xs in zip(*parts)))
        out["auroc"][name] = row
        print(f"AUROC {name}: all pixels {row['all']:.4f}, band {row['band']:.4f}", flush=True)
    out["auroc"]["cell error rate"] = {
        region: auroc_scores(*(np.concatenate(x) for x in zip(*cell_points[r])))
        for r, region in ((0, "all"), (1, "band"))
    }
    print(
        f"AUROC cell error rate: all pixels {out['auroc']['cell error rate']['all']:.4f}, "
        f"band {out['auroc']['cell error rate']['band']:.4f}"
    )
    (root / f"calibration_bench_{args.fit_on}.json").write_text(json.dumps(out, indent=1))
    worst = sorted(CLASSES, key=lambda n: -out["a"]["per_class"][n]["ece_band_before"])[:6]
    print("| class | T (a) | ECE band before | after | T (b) | ECE band before | after |")
    print("|---|---|---|---|---|---|---|")
    for n in worst:
        ra, rb = out["a"]["per_class"][n], out["b"]["per_class"][n]
        print(
            f"| {n} | {ra['temperature']:.2f} | {ra['ece_band_before']:.4f} | {ra['ece_band_after']:.4f} | "
            f"{rb['temperature']:.2f} | {rb['ece_band_before']:.4f} | {rb['ece_band_after']:.4f} |"
        )


if __name__ == "__main__":
    main()
