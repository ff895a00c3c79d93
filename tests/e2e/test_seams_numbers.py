"""The seams: non-finite numbers are refused wherever a number is read (options, text lists, files, the
Python API), and an interrupted ``predict --save-probs`` leaves nothing that blocks its rerun."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import typer.main
from util import write_dataset

from boneseg import probs
from boneseg.cli import app, main
from boneseg.errors import UsageError


def cli(capsys, *args) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, the single `Error:` line or "")."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(lines) <= 1, err
    return code, lines[0] if lines else ""


@pytest.fixture()
def images(tmp_path) -> Path:
    """A folder with one small PNG (enough for predict to reach its option checks)."""
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((64, 64), np.uint8))
    return folder


# -- options ---------------------------------------------------------------------------------------


def _float_options():
    """(command, option, the command's required parameters) for every float parameter of every command."""
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        hints = typing.get_type_hints(command.callback)
        for param in command.params:
            hint = hints.get(param.name)
            if float in (hint, *typing.get_args(hint)):
                yield name, max(param.opts, key=len), [p for p in command.params if p.required and p is not param]


FLOAT_OPTIONS = list(_float_options())
assert {("predict", "--overlap"), ("analyze", "--tolerance")} <= {(c, o) for c, o, _ in FLOAT_OPTIONS}


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("i", range(len(FLOAT_OPTIONS)), ids=[f"{c} {o}" for c, o, _ in FLOAT_OPTIONS])
def test_every_float_option_refuses_non_finite(i, value, capsys, tmp_path):
    command, option, required = FLOAT_OPTIONS[i]
    args = [command]
    for p in required:  # placeholders that parse; the number check comes before any of them is used
        dummy = str(tmp_path / "x")
        args += [dummy] if p.param_type_name == "argument" else [p.opts[0], dummy]
    code, line = cli(capsys, *args, option, value)
    assert (code, line) == (2, f"Error: {option} {value}: must be a finite number")


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "{images}", "-m", "x.pt", "--overlap", "-inf"], "--overlap -inf: must be a finite number"),
        (["predict", "{images}", "-m", "x.pt", "--threshold", "nan"], "--threshold nan: must be a finite number"),
        (["predict", "{images}", "-m", "x.pt", "--threshold", "-inf"], "--threshold -inf: must be a finite number"),
        (["predict", "{images}", "-m", "x.pt", "--weights", "1,nan"], "--weights nan: must be a finite number"),
        (
            ["predict", "{images}", "-m", "x.pt", "--tta", "scale", "--scales", "1,inf"],
            "--scales must be positive finite",
        ),
        (["tta", "{images}", "-m", "x.pt", "--search", "0.3,nan"], "--search nan: must be a finite number"),
        (["ensemble", "a.csv", "b.csv", "--weights", "inf,1"], "--weights inf: must be a finite number"),
        (["ensemble", "{dir}", "{dir}", "--threshold", "nan"], "--threshold nan: must be a finite number"),
        (
            ["pseudo", "{dir}", "{images}", "-o", "{out}", "--threshold", "nan"],
            "--threshold nan: must be a finite number",
        ),
    ],
)
def test_numbers_given_as_text_refuse_non_finite(args, message, images, tmp_path, capsys):
    (tmp_path / "p").mkdir()
    fill = {"images": images, "dir": tmp_path / "p", "out": tmp_path / "out"}
    code, line = cli(capsys, *[a.format(**fill) for a in args])
    assert code == 2 and message in line, line


# -- files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, shown",
    [
        ('{"Radius": NaN}', "nan"),
        ('{"thresholds": {"Radius": 1e999}}', "inf"),
        ('{"Radius": -Infinity}', "-inf"),
        ('{"Radius": 1.5}', "1.5"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "ensemble", "pseudo"])
