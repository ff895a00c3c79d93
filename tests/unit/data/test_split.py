"""Patient-grouped folds: grouping, determinism, stratification, validation, CLI."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from boneseg.data.layout import Sample, discover
from boneseg.data.split import fold_samples, load_splits, make_splits
from boneseg.errors import DataError, UsageError


def fake_samples(patients: int) -> list[Sample]:
    """Two images per patient, one per hand (names as in the competition)."""
    return [
        Sample(f"ID{p:03d}/image{1661130000000 + 10 * p + h}{'_L' if h else '_R'}.png", Path("x.png"))
        for p in range(1, patients + 1)
        for h in (0, 1)
    ]


def test_patients_stay_together_and_folds_balance():
    samples = fake_samples(23)
    splits = make_splits(samples, folds=5, seed=0)
    assert splits["folds"] == 5 and splits["group_by"] == "patient" and splits["seed"] == 0
    assert set(splits["assignments"]) == {s.name for s in samples}
    folds_of = defaultdict(set)
    for name, fold in splits["assignments"].items():
        folds_of[name.split("/")[0]].add(fold)
    assert all(len(f) == 1 for f in folds_of.values())
    sizes = [list(splits["assignments"].values()).count(k) for k in range(5)]
    assert max(sizes) - min(sizes) <= 2 and sum(sizes) == 46


def test_deterministic_per_seed():
    samples = fake_samples(20)
    a, b = make_splits(samples, 5, seed=3), make_splits(list(reversed(samples)), 5, seed=3)
    assert a == b
    assert make_splits(samples, 5, seed=4)["assignments"] != a["assignments"]


def test_stratified_by_side(synth_data):
    samples = discover(synth_data)
    splits = make_splits(samples, folds=2, seed=0, stratify="side")
    assert splits["stratify"] == "side"
    train, val = fold_samples(samples, splits, 0)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val}) and len(train) + len(val) == 8
    custom = make_splits(fake_samples(10), 2, 0, stratify={s.name: s.suffix_side for s in fake_samples(10)})
    assert custom["stratify"] == "custom"


def test_impossible_requests():
    with pytest.raises(UsageError, match="only 3 patient"):
        make_splits(fake_samples(3), folds=5)
    with pytest.raises(UsageError, match="did you mean 'side'"):
        make_splits(fake_samples(6), folds=2, stratify="sde")
    splits = make_splits(fake_samples(6), folds=3)
    with pytest.raises(UsageError, match=r"--fold 3: the splits have 3 folds \(0..2\)"):
        fold_samples(fake_samples(6), splits, 3)


def test_load_splits_checks_the_dataset(tmp_path):
    samples = fake_samples(6)
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(make_splits(samples, 3)))
    assert load_splits(path, samples)["folds"] == 3
    with pytest.raises(DataError, match="splits file from another dataset"):
        load_splits(path, fake_samples(4))
    with pytest.raises(DataError, match="have no fold"):
        load_splits(path, fake_samples(7))
    bad = json.loads(path.read_text())
    first = next(iter(bad["assignments"]))
    bad["assignments"][first] = 9
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="not in 0..2"):
        load_splits(path)


def test_cli_split(synth_data, tmp_path):
    from typer.testing import CliRunner

    from boneseg.cli import app

    out = tmp_path / "splits.json"
    runner = CliRunner()
    result = runner.invoke(app, ["split", str(synth_data), "--folds", "2", "--seed", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["folds"] == 2 and len(doc["assignments"]) == 8
    again = runner.invoke(app, ["split", str(synth_data), "--folds", "2", "-o", str(out)])
    assert again.exit_code != 0 and "already exists" in str(again.exception)
    stdout = runner.invoke(app, ["split", str(synth_data), "--folds", "2", "--seed", "1"])
    assert json.loads(stdout.stdout) == doc
