"""`train --init-from`, `--config`/`--print-config`, `--dry-run` and `--patience` (issue 17, training half)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from util import cli, error_line, write_dataset

from boneseg.cli import main

TINY = [
    "--arch",
    "unet",
    "--encoder",
    "resnet18",
    "--size",
    "64",
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


def weights(path: Path, params_only: bool = False) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["model"]
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v for k, v in state.items() if not (params_only and k.endswith(skip))}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def listing(*roots: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_size if p.is_file() else -1) for r in roots for p in r.rglob("*"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("trainx") / "data", patients=3, size=64)


@pytest.fixture(scope="module")
def run_a(data, tmp_path_factory):
    """A finished one-epoch run to start from or reproduce."""
    out = tmp_path_factory.mktemp("runs") / "a"
    with pytest.raises(SystemExit) as done:
        main(
            [str(a) for a in ["train", data, *TINY, "--epochs", "1", "--cache-dir", out.parent / "cache", "--out", out]]
        )
    assert done.value.code == 0
    return out


def test_config_file_reproduces_the_run_bit_for_bit(capsys, data, run_a, tmp_path):
    code, _, err = cli(
        capsys,
        "train",
        data,
        "--config",
        run_a / "config.json",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        tmp_path / "b",
    )
    assert code == 0, err
    assert same(weights(run_a / "last.pt"), weights(tmp_path / "b" / "last.pt"))
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == json.loads((run_a / "config.json").read_text())


def test_config_file_under_command_line_options(capsys, data, tmp_path):
    """YAML keys (dashes, `1e-3` as YAML reads it, runtime keys) are defaults; only typed options override them,
    runtime ones are never part of the run."""
    (tmp_path / "c.yaml").write_text(
        "arch: unet++\nencoder: resnet18\nsize: 64\nepochs: 5\nlr: 1e-3\n"
        "batch-size: 3\nunify-hands: R\nworkers: 0\ndevice: cpu\npatience: 4\n"
    )
    code, out, err = cli(
        capsys,
        "train",
        data,
        "--config",
        tmp_path / "c.yaml",
        "--epochs",
        "2",
        "--print-config",
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    cfg = json.loads(out)
    assert (cfg["arch"], cfg["epochs"], cfg["lr"], cfg["batch_size"], cfg["unify_side"], cfg["patience"]) == (
        "unetplusplus",
        2,
        1e-3,
        3,
        "R",
        4,
    )
    assert "workers" not in cfg and "device" not in cfg and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "text, code, culprit",
    [
        ("epoch: 3\n", 2, "did you mean 'epochs'"),
        ("epochs: ten\n", 2, "epochs is 'ten'"),
        ("force: true\n", 2, "'force'"),
        ("epochs: [1\n", 1, "malformed YAML"),
        ("- 1\n", 1, "not a mapping"),
    ],
)
def test_config_file_errors_name_the_file(capsys, data, tmp_path, text, code, culprit):
    (tmp_path / "c.yml").write_text(text)
    got, _, err = cli(capsys, "train", data, *TINY, "--config", tmp_path / "c.yml", "--out", tmp_path / "r")
    line = error_line(err)
    assert got == code and str(tmp_path / "c.yml") in line and culprit in line, line


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("mean: [0.4, 0.4]\n", "mean [0.4, 0.4]: expected 1 finite number"),
        ("channels: clahe3\nmean: [0.4, 0.4]\n", "expected 1 or 3 finite numbers"),
        ("std: [0.0]\n", "std [0.0]: must be positive"),
        ("std: [.nan]\n", "std [nan]: expected 1 finite number"),
    ],
)
def test_impossible_normalisation_is_refused_before_anything_runs(capsys, data, tmp_path, text, culprit):
    """A config file's mean/std that cannot normalise the input (wrong count, zero or non-finite std: a wrong
    shape or inf/nan inputs) is refused by --dry-run as by a real run."""
    (tmp_path / "c.yml").write_text(text)
    code, _, err = cli(
        capsys, "train", data, *TINY, "--config", tmp_path / "c.yml", "--dry-run", "--out", tmp_path / "r"
    )
    assert code == 2 and culprit in error_line(err), err
    assert not (tmp_path / "r").exists()


def test_dry_run_writes_nothing(capsys, data, run_a, tmp_path):
    before = listing(data, tmp_path)
    code, out, err = cli(
        capsys,
        "train",
        data,
        *TINY,
        "--epochs",
        "3",
        "--cache-dir",
        tmp_path / "cache",
        "--init-from",
        run_a,
        "--dry-run",
        "--json",
        "--out",
        tmp_path / "new",
    )
    assert code == 0, err
    plan = json.loads(out)
    assert plan["parameters"] > 1e6 and plan["steps_per_epoch"] == 1 and plan["steps"] == 3
    mem = plan["memory"]
    assert mem["activations"] == 2 * mem["activations_per_image"] > 0
    assert mem["total"] == mem["weights"] * 4 + mem["activations"]  # weights, gradients, 2 AdamW moments
    assert "initialised from" in err
    assert listing(data, tmp_path) == before
    code, _, err = cli(capsys, "train", data, *TINY, "--dry-run", "--out", run_a)  # refused as a real run is
    assert code == 1 and "not empty" in error_line(err)


def test_init_from_loads_the_whole_network_and_resume_keeps_it(capsys, data, run_a, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(run_a, source)
    args = ["train", data, *TINY, "--epochs", "2", "--lr", "1e-12", "--init-from", source]
    code, _, err = cli(capsys, *args, "--out", tmp_path / "full")
    assert code == 0, err
    assert "initialised from" in err
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["init_from"] == str(source / "best.pt") and saved["encoder_weights"] is None
    start, tuned = weights(source / "best.pt", True), weights(tmp_path / "full" / "last.pt", True)
    assert all(torch.allclose(start[k], tuned[k], atol=1e-6) for k in start)  # decoder and head too
    # stopped, source gone, resumed: no re-initialisation, same result as the uninterrupted run
    assert cli(capsys, *args, "--max-steps", "1", "--out", tmp_path / "cut")[0] == 0
    shutil.rmtree(source)
    code, _, err = cli(capsys, "train", data, "--out", tmp_path / "cut", "--resume", "--workers", "0")
    assert code == 0, err
    assert same(weights(tmp_path / "cut" / "last.pt"), weights(tmp_path / "full" / "last.pt"))


def test_a_resume_takes_the_same_options_in_other_spellings(capsys, data, run_a, tmp_path, monkeypatch):
    """A script re-runs its command with --resume: the --init-from folder (the run saved the best.pt it took),
    an alias, a loss or a path written otherwise are the run's own options; a real change is still refused."""
    monkeypatch.chdir(run_a.parent)
    base = ["train", data, *TINY, "--epochs", "2", "--out", tmp_path / "r"]
    args = [*base, "--loss", "0.5*bce+dice", "--init-from", "a"]
    assert cli(capsys, *args, "--max-steps", "1")[0] == 0
    respelled = [*base, "--arch", "Unet", "--loss", " 0.5 * bce + 1*dice", "--init-from", "./a/best.pt"]
    for given in (args, respelled, [*base, "--loss", "5e-1*bce+dice", "--init-from", run_a.parent / "a/"]):
        code, _, err = cli(capsys, *given, "--resume", "--print-config")
        assert code == 0, error_line(err)
    for change in (["--loss", "bce+dice"], ["--init-from", "a/last.pt"]):
        code, _, err = cli(capsys, *base, *change, "--resume", "--print-config")
        assert code != 0 and "the run was started with" in error_line(err)


