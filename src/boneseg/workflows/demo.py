"""`boneseg demo`: the whole pipeline on a synthetic set, sized for a laptop-class CPU.

synth -> split -> train -> TTA choice on the validation fold -> predict (validation fold and test set)
-> analyze -> report -> overlay, all through the library functions the commands use, with every output under one
folder and a ``summary.json`` holding the validation Dice. The settings (`SETTINGS`, `QUICK`) and the
reasons for them are in ``docs/demo.md``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from boneseg.classes import CLASSES
from boneseg.errors import OutputExistsError, UsageError, suggest
from boneseg.io import hold, write_json
from boneseg.progress import SILENT, Reporter

SETTINGS: dict = {
    "patients": 48,  # train patients (2 images each): more distinct hands instead of augmentation
    "test_patients": 2,  # test patients for the submission CSV
    "size": 256,  # side of the synthetic images (the Dice is measured at this size)
    "train_size": 160,  # side the model sees; predictions are resized back to `size`
    "folds": 8,  # 6 validation patients (12 images), 84 training images
    "fold": 0,
    "arch": "unet",
    "encoder": "resnet18",
    "model_kwargs": {"decoder_channels": [128, 64, 32, 16, 16]},
    "encoder_weights": None,  # offline, no downloads
    "epochs": 60,  # 21 steps per epoch: 1260 optimizer steps
    "batch_size": 4,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "warmup": 1,
    "scheduler": "cosine",
    "loss": "bce+dice",
    "aug": "none",
    "unify_hands": "R",
    "val_every": 10,  # the best epoch of the every-5 runs (40) is validated too: same Dice, half the checks
    "save_every": 30,  # last.pt (with optimizer state, ~140 MB) every 30 epochs instead of every epoch
    "tta": ["none", "scale"],  # candidate policies scored on the validation fold; the best predicts
    "tta_scales": [1.0, 1.25],  # the views of ``scale``
    # one torch thread: a Dice that does not depend on the core count (each thread count sums in its own
    # order), and a steady ~7 s epoch whether or not other work shares the CPU (two threads: 4.3 s quiet, 9-12 s beside
    # one busy process); None: `default_threads()`
    "threads": 1,
}
"""The full demo: 8-9 minutes on a quiet 2-core CPU, 11-12 at load 5-8; ``docs/demo.md`` has the figures."""

QUICK: dict = {
    **SETTINGS,
    "patients": 4,
    "test_patients": 1,
    "size": 128,
    "train_size": None,
    "folds": 4,
    "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]},
    "epochs": 2,
    "batch_size": 4,
    "warmup": 0,
    "val_every": 1,
}
"""`--quick`: every step end to end in seconds (it checks the plumbing, not the Dice)."""

STEPS = ("synth", "split", "train", "tta", "predict", "analyze", "report", "overlay")
OVERLAY = "overlay.png"
OVERLAY_SIDE = 768
"""The demo's overlay shows the test image enlarged to at least this side, with a legend beside it."""


def settings_for(quick: bool = False, overrides: Mapping | None = None) -> dict:
    """The demo settings (`QUICK` or `SETTINGS`) with `overrides` applied.

    Raises:
        UsageError: an override names no setting, or ``threads`` is not a positive integer.
    """
    base = dict(QUICK if quick else SETTINGS)
    for key, value in (overrides or {}).items():
        if key not in base:
            raise UsageError(f"unknown demo setting {key!r}{suggest(key, base)}")
        base[key] = value
    if base["threads"] is not None and (not isinstance(base["threads"], int) or base["threads"] < 1):
        raise UsageError(f"--threads must be at least 1, got {base['threads']}")
    return base


PREVIOUS = ".previous-demo"
"""Inside `out`: what a ``--force`` demo replaces, kept until the new demo has finished (``summary.json``)."""


