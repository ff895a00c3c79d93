"""Distillation end to end on the phantom: best single model vs the selected ensemble vs its student.

python benchmarks/bench_distill.py --work /tmp/distill-bench [--epochs 20] [--patients 32]

The three-variant, three-fold recipe of docs/select.md, scaled down for a shared 2-core CPU: a phantom of
32 train patients at 256² (2 test patients), unet/resnet18 at 96², 20 epochs, hands mirrored to the right;
variants `a` (bce+dice), `b` (another seed), `c` (Dice loss alone), each on 3 folds; `oof --save-probs`
per variant; `select` a soft per-class plan; then `distill` one student per fold (the best single
variant's settings) on the plan's OOF probabilities (and the test images' as soft pseudo-labels), and
`oof` of the students. Prints (and writes WORK/results.json): OOF Dice per class and mean of the best
single variant, the selected ensemble and the student, and predict time per image (the 64 train images,
one thread, model loading included, the fastest of two runs). Every step is a `boneseg` command; a step
whose output exists is skipped, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"a": [], "b": ["--seed", "1"], "c": ["--loss", "dice"]}
FOLDS = 3
CONFIG = {
    "arch": "unet",
    "encoder": "resnet18",
    "model_kwargs": {"decoder_channels": [128, 64, 32, 16, 16]},
    "encoder_weights": None,
    "size": 96,
    "batch_size": 4,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "warmup": 1,
    "scheduler": "cosine",
    "loss": "bce+dice",
    "aug": "none",
    "unify_side": "R",
}


def boneseg(*args: str, out: Path | None = None) -> float:
    """Run one command (skipped when `out` exists); returns its wall time in seconds."""
    if out is not None and out.exists():
        return 0.0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    t0 = time.perf_counter()
    print("$ boneseg " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "boneseg", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def analyze(csv: Path, data: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    text = subprocess.run(
        [sys.executable, "-m", "boneseg", "analyze", str(csv), "--gt", str(data), "--json"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(text)


def parallel(jobs: list, n: int = 3) -> None:
    """Run `boneseg` calls (argument tuples with their `out`) `n` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(boneseg, *args, out=out) for args, out in jobs]:
            f.result()


def teachers(work: Path, epochs: int, patients: int) -> tuple[Path, Path]:
    """Phase 1: data, folds, the nine variant runs, their OOF and test probabilities, the soft plan."""
    data, splits = work / "data", work / "splits3.json"
    work.mkdir(parents=True, exist_ok=True)
    boneseg("synth", str(data), "--patients", str(patients), "--test-patients", "2", "--size", "256", out=data)
    boneseg("split", str(data), "--folds", str(FOLDS), "-o", str(splits), out=splits)
    config = work / "config.json"
    config.write_text(json.dumps(dict(CONFIG, epochs=epochs, val_every=epochs, save_every=epochs)))
    jobs = []
    for k in range(FOLDS):
        for v, extra in VARIANTS.items():
            run = work / "runs" / f"{v}_f{k}"
            args = ("train", str(data), "--config", str(config), "--splits", str(splits), "--fold", str(k),
                    "--workers", "0", "--device", "cpu", *extra, "--out", str(run))  # fmt: skip
            jobs.append((args, run / "best.pt"))
    parallel(jobs)
    for v in VARIANTS:
        runs = [str(work / "runs" / f"{v}_f{k}") for k in range(FOLDS)]
        boneseg("oof", *runs, "-o", str(work / f"oof_{v}.csv"), "--save-probs", str(work / f"oof_{v}"),
                "--device", "cpu", out=work / f"oof_{v}")  # fmt: skip
        ms = [x for r in runs for x in ("-m", r)]
        boneseg("predict", str(data), *ms, "-o", str(work / f"test_{v}.csv"), "--save-probs",
                str(work / f"test_{v}"), "--device", "cpu", out=work / f"test_{v}")  # fmt: skip
    plan = work / "plan_soft.json"
    boneseg("select", *[str(work / f"oof_{v}") for v in VARIANTS], "--gt", str(data), "--splits", str(splits),
            "--tune-thresholds", "-o", str(plan), out=plan)  # fmt: skip
    return data, plan


STUDENTS = {  # name -> distill options
    "s": ["--teacher-weight", "0.5"],
    "s2": ["--teacher-weight", "0.2"],
}