@pytest.mark.parametrize(
    "change, culprit",
    [
        (["--encoder", "resnet34"], "resnet18"),
        (["--channels", "rgb"], "1 input channel"),
        (["--boundary-head", "0.5"], "as in its run, e.g. --config"),
    ],
)
def test_init_from_another_network_is_refused(capsys, data, run_a, tmp_path, change, culprit):
    code, _, err = cli(capsys, "train", data, *TINY, *change, "--init-from", run_a, "--out", tmp_path / "r")
    line = error_line(err)
    assert code == 1 and "--init-from" in line and culprit in line, line
    assert not (tmp_path / "r").exists()


def test_patience_stops_a_resumed_run_at_the_same_epoch(capsys, data, tmp_path):
    """Best at epoch 1, worse after: --patience 2 stops at epoch 3 of 12; cut after epoch 2 (one validation
    without improvement already counted) and resumed, it stops at epoch 3 too."""
    args = ["train", data, *TINY, "--epochs", "12", "--lr", "3e-3", "--patience", "2"]
    code, out, err = cli(capsys, *args, "--json", "--out", tmp_path / "full")
    assert code == 0, err
    summary = json.loads(out[: out.rindex("}") + 1])
    assert summary["early_stopped"] and summary["epochs_done"] == 3 and summary["best_epoch"] == 1
    assert cli(capsys, *args, "--max-steps", "2", "--out", tmp_path / "cut")[0] == 0
    code, out, err = cli(capsys, "train", data, "--out", tmp_path / "cut", "--resume", "--workers", "0")
    assert code == 0, err
    assert "early stop at epoch 3" in err
    history = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert same(weights(tmp_path / "cut" / "last.pt"), weights(tmp_path / "full" / "last.pt"))


@pytest.mark.parametrize(
    "loss,wrist,untrained",
    [("dice@wrist", False, "19 classes (finger-1, finger-2, finger-3, …)"), ("bce@Scaphoid", True, "7 classes")],
)
def test_classes_no_loss_term_sees_are_named(capsys, data, tmp_path, loss, wrist, untrained):
    """Classes that no restricted loss term covers would never train, yet predict writes their masks: said."""
    extra = ["--wrist"] if wrist else []
    code, _, err = cli(capsys, "train", data, *TINY, *extra, "--loss", loss, "--dry-run", "--out", tmp_path / "r")
    assert code == 0, err
    assert f"no --loss term sees {untrained}" in " ".join(err.split()), err
    code, _, err = cli(
        capsys, "train", data, *TINY, "--loss", "bce@wrist+dice@fingers", "--dry-run", "--out", tmp_path / "r"
    )
    assert code == 0 and "no --loss term sees" not in err
