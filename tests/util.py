"""Small hand-made datasets in the competition layout, for tests that must not depend on synth."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import types
from pathlib import Path

import cv2
import numpy as np
import torch

from boneseg import CLASSES, probs
from boneseg.cli import main
from boneseg.data.masks import build_sample
from boneseg.metrics import dice, per_class
from boneseg.submission import read_submission


def square_polygons(size: int, flip: bool = False) -> dict[str, list[list[int]]]:
    """29 small overlapping squares laid out like a hand (thumb left unless `flip`)."""
    polys = {}
    step = size // 8
    for i, name in enumerate(CLASSES):
        x = (i % 6) * step + step // 2
        y = (i // 6) * step + step // 2
        if flip:
            x = size - x - step
        polys[name] = [[x, y], [x + step + 2, y], [x + step + 2, y + step + 2], [x, y + step + 2]]
    return polys


def write_label(path: Path, polygons: dict, filename: str = "x.png") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    anns = [
        {"id": f"a{i}", "type": "poly_seg", "attributes": {}, "points": pts, "label": name}
        for i, (name, pts) in enumerate(polygons.items())
    ]
    path.write_text(json.dumps({"annotations": anns, "filename": filename, "metadata": {}}))


def write_dataset(root: Path, patients: int = 2, size: int = 64, test_patients: int = 1) -> Path:
    """ID001.. with two images each (right and left hand) + labels; test patients after them."""
    rng = np.random.default_rng(0)
    for p in range(1, patients + test_patients + 1):
        split = "train" if p <= patients else "test"
        for k, flip in enumerate((False, True)):
            stem = f"image{1661000000000 + p * 10 + k}"
            img = (rng.random((size, size)) * 255).astype(np.uint8)
            img_path = root / split / "DCM" / f"ID{p:03d}" / f"{stem}.png"
            img_path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(img_path), img)
            if split == "train":
                write_label(
                    root / split / "outputs_json" / f"ID{p:03d}" / f"{stem}.json",
                    square_polygons(size, flip),
                    f"{stem}.png",
                )
    return root


def tiny_config(data: Path, out: Path, **extra) -> dict:
    """A training config for a tiny real model (64 px, slim decoder, CPU, workers 0); `extra` overrides."""
    cfg = {
        "data": str(data),
        "out": str(out),
        "arch": "unet",
        "encoder": "resnet18",
        "size": 64,
        "epochs": 1,
        "batch_size": 2,
        "encoder_weights": "none",
        "device": "cpu",
        "workers": 0,
        "seed": 0,
        "lr": 3e-3,
        "cache_dir": str(Path(out).parent / "cache"),
        "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]},
    }
    cfg.update(extra)
    return cfg


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
"""Debian's Chromium (CI installs it); browser tests skip without it."""


@contextlib.contextmanager
def browse(index: Path):
    """Open `index` from file:// in headless Chromium via playwright: yields (page, console errors, request URLs)."""
    import pytest

    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (CI installs Debian's chromium package)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the [test] extra")
    errors: list[str] = []
    requests: list[str] = []
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(index.as_uri())
            page.wait_for_selector("body[data-ready=true]", state="attached")
            yield page, errors, requests
        finally:
            browser.close()


def csv_dice(csv, samples) -> dict[str, float]:
    """Competition Dice per class of a submission CSV against the samples' labels."""
    sub = read_submission(csv)
    scores = []
    for s in samples:
        truth = build_sample(s).masks
        scores.append(dice(sub.masks(s.image_name, truth.shape[1:]), truth))
    return per_class(np.stack(scores))


class FakeRun:
    def __init__(self):
        self.logged, self.finished = [], False

    def log(self, values, step=None):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def fake_wandb(key):
    mod = types.ModuleType("wandb")
    mod.api = types.SimpleNamespace(api_key=key)
    mod.runs = []

    def init(**kw):
        run = FakeRun()
        run.kwargs, run.id = kw, kw.get("id") or f"run-{len(mod.runs)}"
        mod.runs.append(run)
        return run

    mod.init = init
    mod.Image = lambda array: ("image", np.asarray(array).shape)
    return mod


TINY = [
    "--arch",
    "unet",
    "--encoder",
    "resnet18",
    "--size",
    "64",
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--encoder-weights",
    "none",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--aug",
    "none",
    "--folds",
    "2",
]


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(*args) -> tuple[int, str]:
    """Run the CLI in-process without pytest's capture fixtures (usable in module-scoped fixtures): (exit code,
    stderr); stdout is discarded."""
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def error_line(err: str) -> str:
    """The single `Error:` line (and proof that there is no traceback)."""
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.startswith("Error: ")]
    assert len(lines) == 1, err
    return lines[0]


# train's options for a tiny run, leaving --epochs at train's default (TINY without its --epochs)
TRAIN_ARGS = [*TINY[: TINY.index("--epochs")], *TINY[TINY.index("--epochs") + 2 :]]


def make_checkpoint(path: Path, seed: int = 0, **extra) -> Path:
    """A freshly built tiny model saved as a boneseg checkpoint (config as training writes it)."""
    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import save_checkpoint

    config = {
        "arch": "unet",
        "encoder": "resnet18",
        "size": 64,
        "in_channels": 1,
        "channels": "gray",
        "unify_side": None,
        **extra,
    }
    torch.manual_seed(seed)
    model = build_model(config)
    save_checkpoint(path, {"config": config, "model": model.state_dict(), "epoch": 0, "step": 0, "metrics": {}})
    return path


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_probs(folder: Path, samples, blur: int) -> Path:
    """A probability folder like `oof --save-probs` writes: each image's labels, softened (blurred)."""
    import cv2

    for s in samples:
        masks = build_sample(s).masks
        q = np.zeros((len(CLASSES), *build_sample(s).image.shape), np.uint8)
        if masks is not None:
            q = np.stack([cv2.blur(m.astype(np.uint8) * 255, (blur, blur)) for m in masks])
        else:  # a test image: a box over its left half for every class
            q[:, :, : q.shape[2] // 2] = 200
        probs.save(folder, s.image_name, q)
    probs.write_manifest(folder, [s.image_name for s in samples], ["made-up"])
    return folder


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
