"""The training engine on CPU with tiny real smp models: outputs, bit-exact resume, stops, pseudo data."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from util import TINY, cli, error_line, write_dataset

from boneseg.classes import CLASSES
from boneseg.engine.train import TrainingInterrupted, train
from boneseg.errors import CheckpointError, DataError, OutputExistsError, UsageError
from boneseg.runs.checkpoint import load_checkpoint, load_model


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
