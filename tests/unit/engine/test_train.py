"""The training engine on CPU with tiny real smp models: outputs, bit-exact resume, stops, pseudo data,
`--init-from`, `--dry-run`, `--patience`, the normalisation and loss checks, and the `train` options against
`TrainConfig` (the one source of a run's defaults)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
from pathlib import Path

import click
import pytest
import torch
import typer
from util import TINY, TRAIN_ARGS, cli, error_line, write_dataset

from boneseg.classes import CLASSES
from boneseg.cli import main
from boneseg.engine.train import TrainingInterrupted, train
from boneseg.errors import CheckpointError, DataError, OutputExistsError, UsageError
from boneseg.runs.checkpoint import load_checkpoint, load_model
from boneseg.runs.config import ALIASES, RUNTIME, TrainConfig


def tiny(data: Path, out: Path, **extra) -> dict:
    """A 64-px U-Net/ResNet-18 run: 6 train images (3 batches of 2), 2 val images, per epoch."""
    cfg = {
        "data": str(data),
        "out": str(out),
        "arch": "unet",
        "encoder": "resnet18",
        "size": 64,
        "epochs": 2,
        "batch_size": 2,
        "encoder_weights": "none",
        "device": "cpu",
        "workers": 0,
        "seed": 0,
        "lr": 3e-3,
        "cache_dir": str(out.parent / "cache"),
        "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]},
    }
    cfg.update(extra)
    return cfg


# Exercises per-item augmentation seeds, EMA, warm-up, accumulation with a short last group (3 batches
# -> 2 optimizer steps per epoch), clipping and the cosine schedule.
RESUME_OPTS = {"aug": "strong", "ema": 0.9, "accumulate": 2, "warmup": 0.5, "clip": 1.0}


@pytest.fixture(scope="module")
def full_run(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    summary = train(tiny(synth_data, out, **RESUME_OPTS))
    return out, summary


def _assert_same_state(a: Path, b: Path) -> None:
    sa = torch.load(a, weights_only=True)
    sb = torch.load(b, weights_only=True)
    for key in ("model", "train_model"):
        assert sa[key].keys() == sb[key].keys()
        for name in sa[key]:
            assert torch.equal(sa[key][name], sb[key][name]), f"{key}.{name} differs"
    for group in ("state",):
        for pid, pstate in sa["optimizer"][group].items():
            for k, v in pstate.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb["optimizer"][group][pid][k])), k
    assert sa["scheduler"] == sb["scheduler"]
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    assert (sa["epoch"], sa["step"], sa["batch"]) == (sb["epoch"], sb["step"], sb["batch"])


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("seconds")
    return lines


def test_outputs_and_schema(full_run):
    run, summary = full_run
    assert summary["epochs_done"] == 2 and summary["steps"] == 4 and not summary["stopped"]
    assert summary["train_images"] == 6 and summary["val_images"] == 2
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt"):
        assert (run / name).is_file()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    lines = _metrics(run)
    assert [m["epoch"] for m in lines] == [1, 2]
    for m in lines:
        assert {"epoch", "train_loss", "val_dice", "val_dice_per_class", "lr", "step"} <= set(m)
        assert list(m["val_dice_per_class"]) == list(CLASSES)
        assert 0.0 <= m["val_dice"] <= 1.0 and m["train_loss"] > 0
        assert m["val_dice"] == pytest.approx(sum(m["val_dice_per_class"].values()) / 29)
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "unet" and config["in_channels"] == 1 and config["classes"] == list(CLASSES)
    assert {"mean", "std", "unify_side", "size", "crop", "loss", "aug"} <= set(config)
    best = load_checkpoint(run)  # a run folder means its best.pt
    assert best["metrics"]["val_dice"] == summary["best_val_dice"]
    assert best["epoch"] == summary["best_epoch"] and "optimizer" not in best
    model, cfg = load_model(run)
    assert not model.training and cfg["encoder"] == "resnet18"
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 29, 64, 64)


def test_resume_is_bit_exact(full_run, synth_data, tmp_path):
    ref, _ = full_run
    out = tmp_path / "run"
    first = train(tiny(synth_data, out, max_steps=1, **RESUME_OPTS))
    assert first["stopped"] and first["steps"] == 1 and first["epochs_done"] == 0
    assert load_checkpoint(out / "last.pt")["batch"] == 2  # stopped mid-epoch, after one 2-batch group
    again = train(tiny(synth_data, out, resume=True, max_steps=1, **RESUME_OPTS))  # reached: no step more
    assert again["stopped"] and again["steps"] == 1 and load_checkpoint(out / "last.pt")["step"] == 1
    second = train(tiny(synth_data, out, resume=True, max_steps=3, **RESUME_OPTS))
    assert second["stopped"] and second["steps"] == 3 and second["epochs_done"] == 1
    # a resume may give only what it changes: the saved config supplies the rest
    third = train({"data": str(synth_data), "out": str(out), "resume": True, "workers": 0})
    assert not third["stopped"] and third["steps"] == 4
    _assert_same_state(ref / "last.pt", out / "last.pt")
    assert _metrics(ref) == _metrics(out)
    best_ref, best_new = torch.load(ref / "best.pt", weights_only=True), torch.load(out / "best.pt", weights_only=True)
    assert all(torch.equal(best_ref["model"][k], best_new["model"][k]) for k in best_ref["model"])


def test_resume_refuses_changed_training_images(synth_data, tmp_path):
    """The --exclude list (same path, other content) leaves another image out: the resumed run would train
    on other images with another schedule length; refused, naming an image, and nothing of the run changes."""
    listed = tmp_path / "exclude.txt"
    listed.write_text("# nothing yet\n")
    out = tmp_path / "run"
    train(tiny(synth_data, out, max_steps=1, exclude=str(listed)))
    before = (out / "last.pt").read_bytes()
    name = load_checkpoint(out / "last.pt")["train_images"][0]
    listed.write_text(name + "\n")
    with pytest.raises(DataError, match=f"training images changed since the run started .*{name}.*--exclude"):
        train({"data": str(synth_data), "out": str(out), "resume": True, "workers": 0})
    assert (out / "last.pt").read_bytes() == before


def test_a_kill_between_the_two_saves_never_leaves_last_naming_a_best_it_lacks(synth_data, tmp_path, monkeypatch):
    """Epoch 1 (always a best) writes both checkpoints as one step; killed while serialising the second, neither
    is written: a last.pt whose best epoch best.pt does not hold would resume comparing against a best whose
    model is not kept, a best.pt without last.pt could not be resumed."""
    import boneseg.runs.checkpoint as ckpt

    class Killed(Exception):
        pass

    real, saved = ckpt.torch.save, []

    def save(state, f):
        if saved:
            raise Killed
        saved.append("full" if "optimizer" in state else "best")
        return real(state, f)

    monkeypatch.setattr(ckpt.torch, "save", save)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(tiny(synth_data, out, epochs=1))
    assert saved == ["full"] and not (out / "best.pt").exists() and not (out / "last.pt").exists()


class _FullDisk:
    """A file whose writes fail as on a full disk (ENOSPC)."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, data):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _full_disk_after(monkeypatch, saves: int) -> None:
    """Let `saves` writes of last.pt through, then fail every later one with ENOSPC (boneseg.io's open)."""
    import builtins

    import boneseg.io

    count = [0]

    def fake_open(path, mode="r", **kw):
        fh = builtins.open(path, mode, **kw)  # noqa: SIM115 - returned open
        if ".last.pt." in str(path) and "w" in mode:
            count[0] += 1
            if count[0] > saves:
                return _FullDisk(fh)
        return fh

    monkeypatch.setattr(boneseg.io, "open", fake_open, raising=False)


