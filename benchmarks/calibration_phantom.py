"""Calibration and uncertainty on the phantom: the figures of docs/benchmarks.md ("Calibration on the phantom").

Given a folder prepared as docs/calibrate.md shows (``data/``, ``splits3.json``, fold runs ``runs/a_f{0,1,2}``
and ``runs/b_f{0,1,2}``, their OOF probabilities ``oof_a`` and ``oof_b``), prints:

1. per model, ``boneseg calibrate``'s figures (ECE before/after per class, cross-fitted; Dice before and with
   thresholds searched after calibration);
2. the soft vote of the two models' OOF probabilities before and after calibrating each input (each fold
   calibrated by the fit on the other folds): ECE of the mean and Dice at 0.5;
3. AUROC of each uncertainty map (``predict --save-uncertainty``: entropy, TTA views, ensemble members) against
   per-pixel error, per fold with the two fold models on their validation images.

    python benchmarks/calibration_phantom.py FOLDER [--workers N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from boneseg import probs, uncertainty
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
    vote = {"before": [], "after": []}
    for f in sorted(set(fold_of.tolist())):
        train = fold_of != f
        cal = {
            key: fit(
                np.stack([h[0 if args.fit_on == "all" else 1] for h, t in zip(per[key], train) if t]).sum(axis=0),
                platt=True,
            )
            for key in ("a", "b")
        }
        for i in np.flatnonzero(fold_of == f):
            qa, qb, truth = qa_all[i], qb_all[i], truths[i]
            before = np.rint((qa.astype(np.float64) + qb) / 2).astype(np.uint8)
            ca, cb = cal["a"].apply_quantized(qa), cal["b"].apply_quantized(qb)
            after = np.rint((ca.astype(np.float64) + cb) / 2).astype(np.uint8)
            vote["before"].append(histograms(before, truth, 16))
            vote["after"].append(histograms(after, truth, 16))
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

    # uncertainty maps against per-pixel error: each fold's two models on their validation images
    from boneseg.inference import predict

    counts = {m: np.zeros((2, 2, LEVELS)) for m in uncertainty.MAPS}  # map -> region (all, band) -> error
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
                device="cpu",
                workers=0,
                calibration="none",
                force=True,
            )
        for s in samples:
            maps = uncertainty.load(folder, s.image_name)
            q = probs.load(pfolder, s.image_name)
            truth = cache.get(s).masks.astype(bool)
            pred = q > 127
            error = (pred != truth).astype(np.int64)
            import cv2

            for c in range(NUM_CLASSES):
                region = truth[c] | pred[c]
                band = cv2.dilate(region.view(np.uint8), np.ones((33, 33), np.uint8)).astype(bool)
                for m, u in maps.items():
                    code = u[c].astype(np.int64) + LEVELS * error[c]
                    counts[m][0] += np.bincount(code.ravel(), minlength=2 * LEVELS).reshape(2, LEVELS)
                    counts[m][1] += np.bincount(code[band], minlength=2 * LEVELS).reshape(2, LEVELS)
    out["auroc"] = {}
    for m, c in counts.items():
        if c.sum() == 0:
            continue
        out["auroc"][m] = {"all": auroc(c[0, 1], c[0, 0]), "band": auroc(c[1, 1], c[1, 0])}
        print(f"AUROC {m}: all pixels {out['auroc'][m]['all']:.4f}, band {out['auroc'][m]['band']:.4f}")
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
