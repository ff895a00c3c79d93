"""Two CPU ranks with gloo under torch.distributed.run: the same `boneseg train` command trains with DDP, the
val Dice it records is the saved model's; a resume by one process is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from boneseg.engine.data import build_data, make_loader
from boneseg.engine.distributed import DistInfo
from boneseg.engine.train import evaluate, train
from boneseg.errors import UsageError
from boneseg.progress import SILENT
from boneseg.runs.checkpoint import load_model
from boneseg.runs.config import TrainConfig


def test_two_rank_gloo_training(synth_data, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "boneseg",
        "train",
        str(synth_data),
        "--arch",
        "unet",
        "--encoder",
        "resnet18",
        "--size",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--encoder-weights",
        "none",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--aug",
        "light",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--dist-timeout",
        "2",
        "--out",
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 6 training images over 2 ranks x batch 2 -> 1 step per epoch; rank 0 alone writes the files
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and [m["step"] for m in lines] == [1, 2]
    assert all(len(m["val_dice_per_class"]) == 29 for m in lines)
    assert proc.stderr.count("done: 2 epochs") == 1 and proc.stderr.count("epoch 2/2") == 1  # rank 0 only
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["step"] == 2 and last["epoch"] == 2
    assert not any(k.startswith("module.") for k in last["model"])  # the bare module's weights
    assert (out / "best.pt").is_file() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # the val Dice recorded is that of the saved model: every rank scored rank 0's BatchNorm statistics
    best = torch.load(out / "best.pt", weights_only=True)
    cfg = TrainConfig.from_saved(dict(best["config"], cache_dir=str(tmp_path / "cache"), device="cpu", workers=0))
    info = DistInfo()
    loader, _ = make_loader(build_data(cfg, info, SILENT)[1], cfg, info, train=False)
    rescored = evaluate(load_model(out / "best.pt")[0], loader, cfg, info)["val_dice"]
    assert rescored == pytest.approx(best["metrics"]["val_dice"], rel=1e-9, abs=1e-12)
    # a resume by another number of processes would take other images per step and another schedule length
    before = (out / "last.pt").read_bytes()
    with pytest.raises(UsageError, match=r"trained with 2 process\(es\), this resume has 1"):
        train({"data": str(synth_data), "out": str(out), "resume": True, "workers": 0, "device": "cpu"})
    assert (out / "last.pt").read_bytes() == before


def _torchrun_train(data, out, cache, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "boneseg"]
    cmd += ["train", str(data), "--arch", "unet", "--encoder", "resnet18", "--size", "64", "--epochs", "1"]
    cmd += ["--batch-size", "1", "--encoder-weights", "none", "--device", "cpu", "--workers", "0", "--aug", "none"]
    cmd += ["--cache-dir", str(cache), "--out", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)  # a hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_rank_resume_from_mid_epoch_records_the_uninterrupted_train_loss(synth_data, tmp_path):
    """Stopped after step 1 of 3 and resumed: every rank continues its own partial loss sum (last.pt holds
    them all), so the epoch's train_loss is the uninterrupted run's to the bit, and so are the weights."""
    cache = tmp_path / "cache"
    _torchrun_train(synth_data, tmp_path / "full", cache)
    _torchrun_train(synth_data, tmp_path / "part", cache, "--max-steps", "1")
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=True)["rank_losses"].shape == (2, 2)
    _torchrun_train(synth_data, tmp_path / "part", cache, "--resume")
    full, part = (
        [json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("full", "part")
    )
    assert [m["step"] for m in part] == [3]
    assert part[0]["train_loss"] == full[0]["train_loss"] and part[0]["val_dice"] == full[0]["val_dice"]
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=True)["model"] for r in ("full", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)
