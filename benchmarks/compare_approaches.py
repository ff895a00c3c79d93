"""The comparison table of docs/approaches.md: every approach there on one synthetic split, one budget.

    OMP_NUM_THREADS=1 python benchmarks/compare_approaches.py [WORKDIR]   # ~25 min on a shared 2-core machine

Synthetic hands (``boneseg synth``, 8 patients at 256²), one patient-grouped split (4 folds, fold 0 =
2 patients / 4 images for validation), a tiny U-Net/ResNet-18 at 96 px, the same epochs, seed and
learning rate for every option (96 px, 25 epochs). Each run is predicted at full resolution on the train images with
``boneseg predict`` and scored on the validation fold with ``boneseg analyze --gt --fold --splits --json``.
The figures compare options relative to the baseline on synthetic data; they say nothing about the
real competition scores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BUDGET = {"arch": "unet", "encoder": "resnet18", "size": 96, "epochs": 25, "batch_size": 2, "lr": 3e-3, "seed": 0}
MODEL_KWARGS = None  # smp defaults

# name -> (train options, predict options, description)
APPROACHES = {
    "baseline": ([], [], "gray input, bce+dice"),
    "channels clahe3": (["--channels", "clahe3"], [], "gray + CLAHE 2 + CLAHE 4"),
    "channels gray+sobel": (["--channels", "gray+sobel"], [], "gray + Sobel magnitude"),
    "meta aux": (["--meta", "aux"], [], "aux heads: age/sex/height/weight/side, weight 0.1"),
    "meta film": (["--meta", "film"], [], "FiLM on decoder features"),
    "boundary head": (["--boundary-head", "0.5"], [], "outer-edge head, weight 0.5, no sharpening"),
    "boundary head + sharpen": (None, [], "same run, boundary_sharpen 0.5 at inference"),
    "loss +boundary": (["--loss", "bce+dice+0.5*boundary"], [], "edge-band-weighted BCE"),
    "loss +dtbce": (["--loss", "bce+dice+0.5*dtbce"], [], "distance-weighted BCE (cached maps)"),
    "postprocess rule": (None, [], "baseline + per-class rule chosen on val (fit_postprocess)"),
    "wrist second stage": (None, [], "baseline + wrist model (carpals replaced)"),
}


def sh(args: list[str], **kw) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", BONESEG_DEBUG="1")
    res = subprocess.run([sys.executable, "-m", "boneseg", *args], capture_output=True, text=True, env=env, **kw)
    if res.returncode:
        raise RuntimeError(f"boneseg {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res.stdout


def main(work: str | os.PathLike = "/tmp/boneseg-approaches") -> list[dict]:
    from boneseg.classes import CARPALS

    work = Path(work)
    data = work / "data"
    if not data.exists():
        sh(["synth", str(data), "--patients", "8", "--test-patients", "1", "--size", "256", "--seed", "0"])
    splits = work / "splits.json"
    if not splits.exists():
        sh(["split", str(data), "--folds", "4", "--seed", "0", "-o", str(splits)])
    base = [
        "--arch",
        BUDGET["arch"],
        "--encoder",
        BUDGET["encoder"],
        "--size",
        str(BUDGET["size"]),
        "--epochs",
        str(BUDGET["epochs"]),
        "--batch-size",
        str(BUDGET["batch_size"]),
        "--lr",
        str(BUDGET["lr"]),
        "--seed",
        str(BUDGET["seed"]),
        "--encoder-weights",
        "none",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--splits",
        str(splits),
        "--fold",
        "0",
        "--aug",
        "none",
        "--cache-dir",
        str(work / "cache"),
    ]

    def run(name, opts):
        out = work / "runs" / name.replace(" ", "_").replace("+", "p")
        if not (out / "best.pt").exists():
            t0 = time.time()
            sh(["train", str(data), *base, *opts, "--out", str(out), "--force"])
            (out / "seconds.txt").write_text(f"{time.time() - t0:.1f}")
        return out

    from boneseg.inference import PredictOptions
    from boneseg.runs.checkpoint import load_checkpoint, save_checkpoint
    from boneseg.workflows.validation import fit_postprocess

    def derived(src, name, make):
        d = work / "runs" / name
        if not (d / "best.pt").exists():
            d.mkdir(parents=True, exist_ok=True)
            make(d)
        return d

    rows = []
    for name, (train_opts, pred_opts, desc) in APPROACHES.items():
        if name == "wrist second stage":
            first = run("baseline", [])
            wrist = run("wrist", ["--wrist"])
            models, pred_opts = [str(first)], ["--wrist-model", str(wrist)]
            seconds = sum(float((r / "seconds.txt").read_text()) for r in (first, wrist))
        elif name == "boundary head + sharpen":
            src = run("boundary head", ["--boundary-head", "0.5"])
            state = load_checkpoint(src / "best.pt")
            sharpened = dict(state, config=dict(state["config"], boundary_sharpen=0.5))
            r = derived(src, "boundary_sharpen", lambda d, state=sharpened: save_checkpoint(d / "best.pt", state))
            models, seconds = [str(r)], float((src / "seconds.txt").read_text())
        elif name == "postprocess rule":
            src = run("baseline", [])
            r = derived(
                src,
                "postprocess_rule",
                lambda d, src=src: (
                    shutil.copy(src / "best.pt", d / "best.pt"),
                    fit_postprocess(d, data, options=PredictOptions(workers=0, device="cpu")),
                ),
            )
            models, seconds = [str(r)], float((src / "seconds.txt").read_text())
        else:
            r = run(name, train_opts)
            models, seconds = [str(r)], float((r / "seconds.txt").read_text())
        csv = work / "csv" / (name.replace(" ", "_").replace("+", "p") + ".csv")
        csv.parent.mkdir(parents=True, exist_ok=True)
        pp = [] if name == "postprocess rule" else ["--postprocess", "none"]
        sh(
            [
                "predict",
                str(data / "train" / "DCM"),
                *sum((["-m", m] for m in models), []),
                *pred_opts,
                *pp,
                "--device",
                "cpu",
                "--workers",
                "0",
                "-o",
                str(csv),
                "--force",
            ]
        )
        rep = json.loads(sh(["analyze", str(csv), "--gt", str(data), "--fold", "0", "--splits", str(splits), "--json"]))
        pc = rep["per_class_dice"]
        rows.append(
            {
                "approach": name,
                "what": desc,
                "mean_dice": rep["mean_dice"],
                "carpals": sum(pc[c] for c in CARPALS) / len(CARPALS),
                "Pisiform": pc["Pisiform"],
                "train_s": round(seconds, 1),
            }
        )
    ref = rows[0]["mean_dice"]
    for r in rows:
        r["delta"] = r["mean_dice"] - ref
    return rows


if __name__ == "__main__":
    rows = main(*sys.argv[1:])
    print("| approach | what | mean Dice | Δ vs baseline | carpals | Pisiform | train s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['approach']} | {r['what']} | {r['mean_dice']:.4f} | {r['delta']:+.4f} | {r['carpals']:.4f} | "
            f"{r['Pisiform']:.4f} | {r['train_s']} |"
        )
