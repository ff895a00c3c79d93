"""Fault injection over the commands: every foreseeable fault is one `Error:` line naming its culprit, with
the documented exit code (1 data, 2 usage), never an internal exception name or a worker's traceback."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from util import run_cli as cli
from util import tiny_config, write_dataset

from boneseg.errors import DataError

LEAK = re.compile(r"Error: [A-Z]\w+(Error|Exception)\b:")
TRAIN = [
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
    "--device",
    "cpu",
    "--aug",
    "none",
    "--folds",
    "2",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny dataset, one tiny untrained checkpoint and its saved probabilities, shared by every fault."""
    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("faults")
    write_dataset(root / "data", patients=2, size=64)
    cfg = tiny_config(root / "data", root / "run")
    save_checkpoint(
        root / "model.pt", {"config": cfg, "model": build_model(cfg).state_dict(), "epoch": 0, "step": 0, "metrics": {}}
    )
    assert (
        cli(
            "predict",
            root / "data",
            "-m",
            root / "model.pt",
            "-o",
            root / "sub.csv",
            "--workers",
            "0",
            "--save-probs",
            root / "probs",
        )[0]
        == 0
    )
    return root


def copy_data(base: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(base / "data", tmp / "data"))


def first(folder: Path, pattern: str) -> Path:
    return sorted(folder.rglob(pattern))[0]


def relabel(tmp: Path, base: Path, edit) -> tuple[Path, Path]:
    """A dataset copy whose first label document is `edit(doc)` (or the text `edit` returns)."""
    data = copy_data(base, tmp)
    label = first(data / "train" / "outputs_json", "*.json")
    doc = edit(json.loads(label.read_text()))
    label.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return data, label


def label_fault(edit):
    def fault(tmp, base):
        data, label = relabel(tmp, base, edit)
        return ["train", data, *TRAIN, "--workers", "0", "--out", tmp / "run", "--cache-dir", tmp / "c"], 1, label.name

    return fault


def ann0(**change):
    def edit(doc):
        doc["annotations"][0].update(change)
        return doc

    return edit


def corrupt_png(split: str, command: str):
    def fault(tmp, base):
        data = copy_data(base, tmp)
        png = first(data / split / "DCM", "*.png")
        if command == "tta":  # tta scores the checkpoint's own validation images
            from boneseg.data.layout import discover
            from boneseg.runs.run import Run

            png = Run.open(base / "model.pt").validation(discover(data))[0].image
        png.write_bytes(png.read_bytes()[:100])
        args = {
            "predict": ["predict", data, "-m", base / "model.pt", "-o", tmp / "o.csv", "--workers", "2"],
            "tta": ["tta", data, "-m", base / "model.pt"],
        }[command]
        return args, 1, png.name

    return fault


def checkpoint_fault(make):
    def fault(tmp, base):
        ckpt = tmp / "bad.pt"
        make(ckpt, base)
        return ["predict", base / "data", "-m", ckpt, "-o", tmp / "o.csv", "--workers", "0"], 1, "bad.pt"

    return fault


def without(key):
    def make(ckpt, base):
        state = torch.load(base / "model.pt", weights_only=True)
        del state["config"][key]
        torch.save(state, ckpt)

    return make


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def truncated_npz(tmp, base):
    probs = Path(shutil.copytree(base / "probs", tmp / "probs"))
    npz = first(probs, "*.npz")
    npz.write_bytes(npz.read_bytes()[:200])
    return ["ensemble", probs, base / "probs", "--vote", "soft", "-o", tmp / "o.csv"], 1, npz.name


def broken_csv(text: str):
    def fault(tmp, base):
        bad = tmp / "bad.csv"
        bad.write_text(text)
        return ["ensemble", base / "sub.csv", bad, "--vote", "hard", "-o", tmp / "o.csv"], 1, "bad.csv"

    return fault


def broken_rle(tmp, base):
    lines = (base / "sub.csv").read_text().splitlines()
    name, cls, _ = lines[1].split(",")
    lines[1] = f"{name},{cls},5 x 9"
    (tmp / "bad.csv").write_text("\n".join(lines) + "\n")
    return ["analyze", base / "sub.csv", tmp / "bad.csv"], 1, "bad.csv"