def check_out(out: str | os.PathLike, force: bool) -> Path:
    """Refuse a non-empty `out` unless `force`; reads only.

    Raises:
        OutputExistsError: `out` is a file, or a non-empty folder without `force`.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"--out {out}: folder exists and is not empty (use --force to start over)")
    return out


def _set_aside(out: Path) -> None:
    """Move what `out` holds into ``out/.previous-demo`` (renames only: no space needed, nothing deleted)."""
    out.mkdir(parents=True, exist_ok=True)
    children = sorted(out.iterdir())
    if children:
        (out / PREVIOUS).mkdir()
        for child in children:
            child.rename(out / PREVIOUS / child.name)


def _restore(out: Path, finished: bool) -> None:
    """A finished demo drops what it replaced; an unfinished one (failed, or killed: the next demo on `out`
    calls this) is removed and the previous content put back."""
    previous = out / PREVIOUS
    if finished:
        shutil.rmtree(previous, ignore_errors=True)
        return
    for child in out.iterdir() if out.is_dir() else []:
        if child.name != PREVIOUS:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    if previous.is_dir():
        for child in sorted(previous.iterdir()):
            child.rename(out / child.name)
        previous.rmdir()


def default_threads() -> int:
    """One thread per CPU the process may use, at least one.

    On a quiet two-core machine two threads make a training step 1.4-1.8x faster than one; on a machine
    busy with other work use fewer (``--threads 1``): OpenMP threads spin-wait for each other when a core
    is taken away; see ``docs/demo.md``.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with `n` torch (and OpenCV) threads (None: `default_threads()`); restores the old counts."""
    import cv2
    import torch

    n = max(1, int(n or default_threads()))
    old, old_cv = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)
        cv2.setNumThreads(old_cv)


class _Steps:
    """Reports a numbered header per step and records its wall time."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        self.reporter.message(f"-- [{STEPS.index(name) + 1}/{len(STEPS)}] {name}: {what}")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.reporter.message(f"{name} done in {self.seconds[name]:.1f}s")


def run_demo(
    out: str | os.PathLike,
    seed: int = 0,
    quick: bool = False,
    force: bool = False,
    reporter: Reporter = SILENT,
    overrides: Mapping | None = None,
) -> dict:
    """Run the whole pipeline on a synthetic dataset under `out`; returns the summary (also ``summary.json``).

    Args:
        out: output folder (``data/``, ``splits.json``, ``run/``, ``val.csv``, ``submission.csv``,
            ``analysis/``, ``report/``, ``overlay.png``, ``summary.json``).
        seed: seeds the dataset, the folds, the initialisation and the sample order; the same seed gives
            the same Dice on one machine (same library builds; another machine agrees to about 1e-3).
        quick: tiny sizes and two epochs (a plumbing check in seconds; the Dice is meaningless).
        force: replace a non-empty `out` (its old content is kept until the new demo has finished).
        reporter: step headers, progress and epoch lines (`boneseg.progress`).
        overrides: replace individual settings (keys of `SETTINGS`), e.g. for tuning.

    Returns:
        ``{"mean_dice", "per_class_dice", "train_val_dice", "tta", "seconds", "settings", "seed", …}``.

    Raises:
        OutputExistsError: `out` is not empty and `force` is false.
        UsageError: an unknown override, a negative `seed` or fewer than one thread (before `out` is looked at).
    """
    from boneseg.data.split import check_seed

    cfg = settings_for(quick, overrides)
    check_seed(seed)
    out = Path(out)
    with hold(out):
        if (out / PREVIOUS).is_dir():  # a --force demo killed before it finished: its predecessor comes back
            _restore(out, finished=False)
        check_out(out, force)
        made = not out.exists()
        _set_aside(out)
        try:
            summary = _run_demo(out, cfg, seed, quick, reporter)
        except BaseException:
            _restore(out, finished=False)
            if made and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise
        _restore(out, finished=True)
    return summary


