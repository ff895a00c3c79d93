"""Out-of-fold predictions (`boneseg oof`) and the validation images a run trained without."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from util import cli, tiny_config, write_dataset

from boneseg.data.layout import discover
from boneseg.errors import DataError
from boneseg.submission import read_submission

from .test_audit import error_line


def test_oof_covers_every_train_image_once(fold_runs, tmp_path, capsys):
    data, runs = fold_runs
    out, probs_dir = tmp_path / "oof.csv", tmp_path / "oof_probs"
    code, _, err = cli(capsys, "oof", *runs, "-o", out, "--save-probs", probs_dir, "--device", "cpu")
    assert code == 0, err
    names = [s.image_name for s in discover(data)]
    sub = read_submission(out)
    assert sub.images == names
    manifest = json.loads((probs_dir / "probs.json").read_text())
    assert manifest["images"] == names and sorted(set(manifest["folds"].values())) == [0, 1]
    assert sorted(p.name for p in probs_dir.glob("*.npz")) == sorted(Path(n).stem + ".npz" for n in names)
    # what analyze and audit read
    code, _, err = cli(capsys, "analyze", out, "--gt", data)
    assert code == 0, err
    code, _, err = cli(capsys, "audit", data, "--pred", probs_dir, "--out", tmp_path / "audit", "--crops", "1")
    assert code == 0, err


def test_oof_refuses_a_missing_fold_or_a_fold_twice(fold_runs, tmp_path, capsys):
    _, runs = fold_runs
    code, _, err = cli(capsys, "oof", runs[0], "-o", tmp_path / "a.csv", "--device", "cpu")
    assert code == 1 and "a fold is missing" in error_line(err)
    code, _, err = cli(capsys, "oof", runs[0], runs[0], "-o", tmp_path / "b.csv", "--device", "cpu")
    assert code == 1 and "both validate" in error_line(err)
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()


def test_oof_names_the_fold_count_of_the_runs_splits_file(tmp_path, capsys):
    """A run trained with a 3-fold splits file (and --folds left at its default) is one of 3 folds, not of 5."""
    from boneseg.engine.train import train

    data = write_dataset(tmp_path / "data", patients=3, size=64, test_patients=0)
    assert cli(capsys, "split", data, "--folds", "3", "-o", tmp_path / "splits.json")[0] == 0
    train(tiny_config(data, tmp_path / "run0", fold=0, splits=str(tmp_path / "splits.json"), max_steps=1))
    code, _, err = cli(capsys, "oof", tmp_path / "run0", "-o", tmp_path / "a.csv", "--device", "cpu")
    assert code == 1 and "runs given for fold 0 of 3)" in error_line(err), err


def test_oof_refuses_runs_of_different_datasets(fold_runs, tmp_path, capsys):
    from boneseg.engine.train import train

    data, runs = fold_runs
    shutil.copytree(data, tmp_path / "copy")  # the same image names: the folds alone cannot tell
    train(tiny_config(tmp_path / "copy", tmp_path / "other1", fold=1, folds=2, max_steps=1))
    code, _, err = cli(capsys, "oof", runs[0], tmp_path / "other1", "-o", tmp_path / "a.csv", "--device", "cpu")
    assert code == 1 and "trained on different datasets" in error_line(err)
    assert not (tmp_path / "a.csv").exists()


def test_train_exclude_names_an_unknown_image(fold_runs, tmp_path, capsys):
    data, _ = fold_runs
    listed = tmp_path / "leave-out.txt"
    listed.write_text("# suspects\nimage-that-is-not-there.png\n")
    code, _, err = cli(
        capsys,
        "train",
        data,
        "--arch",
        "unet",
        "--encoder",
        "resnet18",
        "--size",
        "64",
        "--encoder-weights",
        "none",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--max-steps",
        "1",
        "--exclude",
        listed,
        "--out",
        tmp_path / "run",
    )
    assert code == 1 and "image-that-is-not-there.png" in error_line(err)
    listed.write_text(f"{discover(data)[0].name}\n")
    from boneseg.engine.train import train

    summary = train(tiny_config(data, tmp_path / "run2", exclude=str(listed), max_steps=1))
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["exclude"] == str(listed)
    assert summary["steps"] == 1


def test_oof_and_resume_keep_the_validation_images_training_used(tmp_path, capsys):
    """A patient added after training changes the folds made again from the dataset (here it joins fold 0;
    in general the folds reshuffle, and oof would predict images a run trained on). Runs record their
    validation images: oof predicts those and names what no run validated; a resume refuses a changed fold."""
    from boneseg.engine.train import train
    from boneseg.runs.run import Run

    data = write_dataset(tmp_path / "data", patients=2, size=64, test_patients=0)
    runs = [tmp_path / f"run{k}" for k in range(2)]
    for k, run in enumerate(runs):
        train(tiny_config(data, run, fold=k, folds=2, epochs=2, max_steps=1))
    before = [Run.open(r).val_images for r in runs]
    assert sorted(before[0] + before[1]) == sorted(s.name for s in discover(data))
    write_dataset(data, patients=3, size=64, test_patients=0)  # the same two patients, and a third
    added = sorted({s.name for s in discover(data)} - set(before[0] + before[1]))
    assert [[s.name for s in Run.open(r).validation(discover(data))] for r in runs] == before
    code, _, err = cli(capsys, "oof", *runs, "-o", tmp_path / "oof.csv", "--device", "cpu")
    assert code == 1 and "images added to the dataset since training" in error_line(err), err
    assert added[0] in error_line(err) or added[1] in error_line(err)
    with pytest.raises(DataError, match="validation fold changed since the run started"):
        for k, run in enumerate(runs):  # the new patient joins one of the two folds
            train(tiny_config(data, run, fold=k, folds=2, epochs=2, resume=True))