def deep_json(where: str):
    def fault(tmp, base):
        deep = tmp / "deep.json"
        deep.write_text("[" * 100_000 + "]" * 100_000)
        args = {
            "threshold": ["predict", base / "data", "-m", base / "model.pt", "-o", tmp / "o.csv", "--threshold", deep],
            "splits": ["train", base / "data", *TRAIN, "--splits", deep, "--fold", "0", "--out", tmp / "r"],
        }
        return args[where], 1, "deep.json"

    return fault


def non_utf8_name(tmp, base):
    folder = Path(os.fsdecode(bytes(tmp) + b"/imgs"))
    folder.mkdir()
    shutil.copy(first(base / "data" / "test", "*.png"), Path(os.fsdecode(bytes(folder) + b"/im\xff.png")))
    return ["predict", folder, "-m", base / "model.pt", "-o", tmp / "o.csv", "--workers", "0"], 1, "im\\udcff.png"


def existing_output(tmp, base):
    (tmp / "o.csv").write_text("keep")
    return ["predict", base / "data", "-m", base / "model.pt", "-o", tmp / "o.csv"], 1, "o.csv"


def bad_option_first(tmp, base):
    (tmp / "o.csv").write_text("keep")
    return (
        ["predict", base / "data", "-m", base / "model.pt", "-o", tmp / "o.csv", "--sliding", "--window", "48"],
        2,
        "--window",
    )


def missing_input(tmp, base):
    return ["predict", tmp / "nowhere", "-m", base / "model.pt", "-o", tmp / "o.csv"], 1, "nowhere"


def full_folder(tmp: Path) -> Path:
    """A non-empty folder (an existing output)."""
    (tmp / "full").mkdir()
    (tmp / "full" / "keep.txt").write_text("keep")
    return tmp / "full"


def existing(tmp: Path, name: str) -> Path:
    (tmp / name).write_text("{}")
    return tmp / name


def corrupt_label(command: str):
    def fault(tmp, base):
        data, label = relabel(tmp, base, lambda doc: json.dumps(doc)[:-20])
        args = {
            "split": ["split", data, "--folds", "2", "--stratify", "side", "-o", tmp / "s.json"],
            "eda": ["eda", data, "--out", tmp / "eda"],
        }[command]
        return args, 1, label.name

    return fault


def corrupt_csv(tmp, base):
    bad = tmp / "bad.csv"
    bad.write_bytes(b"\x00\x01garbage\n\xff")
    return ["pseudo", bad, base / "data", "-o", tmp / "pseudo"], 1, "bad.csv"


def scored_ensemble(existing_out: bool):
    """ensemble --scores --per-class-out refused (an existing -o, or --min-votes 3 of 2 inputs): no plan file."""

    def fault(tmp, base):
        scores = tmp / "scores.json"
        scores.write_text(json.dumps({"per_class_dice": {"Radius": 0.9}}))
        other = Path(shutil.copy(base / "sub.csv", tmp / "other.csv"))
        args = [
            "ensemble",
            base / "sub.csv",
            other,
            "--vote",
            "hard",
            "--scores",
            scores,
            "--scores",
            scores,
            "--per-class-out",
            tmp / "plan.json",
            "-o",
        ]
        if existing_out:
            return [*args, existing(tmp, "o.csv")], 1, "o.csv"
        return [*args, tmp / "o.csv", "--min-votes", "3"], 2, "--min-votes"

    return fault