def test_a_full_disk_at_the_first_save_leaves_nothing_and_a_rerun_works(synth_data, tmp_path, monkeypatch):
    """Disk full writing last.pt of epoch 1: one line naming the file and what to do; no best.pt without a
    last.pt (which neither --resume nor a rerun could use), no temp file; the same command then works."""
    out = tmp_path / "run"
    _full_disk_after(monkeypatch, 0)
    with pytest.raises(DataError) as caught:
        train(tiny(synth_data, out, epochs=1))
    assert "cannot write" in str(caught.value) and "last.pt: No space left on device" in str(caught.value)
    assert "run the same command again" in str(caught.value)
    assert not out.exists()
    monkeypatch.undo()
    assert train(tiny(synth_data, out, epochs=1))["epochs_done"] == 1


def test_a_full_disk_later_keeps_the_previous_pair_and_resume_works(synth_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _full_disk_after(monkeypatch, 1)
    with pytest.raises(
        DataError, match=r"last\.pt keeps the last saved state: free space, then continue with --resume"
    ):
        train(tiny(synth_data, out, epochs=2))
    assert load_checkpoint(out / "last.pt")["epoch"] == load_checkpoint(out / "best.pt")["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert train(tiny(synth_data, out, epochs=2, resume=True))["epochs_done"] == 2


def test_sigterm_saves_last_and_resumes_exactly(full_run, synth_data, tmp_path, monkeypatch):
    """A real SIGTERM, sent by the process to itself during the first batch's loss (a named point, not a
    timer racing the run): the run stops at the next optimizer step, mid-epoch, and resumes bit for bit."""
    import boneseg.engine.train as engine

    ref, _ = full_run
    out = tmp_path / "run"
    real = engine._seg_loss

    def loss_then_signal(*args):
        loss = real(*args)
        monkeypatch.setattr(engine, "_seg_loss", real)
        os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(engine, "_seg_loss", loss_then_signal)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(tiny(synth_data, out, **RESUME_OPTS))
    monkeypatch.setattr(engine, "_seg_loss", real)
    state = load_checkpoint(out / "last.pt")
    assert 1 <= state["step"] < 4
    train(tiny(synth_data, out, resume=True, **RESUME_OPTS))
    _assert_same_state(ref / "last.pt", out / "last.pt")


def test_save_every_writes_last_less_often(synth_data, tmp_path, monkeypatch):
    import boneseg.engine.state as engine

    written = []
    real = engine.save_checkpoints
    monkeypatch.setattr(
        engine,
        "save_checkpoints",
        lambda states: (written.extend((Path(p).name, s["epoch"]) for p, s in states.items()), real(states)),
    )
    out = tmp_path / "run"
    summary = train(tiny(synth_data, out, epochs=3, save_every=2))
    assert summary["epochs_done"] == 3
    assert [e for name, e in written if name == "last.pt"] == [2, 3]  # every 2nd epoch, and the last
    assert load_checkpoint(out / "last.pt")["epoch"] == 3
    with pytest.raises(UsageError, match="--save-every 0"):
        train(tiny(synth_data, tmp_path / "bad", save_every=0))


def test_run_folder_rules(full_run, synth_data, tmp_path):
    ref, _ = full_run
    with pytest.raises(OutputExistsError, match="--resume .*--force"):
        train(tiny(synth_data, ref, **RESUME_OPTS))
    with pytest.raises(UsageError, match="epochs"):
        train(tiny(synth_data, ref, resume=True, epochs=3, **RESUME_OPTS))
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(tiny(synth_data, tmp_path / "new", resume=True))
    with pytest.raises(UsageError, match="did you mean 'unetpp'"):
        train(tiny(synth_data, tmp_path / "x", arch="unetp"))
    with pytest.raises(UsageError, match="multiple of 32"):
        train(tiny(synth_data, tmp_path / "x", size=70))
    forced = tmp_path / "forced"
    shutil.copytree(ref, forced)
    (forced / "notes.txt").write_text("keep me")
    summary = train(tiny(synth_data, forced, force=True, epochs=1, max_steps=1, aug="none"))
    assert summary["steps"] == 1 and (forced / "notes.txt").read_text() == "keep me"
    assert _metrics(forced) == []  # the old run's log is gone


def test_pseudo_data_is_mixed_in(synth_data, tmp_path):
    from boneseg.data.layout import discover

    pseudo = tmp_path / "pseudo"
    for s in discover(synth_data)[:2]:
        for src, sub in ((s.image, "DCM"), (s.label, "outputs_json")):
            dst = pseudo / "train" / sub / "ID900" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    out = tmp_path / "run"
    summary = train(tiny(synth_data, out, pseudo=[str(pseudo)], epochs=1, max_steps=1, aug="none", splits=None, fold=1))
    assert summary["train_images"] == 6 + 2 and summary["val_images"] == 2
    assert (out.parent / "cache" / "pseudo-0").is_dir()
    assert json.loads((out / "config.json").read_text())["pseudo"] == [str(pseudo)]


def test_crop_mode_and_unified_hands(synth_data, tmp_path):
    out = tmp_path / "run"
    summary = train(
        tiny(
            synth_data,
            out,
            size=128,
            crop=64,
            unify_side="R",
            epochs=1,
            max_steps=2,
            loss="0.5*bce+0.5*dice+boundary",
            scheduler="poly",
            optimizer="sgd",
        )
    )
    assert summary["steps"] == 2
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["crop"] == 64 and cfg["unify_side"] == "R"


def test_cli_train_and_errors(synth_data, tmp_path):
    from typer.testing import CliRunner

    from boneseg.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    args = [
        "train",
        str(synth_data),
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
        "--max-steps",
        "1",
        "--aug",
        "none",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(out),
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "last.pt").is_file()
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and isinstance(result.exception, OutputExistsError)
    bad = runner.invoke(
        app,
        [
            "train",
            str(synth_data),
            "--arch",
            "unet",
            "--encoder",
            "resnet81",
            "--size",
            "64",
            "--out",
            str(tmp_path / "bad"),
        ],
    )
    assert isinstance(bad.exception, UsageError) and "did you mean 'resnet18'" in str(bad.exception)


def test_cli_train_reports_its_pace_warns_on_long_cpu_runs_and_fits_postprocess(
    synth_data, tmp_path, capsys, monkeypatch
):
    from boneseg.cli import main
    from boneseg.engine import plan

    monkeypatch.setattr(plan, "PACE_STEPS", 1)
    monkeypatch.setattr(plan, "CPU_WARN_SECONDS", 0)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        main(
            [
                "train",
                str(synth_data),
                "--arch",
                "unet",
                "--encoder",
                "resnet18",
                "--size",
                "64",
                "--epochs",
                "1",
                "--batch-size",
                "1",
                "--encoder-weights",
                "none",
                "--workers",
                "0",
                "--device",
                "cpu",
                "--aug",
                "none",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--fit-postprocess",
                "--out",
                str(out),
            ]
        )
    assert done.value.code == 0
    err = capsys.readouterr().err
    assert "device cpu" in err and " parameters " in err and "6 steps per epoch (6 train / 2 val images)" in err
    assert "s per step; about" in err and "Warning: training on the CPU will take about" in err
    assert "epoch 1/1  step 6" in err
    assert json.loads((out / "postprocess.json").read_text())["images"] == 2
    assert "fit_postprocess" not in json.loads((out / "config.json").read_text())


def test_epoch_lines_before_the_first_validation_show_no_best(tmp_path, capsys):
    """An epoch without validation (`--val-every 2`) prints `best -`, not a made-up -inf from epoch 0."""
    data = write_dataset(tmp_path / "data")
    code, _, err = cli(capsys, "train", data, *TINY, "--epochs", "2", "--val-every", "2", "--out", tmp_path / "r")
    assert code == 0, err
    first = next(ln for ln in err.splitlines() if ln.startswith("epoch 1/2"))
    assert "val_dice -  best -  lr" in first and "inf" not in err, first


def test_a_metadata_model_needs_the_patients_metadata(tmp_path, capsys):
    """--meta film/aux trained silently on the no-metadata vector without a metadata file, or with one whose
    IDs name none of the patients; now that is an error, and patients without a row are a warning."""
    data = write_dataset(tmp_path / "data", patients=2)
    args = ("train", data, *TINY, "--meta", "film", "--max-steps", "1")
    code, _, err = cli(capsys, *args, "--out", tmp_path / "a")
    assert code == 1 and "--meta film: no patient metadata" in error_line(err) and not (tmp_path / "a").exists()
    (data / "meta_data.csv").write_text("ID,age,sex,height,weight\nID100,50,M,170,70\n")
    code, _, err = cli(capsys, *args, "--out", tmp_path / "b")
    assert code == 1 and "names none of the dataset's 2 patients" in error_line(err), err
    (data / "meta_data.csv").write_text("ID,age,sex,height,weight\nID001,50,M,170,70\n")
    code, _, err = cli(capsys, *args, "--out", tmp_path / "c")
    assert code == 0 and "Warning:" in err and "no row for 1 of 2 patients (e.g. ID002)" in err, err


def test_dry_run_of_an_early_stopped_run_has_nothing_to_do(synth_data, tmp_path, monkeypatch, capsys):
    """A run stopped by --patience is finished: --resume --dry-run says so instead of counting the epochs left."""
    import boneseg.engine.train as engine

    flat = {"val_dice": 0.5, "val_dice_per_class": None, "val_loss": 1.0}
    monkeypatch.setattr(engine, "evaluate", lambda *a, **k: flat)
    out = tmp_path / "run"
    summary = train(tiny(synth_data, out, epochs=3, patience=1))
    assert summary["early_stopped"] and summary["epochs_done"] == 2
    from boneseg.engine.plan import dry_run

    plan = dry_run({"data": str(synth_data), "out": str(out), "resume": True, "workers": 0})
    assert plan["steps"] == 0 and "stopped early at epoch 2 (--patience 1)" in plan["finished"]
    code, stdout, err = cli(capsys, "train", synth_data, "--out", out, "--resume", "--dry-run", "--workers", "0")
    assert code == 0 and "nothing to do, the run stopped early at epoch 2" in err, err


ROOT = Path(__file__).resolve().parents[3]


# `train` options whose name differs from the field, and fields only the Python API sets.
RENAMED = ALIASES


API_ONLY = {"mean", "std", "model_kwargs"}


# Fields `distill` sets (its options: train's plus the teacher's, tests/unit/workflows/test_distill.py).
DISTILL = {"teacher", "teacher_test", "teacher_weights", "teacher_weight"}


# Options of the command that are no part of a run's config.
COMMAND_ONLY = {"json_out", "fit_postprocess", "config_file", "print_config", "dry_run"}


# Options whose help describes a default that depends on something else (no literal value).
DESCRIBED = {"splits", "amp", "channels_last", "cache_dir", "adapter_dim", "unfreeze", "deep_supervision"}


def _train_params() -> dict[str, click.Parameter]:
    from boneseg.cli import app

    command = typer.main.get_command(app).commands["train"]
    return {RENAMED.get(p.name, p.name): p for p in command.params if p.name not in COMMAND_ONLY}


def _same(text: str, default) -> bool:
    if text in ("none", "off") and default in (None, 0, False):
        return True
    try:
        return default is not None and float(text) == float(default)
    except (TypeError, ValueError):
        return text == str(default)


def test_train_options_match_train_config():
    """Every field has its option and no option lacks a field; a default an option's help names is the
    field's default (the options themselves default to "not given", so a resume knows what was given)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    params = _train_params()
    assert set(params) - COMMAND_ONLY == set(fields) - API_ONLY - DISTILL
    for name, p in params.items():
        if name in COMMAND_ONLY:
            continue
        default = getattr(TrainConfig(), name)
        assert p.default in (None, default), f"--{name}: option default {p.default!r} != {default!r}"
        shown = re.search(r"\[default: ([^\]]+)\]", getattr(p, "help", "") or "")
        if shown and name not in DESCRIBED:
            assert _same(shown.group(1), default), f"--{name}: help says {shown.group(1)!r}, TrainConfig {default!r}"


def test_runtime_options_are_documented_as_such():
    doc = (ROOT / "docs" / "train.md").read_text(encoding="utf-8")
    runtime = doc[doc.index("The options of one invocation") :]
    runtime = runtime[: runtime.index("never saved")]
    for name in set(RUNTIME) - {"out", "resume", "force"}:
        assert f"`--{name.replace('_', '-')}`" in runtime, name


def weights(path: Path, params_only: bool = False) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["model"]
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v for k, v in state.items() if not (params_only and k.endswith(skip))}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def listing(*roots: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_size if p.is_file() else -1) for r in roots for p in r.rglob("*"))


@pytest.fixture(scope="module")
def run_a(data, tmp_path_factory):
    """A finished one-epoch run to start from or reproduce."""
    out = tmp_path_factory.mktemp("runs") / "a"
    with pytest.raises(SystemExit) as done:
        main(
            [
                str(a)
                for a in [
                    "train",
                    data,
                    *TRAIN_ARGS,
                    "--epochs",
                    "1",
                    "--cache-dir",
                    out.parent / "cache",
                    "--out",
                    out,
                ]
            ]
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
        capsys, "train", data, *TRAIN_ARGS, "--config", tmp_path / "c.yml", "--dry-run", "--out", tmp_path / "r"
    )
    assert code == 2 and culprit in error_line(err), err
    assert not (tmp_path / "r").exists()


def test_dry_run_writes_nothing(capsys, data, run_a, tmp_path):
    before = listing(data, tmp_path)
    code, out, err = cli(
        capsys,
        "train",
        data,
        *TRAIN_ARGS,
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
    code, _, err = cli(capsys, "train", data, *TRAIN_ARGS, "--dry-run", "--out", run_a)  # refused as a real run is
    assert code == 1 and "not empty" in error_line(err)


def test_init_from_loads_the_whole_network_and_resume_keeps_it(capsys, data, run_a, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(run_a, source)
    args = ["train", data, *TRAIN_ARGS, "--epochs", "2", "--lr", "1e-12", "--init-from", source]
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
    base = ["train", data, *TRAIN_ARGS, "--epochs", "2", "--out", tmp_path / "r"]
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
    code, _, err = cli(capsys, "train", data, *TRAIN_ARGS, *change, "--init-from", run_a, "--out", tmp_path / "r")
    line = error_line(err)
    assert code == 1 and "--init-from" in line and culprit in line, line
    assert not (tmp_path / "r").exists()


def test_patience_stops_a_resumed_run_at_the_same_epoch(capsys, data, tmp_path):
    """Best at epoch 1, worse after: --patience 2 stops at epoch 3 of 12; cut after epoch 2 (one validation
    without improvement already counted) and resumed, it stops at epoch 3 too."""
    args = ["train", data, *TRAIN_ARGS, "--epochs", "12", "--lr", "3e-3", "--patience", "2"]
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
    code, _, err = cli(capsys, "train", data, *TRAIN_ARGS, *extra, "--loss", loss, "--dry-run", "--out", tmp_path / "r")
    assert code == 0, err
    assert f"no --loss term sees {untrained}" in " ".join(err.split()), err
    code, _, err = cli(
        capsys, "train", data, *TRAIN_ARGS, "--loss", "bce@wrist+dice@fingers", "--dry-run", "--out", tmp_path / "r"
    )
    assert code == 0 and "no --loss term sees" not in err


def test_the_target_mixes_labels_and_teacher():
    from boneseg.engine.train import soft_target

    mask = torch.tensor([1, 0, 1], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 29, 2, 2)
    teacher = torch.full((3, 29, 2, 2), 51, dtype=torch.uint8)  # 0.2
    got = soft_target(mask, {"teacher": teacher, "labelled": torch.tensor([True, True, False])}, 0.25, "cpu")
    assert torch.allclose(got[0], torch.full((29, 2, 2), 0.75 + 0.05))
    assert torch.allclose(got[1], torch.full((29, 2, 2), 0.05))
    assert torch.allclose(got[2], torch.full((29, 2, 2), 0.2))  # unlabelled: the teacher alone
