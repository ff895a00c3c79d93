"""--log tensorboard|wandb|none: scalars and prediction-vs-label overlays each validation; W&B only when
installed and logged in, and never with a key of boneseg's making."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from util import TINY, cli, error_line, fake_wandb, tiny_config

from boneseg.engine.tracking import check_logger, make_tracker, overlays
from boneseg.errors import UsageError


def tiny(data: Path, out: Path, **extra) -> dict:
    return tiny_config(data, out, **{"aug": "none", **extra})


def test_logger_names():
    assert check_logger(None) == "none" and check_logger("TensorBoard") == "tensorboard"
    with pytest.raises(UsageError, match="did you mean 'wandb'"):
        check_logger("wanb")
    assert make_tracker("none", "/nonexistent", {}) is None


def test_wandb_missing_or_logged_out_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(UsageError, match="needs the wandb package"):
        make_tracker("wandb", tmp_path, {})
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(None))
    with pytest.raises(UsageError, match="not logged in"):
        make_tracker("wandb", tmp_path, {})


@pytest.mark.parametrize(
    ("args", "module", "message"),
    [
        (["--log", "tensorboard"], "torch.utils.tensorboard", "needs the tensorboard package"),
        (["--tensorboard"], "torch.utils.tensorboard", "needs the tensorboard package"),
        (["--log", "wandb"], "wandb", "needs the wandb package"),
        (["--log", "wandb", "--tensorboard"], None, "give one tracker"),
    ],
)
def test_unusable_tracker_stops_before_the_run_starts(monkeypatch, capsys, synth_data, tmp_path, args, module, message):
    if module:
        monkeypatch.setitem(sys.modules, module, None)  # not installed
    run = tmp_path / "run"
    rc, _, err = cli(
        capsys, "train", str(synth_data), "--out", str(run), "--cache-dir", str(tmp_path / "cache"), *TINY, *args
    )
    assert rc != 0 and message in error_line(err)
    assert not run.exists() and not (tmp_path / "cache").exists()  # no run folder, nothing cached


def test_wandb_offline_needs_no_login(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(None))
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert make_tracker("wandb", tmp_path, {}).run_id == "run-0"


def test_wandb_run_logs_scalars_and_overlays(monkeypatch, synth_data, tmp_path):
    from boneseg.engine.train import train

    secret = "0123456789abcdef0123456789abcdef01234567"
    mod = fake_wandb(secret)
    monkeypatch.setitem(sys.modules, "wandb", mod)
    run = tmp_path / "run"
    train(tiny(synth_data, run, log="wandb", log_images=2))
    (wb,) = mod.runs
    assert wb.finished and "api_key" not in str(wb.kwargs) and secret not in str(wb.kwargs)
    assert wb.kwargs["config"]["arch"] == "unet" and "log" not in wb.kwargs["config"]  # the run, not the invocation
    scalars = [v for _, v in wb.logged if "val_dice" in v]
    images = [v for _, v in wb.logged if "val/prediction_vs_label" in v]
    assert scalars and "val_dice_per_class/Pisiform" in scalars[0]
    assert len(images[0]["val/prediction_vs_label"]) == 2
    assert images[0]["val/prediction_vs_label"][0] == ("image", (64, 64, 3))
    for f in run.rglob("*"):  # nothing boneseg wrote holds the key
        if f.is_file() and f.suffix in (".json", ".jsonl"):
            assert secret not in f.read_text()


def test_tensorboard_gets_scalars_and_images(synth_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from boneseg.engine.train import train
    from boneseg.runs.checkpoint import load_checkpoint

    run = tmp_path / "run"
    train(tiny(synth_data, run, log="tensorboard", log_images=1))
    assert "log" not in load_checkpoint(run / "best.pt")["config"]  # an option of the invocation, not the run
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert "val_dice" in acc.Tags()["scalars"] and "val_dice_per_class/Ulna" in acc.Tags()["scalars"]
    assert acc.Tags()["images"] == ["val/prediction_vs_label/0"]


def test_overlays_colour_prediction_and_label():
    img = np.zeros((8, 8), np.uint8)
    pred = np.zeros((29, 8, 8), bool)
    gt = np.zeros((29, 8, 8), bool)
    pred[0, :4] = True
    gt[0, 2:6] = True
    (rgb,) = overlays([(img, pred, gt)])
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert rgb[0].any() and rgb[5].any() and not rgb[7].any()
    assert not np.array_equal(rgb[0, 0], rgb[5, 0]) and not np.array_equal(rgb[3, 0], rgb[0, 0])


def test_tensorboard_resume_logs_each_epoch_once(synth_data, tmp_path):
    """A resume from a ``last.pt`` older than the log (a crash between the two) repeats epochs: their
    earlier events are purged, and the logged values are the checkpoint history's."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from boneseg.engine.train import train
    from boneseg.runs.checkpoint import load_checkpoint

    run = tmp_path / "run"
    cfg = tiny(synth_data, run, epochs=2, log="tensorboard", log_images=0)
    train({**cfg, "max_steps": 1})
    early = (run / "last.pt").read_bytes()  # epoch 0
    train({**cfg, "resume": True})
    (run / "last.pt").write_bytes(early)
    train({**cfg, "resume": True})
    acc = EventAccumulator(str(run / "tensorboard")).Reload()
    history = load_checkpoint(run / "last.pt")["history"]
    logged = [(e.step, e.value) for e in acc.Scalars("train_loss")]
    assert logged == [(h["epoch"], pytest.approx(h["train_loss"])) for h in history]