# one row per command and fault kind: missing input, corrupt input, a bad option value next to an existing
# output (the option is reported, exit 2), an existing output without --force (exit 1)
COMMAND_FAULTS = {
    "synth-bad-size-existing-out": lambda tmp, base: (["synth", full_folder(tmp), "--size", "64"], 2, "--size"),
    "synth-bad-seed-existing-out": lambda tmp, base: (["synth", full_folder(tmp), "--seed", "-1"], 2, "--seed"),
    "synth-bad-seed": lambda tmp, base: (["synth", tmp / "new", "--seed", "-1", "--size", "128"], 2, "--seed"),
    "synth-existing-out": lambda tmp, base: (["synth", full_folder(tmp), "--size", "128"], 1, "full"),
    "split-missing-input": lambda tmp, base: (["split", tmp / "nowhere", "--folds", "2"], 1, "nowhere"),
    "split-bad-folds-missing-input": lambda tmp, base: (["split", tmp / "nowhere", "--folds", "1"], 2, "--folds"),
    "split-corrupt-label": corrupt_label("split"),
    "split-bad-stratify-existing-out": lambda tmp, base: (
        ["split", base / "data", "--stratify", "bogus", "-o", existing(tmp, "s.json")],
        2,
        "--stratify",
    ),
    "split-existing-out": lambda tmp, base: (
        ["split", base / "data", "--folds", "2", "-o", existing(tmp, "s.json")],
        1,
        "s.json",
    ),
    "eda-missing-input": lambda tmp, base: (["eda", tmp / "nowhere"], 1, "nowhere"),
    "eda-bad-samples-existing-out": lambda tmp, base: (
        ["eda", base / "data", "--samples", "-1", "--out", full_folder(tmp)],
        2,
        "--samples",
    ),
    "eda-existing-out": lambda tmp, base: (
        ["eda", base / "data", "--out", existing(tmp, "eda.json").parent],
        1,
        "eda.json",
    ),
    "pseudo-missing-input": lambda tmp, base: (["pseudo", tmp / "no.csv", base / "data", "-o", tmp / "p"], 1, "no.csv"),
    "pseudo-corrupt-csv": corrupt_csv,
    "pseudo-bad-confidence-existing-out": lambda tmp, base: (
        ["pseudo", base / "probs", base / "data", "-o", full_folder(tmp), "--min-confidence", "2"],
        2,
        "--min-confidence",
    ),
    "pseudo-bad-workers-existing-out": lambda tmp, base: (
        ["pseudo", tmp / "no.csv", base / "data", "-o", full_folder(tmp), "--workers", "-1"],
        2,
        "--workers",
    ),
    "pseudo-existing-out": lambda tmp, base: (
        ["pseudo", base / "sub.csv", base / "data", "-o", full_folder(tmp)],
        1,
        "full",
    ),
    "check-missing-input": lambda tmp, base: (["check", tmp / "no.csv"], 1, "no.csv"),
    "check-bad-size-missing-input": lambda tmp, base: (["check", tmp / "no.csv", "--size", "abc"], 2, "--size"),
    "demo-bad-threads-existing-out": lambda tmp, base: (
        ["demo", "--out", full_folder(tmp), "--threads", "0"],
        2,
        "--threads",
    ),
    "demo-bad-seed-existing-out": lambda tmp, base: (["demo", "--out", full_folder(tmp), "--seed", "-1"], 2, "--seed"),
    "demo-existing-out": lambda tmp, base: (["demo", "--quick", "--out", full_folder(tmp)], 1, "full"),
    "tta-bad-search-existing-out": lambda tmp, base: (
        [
            "tta",
            base / "data",
            "-m",
            base / "model.pt",
            "--search",
            "0.9,0.1",
            "--thresholds-out",
            existing(tmp, "t.json"),
        ],
        2,
        "--search",
    ),
    "tta-bad-workers-missing-input": lambda tmp, base: (
        ["tta", tmp / "nowhere", "-m", base / "model.pt", "--workers", "-1"],
        2,
        "--workers",
    ),
    "ensemble-bad-workers-existing-out": lambda tmp, base: (
        ["ensemble", base / "probs", base / "probs", "--workers", "-1", "-o", existing(tmp, "o.csv")],
        2,
        "--workers",
    ),
    "ensemble-scores-existing-out": scored_ensemble(existing_out=True),
    "ensemble-scores-bad-min-votes": scored_ensemble(existing_out=False),
    "train-bad-fold-missing-input": lambda tmp, base: (
        ["train", tmp / "nowhere", *TRAIN, "--fold", "-1", "--out", full_folder(tmp)],
        2,
        "--fold",
    ),
    "models-bad-option": lambda tmp, base: (["models", "--bogus"], 2, "--bogus"),
}