def _run_demo(out: Path, cfg: dict, seed: int, quick: bool, reporter: Reporter) -> dict:
    data, splits_path, run_dir = out / "data", out / "splits.json", out / "run"
    val_csv, sub_csv = out / "val.csv", out / "submission.csv"
    step = _Steps(reporter)
    started = time.perf_counter()
    with torch_threads(cfg["threads"]) as threads:
        with step("synth", f"{cfg['patients']} + {cfg['test_patients']} patients at {cfg['size']}²"):
            from boneseg.data.synth import synthesize

            synthesize(
                data,
                patients=cfg["patients"],
                test_patients=cfg["test_patients"],
                size=cfg["size"],
                seed=seed,
                reporter=reporter,
            )
        with step("split", f"{cfg['folds']} patient-grouped folds, validating on fold {cfg['fold']}"):
            from boneseg.data.layout import discover
            from boneseg.data.split import fold_samples, make_splits

            samples = discover(data)
            splits = make_splits(samples, folds=cfg["folds"], seed=seed, stratify="side")
            write_json(splits_path, splits)
            _, val_samples = fold_samples(samples, splits, cfg["fold"])
        with step(
            "train",
            f"{cfg['arch']}/{cfg['encoder']} at {cfg['train_size'] or cfg['size']}², {cfg['epochs']} epochs, "
            f"{threads} thread(s)",
        ):
            from boneseg.engine.train import train

            trained = train(_train_config(cfg, data, splits_path, run_dir, seed), reporter)
        with step("tta", f"policies {', '.join(cfg['tta'])} on the {len(val_samples)} validation images"):
            from boneseg.inference import PredictOptions, Predictor
            from boneseg.workflows.validation import evaluate_policies

            predictor = Predictor.from_checkpoints([run_dir], device="cpu")
            options = PredictOptions(workers=0)
            report = evaluate_policies(
                data,
                predictor,
                options=options,
                policies=cfg["tta"],
                samples=val_samples,
                scales=cfg["tta_scales"],
                search=None,
                reporter=reporter,
            )
            for name, scores in report.policies.items():
                best = "  <- best: predicts" if name == report.best else ""
                reporter.message(
                    f"   {name:<{max(map(len, report.policies))}}  mean Dice {scores['mean_dice']:.4f}{best}"
                )
        with step("predict", f"validation fold and test set with TTA {report.best}"):
            from boneseg.inference import predict

            opts = {"tta": report.best.split(":")[-1], "scales": cfg["tta_scales"], "reporter": reporter}
            predict(val_samples, predictor, val_csv, options=options, **opts)
            test = predict(data, predictor, sub_csv, options=options, **opts)
        with step("analyze", "Dice per class and image of the validation predictions"):
            from boneseg.workflows.analysis import analyze, write_plots

            result = analyze([val_csv], data, fold=cfg["fold"], splits=splits_path, reporter=reporter)
            write_plots(result, out / "analysis")
        with step("report", "the validation predictions as a page to open in a browser"):
            from boneseg.workflows.report import REPORT_DIR, write_report

            write_report(result, out / REPORT_DIR, reporter=reporter)
        with step("overlay", "first test image with its predicted masks"):
            _overlay(data, sub_csv, out / OVERLAY)
    per_class = result.per_class_dice(0)
    assert per_class is not None  # analyze was given the labels
    from boneseg.runs.files import read_metrics

    best_line = next((h for h in read_metrics(run_dir) if h.get("epoch") == trained["best_epoch"]), {})
    summary = {
        "mean_dice": float(per_class.mean()),
        "per_class_dice": {c: float(v) for c, v in zip(CLASSES, per_class)},
        "train_val_dice": trained["best_val_dice"],
        "train_val_dice_per_class": best_line.get("val_dice_per_class"),
        "best_epoch": trained["best_epoch"],
        "steps": trained["steps"],
        "tta": {"best": report.best, "policies": {k: v["mean_dice"] for k, v in report.policies.items()}},
        "images": {"train": trained["train_images"], "val": len(val_samples), "test": test.images},
        "seconds": {**step.seconds, "total": round(time.perf_counter() - started, 2)},
        "threads": threads,
        "seed": seed,
        "quick": quick,
        "settings": cfg,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "openmp": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ},
        },
        "files": {
            "data": "data",
            "splits": "splits.json",
            "run": "run",
            "val_csv": "val.csv",
            "submission": "submission.csv",
            "analysis": "analysis",
            "report": f"{REPORT_DIR}/index.html",
            "overlay": OVERLAY,
        },
    }
    write_json(out / "summary.json", summary)
    return summary


def _train_config(cfg: dict, data: Path, splits: Path, run_dir: Path, seed: int) -> dict:
    keys = (
        "arch",
        "encoder",
        "fold",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup",
        "scheduler",
        "loss",
        "aug",
        "unify_hands",
        "val_every",
        "save_every",
        "model_kwargs",
        "encoder_weights",
    )
    return {
        **{k: cfg[k] for k in keys},
        "data": str(data),
        "out": str(run_dir),
        "splits": str(splits),
        "size": cfg["train_size"] or cfg["size"],
        "seed": seed,
        "device": "cpu",
        "workers": 0,
    }


def _overlay(data: Path, sub_csv: Path, path: Path) -> None:
    from boneseg.data.layout import find_images, read_image
    from boneseg.plots import overlay_legend, save_png
    from boneseg.submission import read_submission

    sample = find_images(data)[0]
    image = read_image(sample.image)
    masks = read_submission(sub_csv).masks(sample.image_name, image.shape)
    save_png(overlay_legend(image, masks, min_side=OVERLAY_SIDE, title="predicted bones"), path)


def format_seconds(seconds: Mapping) -> str:
    """``synth 3.1s · split 0.1s · …`` from a summary's ``seconds``."""
    return " · ".join(f"{k} {v:.1f}s" for k, v in seconds.items())


__all__ = [
    "OVERLAY",
    "OVERLAY_SIDE",
    "QUICK",
    "SETTINGS",
    "STEPS",
    "check_out",
    "default_threads",
    "format_seconds",
    "run_demo",
    "settings_for",
    "torch_threads",
]
