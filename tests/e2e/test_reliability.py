"""Reliability and security across commands: bad input, interruptions, untrusted files (one line, no traceback)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from util import TINY, cli, error_line, square_polygons, write_dataset, write_label

from boneseg.errors import CheckpointError, DataError


@pytest.fixture()
def data(tmp_path):
    return write_dataset(tmp_path / "data", patients=3, size=64)


def _label(data, i=0):
    return sorted((data / "train" / "outputs_json").rglob("*.json"))[i]


def _image(data, i=0):
    return sorted((data / "train" / "DCM").rglob("*.png"))[i]


def _ann(points, label="Ulna"):
    return {"id": "x", "type": "poly_seg", "attributes": {}, "points": points, "label": label}


def _break(kind: str, data: Path) -> tuple[Path, str]:
    """Damage the dataset one way; returns (culprit file, expected message fragment)."""
    if kind == "missing folder":
        return data / "nope", "dataset folder not found"
    if kind == "no train/DCM":
        import shutil

        shutil.rmtree(data / "train" / "DCM")
        return data, "no train/DCM folder"
    if kind == "image without label":
        _label(data).unlink()
        return _image(data), "image(s) without a label"
    if kind == "label without image":
        _image(data).unlink()
        return _label(data), "label(s) without an image"
    if kind == "truncated PNG":
        p = _image(data)
        p.write_bytes(p.read_bytes()[:60])
        return p, "unreadable or corrupt image"
    if kind == "malformed JSON":
        p = _label(data)
        p.write_text(p.read_text()[:-20])
        return p, "malformed JSON"
    doc_of = {
        "unknown label": ([_ann([[1, 1], [9, 1], [9, 9]], "Pisiforme")], "unknown class 'Pisiforme'"),
        "polygon with 2 points": ([_ann([[1, 1], [9, 9]])], "needs at least 3"),
        "points outside the image": ([_ann([[1, 1], [90, 1], [9, 9]])], "outside the 64x64 image"),
        "duplicate class polygon": ([_ann([[1, 1], [9, 1], [9, 9]])] * 2, "duplicate polygon for class 'Ulna'"),
    }
    if kind in doc_of:
        anns, fragment = doc_of[kind]
        p = _label(data)
        p.write_text(json.dumps({"annotations": anns, "filename": "x.png"}))
        return p, fragment
    if kind == "wrong image size":
        import cv2

        p = _image(data)
        cv2.imwrite(str(p), np.zeros((32, 32), np.uint8))  # labels are drawn for 64x64
        return _label(data), "outside the 32x32 image"
    raise ValueError(kind)


BAD_DATA = [
    "missing folder",
    "no train/DCM",
    "image without label",
    "label without image",
    "truncated PNG",
    "malformed JSON",
    "unknown label",
    "polygon with 2 points",
    "points outside the image",
    "duplicate class polygon",
    "wrong image size",
]


@pytest.mark.parametrize("kind", BAD_DATA)
def test_bad_data_stops_training_before_it_starts(kind, data, tmp_path, capsys):
    culprit, fragment = _break(kind, data)
    root = data if kind != "missing folder" else culprit
    code, _, err = cli(capsys, "train", root, *TINY, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache")
    line = error_line(err)
    assert code != 0 and fragment in line, line
    assert culprit.name in line or str(culprit.relative_to(tmp_path)).split("/")[-1] in line, line
    assert not (tmp_path / "run" / "last.pt").exists()


def test_skip_bad_leaves_out_and_lists(data, tmp_path, capsys):
    corrupt, _ = _break("truncated PNG", data)
    broken = sorted((data / "train" / "outputs_json").rglob("*.json"))[3]
    broken.write_text("{")
    orphan = data / "train" / "outputs_json" / "ID009" / "lonely.json"
    write_label(orphan, square_polygons(64))
    code, out, err = cli(
        capsys,
        "train",
        data,
        *TINY,
        "--max-steps",
        "1",
        "--skip-bad",
        "--json",
        "--out",
        tmp_path / "run",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert code == 0, err
    assert "left out 2 sample(s)" in err and corrupt.name in err and broken.name in err
    assert (tmp_path / "run" / "last.pt").is_file()


def test_meta_with_odd_columns_is_one_line(data, capsys):
    import pandas as pd

    pd.DataFrame({"patient?": [1], "height": [170]}).to_excel(data / "meta_data.xlsx", index=False)
    code, _, err = cli(capsys, "eda", data)
    assert code != 0 and "meta_data.xlsx: no ID column" in error_line(err)


# -- untrusted checkpoints -------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_runs_nothing(data, tmp_path, capsys):
    from boneseg.runs.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"config": {"arch": "unet"}, "model": _Evil(marker)}, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    code, _, err = cli(capsys, "predict", data, "-m", evil, "-o", tmp_path / "sub.csv")
    assert code != 0 and "evil.pt" in error_line(err)
    assert not marker.exists() and not (tmp_path / "sub.csv").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, _, err = cli(capsys, "predict", data, "-m", tmp_path / "junk.pt", "-o", tmp_path / "sub.csv")
    assert code != 0 and "junk.pt" in error_line(err)


# -- bad options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--arch", "unetp"], "did you mean 'unetpp'"),
        (["--encoder", "resnet19"], "did you mean 'resnet18'"),
        (["--loss", "bce+dicee"], "dice"),
        (["--size", "100"], "multiple of 32"),
        (["--fold", "7"], "fold"),
        (["--aug", "strnog"], "did you mean 'strong'"),
    ],
)
def test_bad_training_options(args, fragment, data, tmp_path, capsys):
    base = dict(zip(TINY[::2], TINY[1::2]))
    base.update(dict(zip(args[::2], args[1::2])))
    flat = [x for kv in base.items() for x in kv]
    code, _, err = cli(capsys, "train", data, *flat, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache")
    assert code != 0 and fragment in error_line(err)


def test_splits_file_from_another_dataset(data, tmp_path, capsys):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"folds": 2, "group_by": "patient", "assignments": {"ID777/other.png": 0}}))
    code, _, err = cli(capsys, "train", data, *TINY, "--splits", splits, "--out", tmp_path / "run")
    assert code != 0 and "another dataset" in error_line(err)


def test_unknown_tta_policy(data, tmp_path, capsys):
    code, _, err = cli(capsys, "predict", data, "-m", tmp_path / "none.pt", "--tta", "hflp")
    assert code != 0 and "hflip" in error_line(err)


# -- nothing lost ----------------------------------------------------------------------------------


def test_full_disk_is_reported_and_leaves_nothing(tmp_path, monkeypatch):
    from boneseg import io
    from boneseg.submission import SubmissionWriter

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", no_space)
    with (
        pytest.raises(DataError, match="cannot write .*sub.csv: No space left on device"),
        SubmissionWriter(tmp_path / "sub.csv") as w,
    ):
        w.write_rles("a.png", [""] * 29)
    with pytest.raises(DataError, match="No space left"):
        io.write_json(tmp_path / "x.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny trained run (1 step)."""
    from boneseg.engine.train import train

    root = tmp_path_factory.mktemp("rel")
    data = write_dataset(root / "data", patients=2, size=64, test_patients=1)
    train(
        {
            "data": str(data),
            "out": str(root / "run"),
            "arch": "unet",
            "encoder": "resnet18",
            "size": 64,
            "epochs": 1,
            "batch_size": 2,
            "encoder_weights": "none",
            "workers": 0,
            "device": "cpu",
            "aug": "none",
            "max_steps": 1,
            "folds": 2,
            "cache_dir": str(root / "cache"),
        }
    )
    return data, root / "run"