FAULTS = {
    "missing-input": missing_input,
    "corrupt-png-predict-worker": corrupt_png("test", "predict"),
    "corrupt-png-tta-worker": corrupt_png("train", "tta"),
    "malformed-label-json": label_fault(lambda doc: json.dumps(doc)[:-20]),
    "nested-label-json": label_fault(lambda doc: "[" * 100_000 + "]" * 100_000),
    "label-is-a-list": label_fault(ann0(label=["Radius"])),
    "label-is-null": label_fault(ann0(label=None)),
    "points-not-a-list": label_fault(ann0(points={"x": 1})),
    "points-of-booleans": label_fault(ann0(points=[[True, 1], [2, 2], [3, 1]])),
    "type-is-a-list": label_fault(ann0(type=["poly_seg"])),
    "annotations-an-object": label_fault(lambda doc: {**doc, "annotations": {"a": 1}}),
    "deep-threshold-json": deep_json("threshold"),
    "deep-splits-json": deep_json("splits"),
    "corrupt-csv": broken_csv("\x00\x01garbage\n\xff"),
    "broken-rle": broken_rle,
    "truncated-npz": truncated_npz,
    "checkpoint-without-arch": checkpoint_fault(without("arch")),
    "checkpoint-without-encoder": checkpoint_fault(without("encoder")),
    "corrupt-checkpoint": checkpoint_fault(lambda ckpt, base: ckpt.write_bytes(b"PK\x03\x04" + os.urandom(300))),
    "unsafe-checkpoint": checkpoint_fault(lambda ckpt, base: ckpt.write_bytes(pickle.dumps(_Evil()))),
    "non-utf8-name": non_utf8_name,
    "existing-output": existing_output,
    "bad-option-before-existing-output": bad_option_first,
    "lr-nan": lambda tmp, base: (["train", base / "data", *TRAIN, "--lr", "nan", "--out", tmp / "run"], 2, "--lr"),
    "overlap-out-of-range": lambda tmp, base: (
        ["predict", tmp / "nowhere", "-m", base / "model.pt", "--sliding", "--overlap", "1.5"],
        2,
        "--overlap",
    ),
    **COMMAND_FAULTS,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_one_line_naming_the_culprit(fault, base, tmp_path):
    args, expected, culprit = FAULTS[fault](tmp_path, base)
    before = set(tmp_path.rglob("*"))
    code, err = cli(*args)
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert not LEAK.search(lines[0]), lines[0]
    assert culprit in lines[0], lines[0]
    assert code == expected, err
    assert not (tmp_path / "run").exists() or fault != "lr-nan"  # a bad option writes nothing
    if fault in COMMAND_FAULTS:  # nothing written, nothing removed
        assert set(tmp_path.rglob("*")) == before, sorted(set(tmp_path.rglob("*")) ^ before)


def test_full_disk_during_checkpoint_save(tmp_path, monkeypatch):
    """ENOSPC while torch writes a checkpoint: the documented disk error, no partial file left."""
    import boneseg.io
    from boneseg.runs.checkpoint import save_checkpoint

    real_open = open
    monkeypatch.setattr(
        boneseg.io, "open", lambda path, mode="r", **kw: real_open("/dev/full", mode, **kw), raising=False
    )
    with pytest.raises(DataError, match=r"cannot write .*last\.pt: No space left on device"):
        save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(100_000)}})
    assert list(tmp_path.iterdir()) == []


def test_reporting_commands_name_a_corrupt_input(base, tmp_path):
    """eda and check report corrupt inputs as findings (their output), naming the file: eda exits 0 with
    the unreadable image among the problems, check exits 1 with the unreadable CSV as its problem."""
    data = copy_data(base, tmp_path)
    png = first(data / "train" / "DCM", "*.png")
    png.write_bytes(png.read_bytes()[:100])
    code, err = cli("eda", data)
    assert code == 0 and f"{png.name}: unreadable or corrupt image" in err and "Error:" not in err, err
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\x00\x01garbage\n\xff")
    code, err = cli("check", bad)
    assert code == 1 and "bad.csv: not a readable CSV" in err and "Error:" not in err, err