def students(work: Path, data: Path, plan: Path, best: str) -> None:
    """Phase 2: one student per fold with the best variant's settings, taught by the plan."""
    splits, config = work / "splits3.json", work / "config.json"
    tests = [x for v in VARIANTS for x in ("--teacher-test", str(work / f"test_{v}"))]
    jobs = []
    for name, extra in STUDENTS.items():
        for k in range(FOLDS):
            run = work / "runs" / f"{name}_f{k}"
            args = ("distill", str(data), "--config", str(config), "--splits", str(splits), "--fold", str(k),
                    "--workers", "0", "--device", "cpu", *VARIANTS[best], "--teacher", str(plan), *tests, *extra,
                    "--out", str(run))  # fmt: skip
            jobs.append((args, run / "best.pt"))
    parallel(jobs)
    for name in STUDENTS:
        runs = [str(work / "runs" / f"{name}_f{k}") for k in range(FOLDS)]
        boneseg("oof", *runs, "-o", str(work / f"oof_{name}.csv"), "--device", "cpu", out=work / f"oof_{name}.csv")


def predict_seconds(work: Path, data: Path, models: list[str], repeats: int = 2) -> float:
    """Seconds per image of `predict` over the train images (CPU, one thread), model loading included; the
    fastest of `repeats` runs (the machine is shared)."""
    images = sorted((data / "train" / "DCM").rglob("*.png"))
    ms = [x for m in models for x in ("-m", m)]
    out = work / f"timing-{os.getpid()}.csv"
    best = float("inf")
    for _ in range(repeats):
        best = min(best, boneseg("predict", str(data / "train" / "DCM"), *ms, "-o", str(out), "--device", "cpu"))
        out.unlink()
    return best / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patients", type=int, default=32)
    ap.add_argument("--teachers-only", action="store_true")
    args = ap.parse_args()
    work = args.work
    data, plan = teachers(work, args.epochs, args.patients)
    if args.teachers_only:
        return
    scores = {v: analyze(work / f"oof_{v}.csv", data) for v in VARIANTS}
    best = max(scores, key=lambda v: scores[v]["mean_dice"])
    boneseg("ensemble", *[str(work / f"oof_{v}") for v in VARIANTS], "--per-class", str(plan),
            "-o", str(work / "oof_ensemble.csv"), out=work / "oof_ensemble.csv")  # fmt: skip
    students(work, data, plan, best)
    plan_doc = json.loads(plan.read_text())
    used = [v for i, v in enumerate(VARIANTS) if any(w[i] for w in plan_doc["per_class"].values())]
    rows = {
        f"best single ({best})": (scores[best], [str(work / "runs" / f"{best}_f0")]),
        f"selected ensemble ({'+'.join(used)})": (
            analyze(work / "oof_ensemble.csv", data),
            [str(work / "runs" / f"{v}_f0") for v in used],
        ),
    }
    for name in STUDENTS:
        rows[f"student {name} ({' '.join(STUDENTS[name])})"] = (
            analyze(work / f"oof_{name}.csv", data),
            [str(work / "runs" / f"{name}_f0")],
        )
    results = {}
    for label, (score, models) in rows.items():
        results[label] = {
            "mean_dice": score["mean_dice"],
            "per_class_dice": score["per_class_dice"],
            "networks": len(models),
            "predict_s_per_image": predict_seconds(work, data, models),
        }
    single, ens = (results[k]["mean_dice"] for k in list(results)[:2])
    for label in list(results)[2:]:
        results[label]["recovered"] = (results[label]["mean_dice"] - single) / (ens - single) if ens != single else None
    (work / "results.json").write_text(json.dumps(results, indent=1))
    classes = list(next(iter(results.values()))["per_class_dice"])
    print("| class | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for c in classes:
        print(f"| {c} | " + " | ".join(f"{r['per_class_dice'][c]:.4f}" for r in results.values()) + " |")
    print("| **mean** | " + " | ".join(f"**{r['mean_dice']:.4f}**" for r in results.values()) + " |")
    print("| networks | " + " | ".join(str(r["networks"]) for r in results.values()) + " |")
    print("| predict s/image | " + " | ".join(f"{r['predict_s_per_image']:.3f}" for r in results.values()) + " |")
    for label, r in results.items():
        if "recovered" in r:
            print(f"{label}: recovers {r['recovered']:.0%} of the ensemble's gain over the best single model")


if __name__ == "__main__":
    main()