def test_threshold_files_refuse_bad_numbers(command, text, shown, images, tmp_path, capsys):
    thr = tmp_path / "thr.json"
    thr.write_text(text)
    (tmp_path / "p").mkdir()
    args = {
        "predict": ["predict", images, "-m", "x.pt"],
        "ensemble": ["ensemble", tmp_path / "p", "--vote", "soft"],
        "pseudo": ["pseudo", tmp_path / "p", images, "-o", tmp_path / "out"],
    }[command]
    code, line = cli(capsys, *args, "--threshold", thr)
    assert code == 1 and f"{thr}: class 'Radius': threshold {shown}: must be " in line, line


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-3", "2.5"])
def test_postprocess_rules_refuse_bad_min_area(value, images, tmp_path, capsys):
    rules = tmp_path / "postprocess.json"
    rules.write_text(f'{{"classes": {{"Radius": {{"keep_largest": false, "min_area": {value}}}}}}}')
    code, line = cli(capsys, "predict", images, "-m", "x.pt", "--postprocess", rules)
    assert code == 1 and f"{rules}: class 'Radius': min_area" in line and "whole number >= 0" in line, line


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_score_files_refuse_non_finite(value, tmp_path, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"per_class_dice": {"Radius": 0.9}}))
    bad.write_text(f'{{"per_class_dice": {{"Radius": {value}}}}}')
    code, line = cli(capsys, "ensemble", "a.csv", "b.csv", "--scores", good, "--scores", bad)
    assert code == 1 and f"{bad}: per_class_dice 'Radius'" in line, line


# -- Python API ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "threshold",
    [float("nan"), float("inf"), [0.5] * 28 + [float("nan")], {"Radius": float("nan")}, np.full(29, np.nan), 1.5],
)
def test_library_refuses_bad_thresholds(threshold):
    from boneseg.workflows.ensemble import soft_plan

    q = np.zeros((29, 4, 4), np.uint8)
    for call in (
        lambda: probs.cutoffs(threshold),
        lambda: probs.binarize(q, threshold),
        lambda: probs.read_thresholds(threshold),
        lambda: soft_plan(2, threshold=threshold),
    ):
        with pytest.raises(UsageError, match="threshold"):
            call()


def test_library_refuses_non_finite_weights_and_scales(images, tmp_path):
    from boneseg.inference import PredictOptions, parse_scales, predict

    with pytest.raises(UsageError, match="--weights must be finite"):
        predict(
            images, ["a.pt", "b.pt"], tmp_path / "s.csv", options=PredictOptions(weights=[float("nan"), 1.0], workers=0)
        )
    with pytest.raises(UsageError, match="--scales"):
        parse_scales([1.0, float("nan")])


# -- interrupted predict --save-probs --------------------------------------------------------------


def _checkpoint(path: Path) -> Path:
    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import save_checkpoint

    config = {
        "arch": "unet",
        "encoder": "resnet18",
        "size": 64,
        "in_channels": 1,
        "channels": "gray",
        "unify_side": None,
        "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]},
    }
    torch.manual_seed(0)
    save_checkpoint(
        path, {"config": config, "model": build_model(config).state_dict(), "epoch": 0, "step": 0, "metrics": {}}
    )
    return path


def test_interrupted_save_probs_leaves_nothing_and_reruns(tmp_path, monkeypatch, capsys):
    data = write_dataset(tmp_path / "data", patients=0, size=64, test_patients=2)  # 4 test images
    ckpt = _checkpoint(tmp_path / "model.pt")
    pdir = tmp_path / "probs"
    command = [
        "predict",
        data,
        "-m",
        ckpt,
        "-o",
        tmp_path / "sub.csv",
        "--save-probs",
        pdir,
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    save = probs.save

    def interrupted_after_one(folder, name, q):
        if list(Path(folder).glob("*.npz")):
            raise KeyboardInterrupt
        return save(folder, name, q)

    def leftovers():
        return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("data", "model.pt"))

    with monkeypatch.context() as m:
        m.setattr(probs, "save", interrupted_after_one)
        assert cli(capsys, *command)[0] == 130
    assert leftovers() == []  # no CSV, no probability folder, no hidden partial folder

    assert cli(capsys, *command) == (0, "")  # the same command again, without --force
    done = sorted(p.name for p in pdir.iterdir())
    assert len(done) == 5 and "probs.json" in done and len(probs.read_manifest(pdir)["images"]) == 4
    before = {p.name: p.read_bytes() for p in pdir.iterdir()}

    with monkeypatch.context() as m:  # an interrupted --force run leaves the complete folder as it was
        m.setattr(probs, "save", interrupted_after_one)
        assert cli(capsys, *command, "--force")[0] == 130
    assert {p.name: p.read_bytes() for p in pdir.iterdir()} == before
    assert leftovers() == ["probs", "sub.csv"]
