"""`distill`: a student trained on a teacher's saved probabilities with tiny real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from util import _write_probs, cli, error_line, tiny_config

from boneseg import probs
from boneseg.classes import CLASSES
from boneseg.data.layout import discover
from boneseg.data.teacher import make_teacher
from boneseg.errors import DataError
from boneseg.workflows.distill import distill, resolve_teacher


def _tiny(data: Path, out: Path, **extra) -> dict:
    """The config `_args` gives on the command line: `util.tiny_config` without its slim decoder (which has no
    CLI option)."""
    cfg = tiny_config(data, out, folds=2, aug="strong", unify_side="R", **extra)
    del cfg["model_kwargs"]
    return cfg


def test_distill_trains_resumes_exactly_and_predicts(synth_data, teacher, tmp_path, capsys):
    """A student of two averaged folders plus test soft labels: a normal run, recorded in its config; a
    `--max-steps` stop and a resume give the uninterrupted run's weights; `predict` takes it."""
    full = distill(_tiny(synth_data, tmp_path / "full"), teacher["oof"], teacher["test"], teacher_weight=0.7)
    assert full["train_images"] == 4 + 2 and not full["stopped"]  # 4 train images of fold 1 + 2 test images
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["teacher"] == teacher["oof"] and saved["teacher_test"] == teacher["test"]
    assert saved["teacher_weight"] == 0.7 and saved["teacher_weights"] is None

    run = tmp_path / "run"
    common = [*_args(synth_data, run), "--teacher-weight", "0.7"]
    teach = [x for f in teacher["oof"] for x in ("--teacher", f)] + [
        x for f in teacher["test"] for x in ("--teacher-test", f)
    ]
    code, _, err = cli(capsys, "distill", *common, *teach, "--max-steps", "1")
    assert code == 0, err
    code, _, err = cli(capsys, "distill", str(synth_data), "--out", run, "--resume", "--workers", "0")
    assert code == 0, err
    a, b = torch.load(tmp_path / "full" / "last.pt", weights_only=True), torch.load(run / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == full["steps"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

    code, out, err = cli(capsys, "predict", synth_data, "-m", run, "--device", "cpu", "-o", "-")
    assert code == 0, err
    assert out.startswith("image_name,class,rle") and len(out.splitlines()) == 1 + 2 * 29


def _args(data: Path, out: Path) -> list[str]:
    return [
        str(data), "--arch", "unet", "--encoder", "resnet18", "--size", "64", "--epochs", "1", "--batch-size", "2",
        "--encoder-weights", "none", "--device", "cpu", "--workers", "0", "--lr", "3e-3", "--folds", "2",
        "--aug", "strong", "--unify-hands", "R", "--cache-dir", str(out.parent / "cache"), "--out", str(out),
    ]  # fmt: skip


def test_missing_or_mismatched_teacher_images_are_refused(synth_data, teacher, tmp_path, capsys):
    train = discover(synth_data)
    lacking = _write_probs(tmp_path / "lacking", train[1:], 3)
    code, _, err = cli(capsys, "distill", *_args(synth_data, tmp_path / "r1"), "--teacher", lacking)
    assert code == 1
    assert "lacking: no probabilities of image" in error_line(err) and "and " not in error_line(err).split("image")[1]
    assert not (tmp_path / "r1").exists()

    small = tmp_path / "small"  # probabilities of another dataset: 128² for 256² images
    for s in train:
        probs.save(small, s.image_name, np.zeros((29, 128, 128), np.uint8))
    probs.write_manifest(small, [s.image_name for s in train], ["made-up"])
    code, _, err = cli(capsys, "distill", *_args(synth_data, tmp_path / "r2"), "--teacher", small)
    assert code == 1 and "are (128, 128) pixels" in error_line(err)

    code, _, err = cli(capsys, "distill", *_args(synth_data, tmp_path / "r3"))
    assert code == 2 and "--teacher" in error_line(err)
    code, _, err = cli(
        capsys,
        "distill",
        *_args(synth_data, tmp_path / "r4"),
        "--teacher",
        teacher["oof"][0],
        "--teacher-weight",
        "1.5",
    )
    assert code == 2 and "--teacher-weight 1.5" in error_line(err)
    code, _, err = cli(
        capsys, "distill", *_args(synth_data, tmp_path / "r5"), *("--teacher", teacher["oof"][0]),
        *("--teacher-test", teacher["test"][0], "--teacher-test", teacher["test"][1]),
    )  # fmt: skip
    assert code == 2 and "--teacher-test: 2 folder(s) for a teacher of 1" in error_line(err)


def test_a_select_plan_gives_its_folders_and_weights(teacher, tmp_path):
    a, b = teacher["oof"]
    plan = tmp_path / "plan.json"
    per_class = {c: ([2, 1] if i == 0 else [0, 1]) for i, c in enumerate(CLASSES)}
    plan.write_text(json.dumps({"vote": "soft", "inputs": [a, b], "per_class": per_class}))
    folders, tests, weights = resolve_teacher([plan], teacher["test"])
    assert folders == [a, b] and tests == teacher["test"]
    assert weights is not None and weights[0] == [2, 1] and weights[1] == [0, 1]
    only_b = {c: [0, 1] for c in CLASSES}
    plan.write_text(json.dumps({"vote": "soft", "inputs": [a, b], "per_class": only_b}))
    folders, tests, weights = resolve_teacher([plan], teacher["test"])  # a folder no class uses is dropped
    assert folders == [b] and tests == teacher["test"][1:] and weights == [[1.0]] * 29
    plan.write_text(json.dumps({"vote": "hard", "inputs": [a, b], "per_class": only_b}))
    with pytest.raises(DataError, match="a plan for a hard vote"):
        resolve_teacher([plan])


def test_the_teacher_target_is_the_soft_vote_mean(teacher, synth_data):
    """Two folders with per-class weights: the target is `ensemble --vote soft`'s mean (before its threshold)."""
    from boneseg.workflows.ensemble import soft_plan, soft_vote_image

    name = discover(synth_data)[0].image_name
    w = np.ones((29, 2))
    w[3] = [3, 1]
    target = make_teacher(teacher["oof"], w.tolist()).target(name, None)
    qs = [probs.load(f, name) for f in teacher["oof"]]
    plan = soft_plan(2, per_class={3: w[3]})
    assert np.array_equal(target > 127, soft_vote_image(qs, plan))


def test_distill_options_are_train_options_plus_the_teacher():
    """The same option objects' definitions as `train` (one source), plus the teacher's, which reach
    `distill_config`'s keywords with its defaults."""
    import inspect

    import typer

    from boneseg.cli import app
    from boneseg.workflows.distill import distill_config

    commands = typer.main.get_command(app).commands
    train = {p.name: p for p in commands["train"].params}
    ours = {p.name: p for p in commands["distill"].params}
    teacher = {"teacher", "teacher_test", "teacher_weight"}
    assert set(ours) == set(train) | teacher
    for name, p in train.items():
        assert (ours[name].opts, ours[name].default, ours[name].help) == (p.opts, p.default, p.help), name
    keywords = inspect.signature(distill_config).parameters
    for name in teacher:
        assert name in keywords and ours[name].default in (None, keywords[name].default)
