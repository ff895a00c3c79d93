"""`distill`: a student trained on a teacher's saved probabilities with tiny real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from util import cli, error_line

from boneseg import probs
from boneseg.classes import CLASSES
from boneseg.data.dataset import Item, SegDataset
from boneseg.data.layout import discover
from boneseg.data.masks import MaskCache, build_sample
from boneseg.data.teacher import make_teacher
from boneseg.data.transforms import build_augmentation
from boneseg.errors import DataError
from boneseg.metrics import dice
from boneseg.workflows.distill import distill, resolve_teacher


def _tiny(data: Path, out: Path, **extra) -> dict:
    """The config `_args` gives on the command line (not `util.tiny_config`: its slim decoder has no CLI option)."""
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
        "lr": 3e-3,
        "folds": 2,
        "aug": "strong",
        "unify_side": "R",
        "cache_dir": str(out.parent / "cache"),
    }
    return {**cfg, **extra}


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


@pytest.fixture(scope="module")
def teacher(synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    train, test = discover(synth_data), discover(synth_data, "test")
    return {
        "oof": [str(_write_probs(root / f"oof_{b}", train, b)) for b in (3, 9)],
        "test": [str(_write_probs(root / f"test_{b}", test, b)) for b in (3, 9)],
    }


def test_soft_targets_follow_the_masks_through_augmentation(synth_data, teacher, tmp_path):
    """The teacher's probabilities (saved at the images' 256²) are mirrored and warped exactly with the
    masks: thresholded, they are the masks (at 96² too, resized by the resize rule of the images)."""
    samples = discover(synth_data)
    t = make_teacher(teacher["oof"][:1], None)
    items = [Item(s, MaskCache(tmp_path / "cache"), t) for s in samples]
    for size, side, least in ((256, None, 0.98), (256, "R", 0.98), (96, None, 0.8)):
        ds = SegDataset(items, size, build_augmentation("strong", None, flip=side is None), side, soft=True)
        for i in range(len(items)):
            out = ds[(i, 1234 + i)]
            assert out["teacher"].dtype == torch.uint8 and out["teacher"].shape == (29, size, size)
            assert bool(out["labelled"])
            score = dice(out["teacher"] > 127, out["mask"].bool()).mean()
            assert score > least, (size, side, i, score)


def test_targets_are_cached_until_a_probability_file_changes(synth_data, tmp_path):
    sample = discover(synth_data)[0]
    folder = _write_probs(tmp_path / "p", [sample], 3)
    teacher, cache = make_teacher([folder], None), MaskCache(tmp_path / "cache")
    first = cache.soft_target(sample, 64, teacher)
    assert np.array_equal(first, teacher.target(sample.image_name, 64)) and first.shape == (29, 64, 64)
    assert len(list((tmp_path / "cache").glob("*.teacher-*.npz"))) == 1
    assert np.array_equal(cache.soft_target(sample, 64, teacher), first)
    probs.save(folder, sample.image_name, np.full((29, 256, 256), 7, np.uint8))  # the teacher changed
    assert (cache.soft_target(sample, 64, teacher) == 7).all()


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


def test_the_target_mixes_labels_and_teacher():
    from boneseg.engine.train import soft_target

    mask = torch.tensor([1, 0, 1], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 29, 2, 2)
    teacher = torch.full((3, 29, 2, 2), 51, dtype=torch.uint8)  # 0.2
    got = soft_target(mask, {"teacher": teacher, "labelled": torch.tensor([True, True, False])}, 0.25, "cpu")
    assert torch.allclose(got[0], torch.full((29, 2, 2), 0.75 + 0.05))
    assert torch.allclose(got[1], torch.full((29, 2, 2), 0.05))
    assert torch.allclose(got[2], torch.full((29, 2, 2), 0.2))  # unlabelled: the teacher alone