SIGNAL_ENTRY = str(Path(__file__).parent / "signal_entry.py")


def _signalled(sig: signal.Signals, point: str, after: int, *args) -> list[str]:
    """The command line of `boneseg ARGS…` that sends itself `sig` once `point` has returned `after` times."""
    return [sys.executable, SIGNAL_ENTRY, sig.name, point, str(after), *map(str, args)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_predict_leaves_no_partial_csv(checkpoint, tmp_path, sig):
    """The signal comes after the first of three images is binarised (inside the streamed CSV's writer),
    at that point however busy the machine: no race with the end of the work."""
    data, run = checkpoint
    images = tmp_path / "images"
    import cv2

    for i in range(3):
        p = images / f"img{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), np.full((64, 64), i, np.uint8))
    out = tmp_path / "sub.csv"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["predict", images, "-m", run, "-o", out, "--workers", "0", "--device", "cpu", "--tta", "hflip"]
    proc = subprocess.run(
        _signalled(sig, "boneseg.inference.run:binarize", 1, *args), capture_output=True, text=True, env=env
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".sub.csv*")), list(tmp_path.iterdir())


def test_real_signal_to_real_training_then_resume(checkpoint, tmp_path):
    """SIGINT once epoch 1's outputs are written (a real signal at a named point, not after a wait): the
    run stops there, saves last.pt and names --resume; the resume finishes the schedule."""
    data, _ = checkpoint
    run = tmp_path / "run"
    args = [
        "train",
        str(data),
        *TINY[:-4],
        "--epochs",
        "8",
        "--folds",
        "2",
        "--out",
        str(run),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        _signalled(signal.SIGINT, "boneseg.engine.train:write_outputs", 1, *args),
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 130, proc.stderr
    assert "--resume" in error_line(proc.stderr)
    from boneseg.runs.checkpoint import load_checkpoint

    saved = load_checkpoint(run / "last.pt")
    assert 0 < saved["step"] < 8 * 2
    done = subprocess.run([sys.executable, "-m", "boneseg", *args, "--resume"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == list(range(1, 9))


# -- distributed faults ----------------------------------------------------------------------------


def test_failed_rank_stops_the_others_and_the_run_resumes(tmp_path):
    data = write_dataset(tmp_path / "data", patients=4, size=64, test_patients=0)
    run = tmp_path / "run"
    train_args = [
        "train",
        str(data),
        *TINY[:-2],
        "--folds",
        "2",
        "--epochs",
        "3",
        "--batch-size",
        "1",
        "--out",
        str(run),
        "--dist-timeout",
        "1",
    ]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(  # the timeout only guards against a hang: far above the run's time at any load
        launcher + [str(Path(__file__).parent / "fault_entry.py")] + train_args,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert res.returncode != 0
    errors = [l for l in (res.stdout + res.stderr).splitlines() if l.startswith("Error: ")]
    assert "Error: [rank 1] injected fault on rank 1" in errors, errors
    assert any(l.startswith("Error: [rank 0] another rank failed or stopped responding") for l in errors), errors
    assert (run / "last.pt").is_file()  # epoch 1 finished before the fault
    res = subprocess.run(
        launcher + ["-m", "boneseg"] + train_args + ["--resume"], capture_output=True, text=True, env=env, timeout=900
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
