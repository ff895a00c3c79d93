"""--log tensorboard|wandb|none: scalars and prediction-vs-label overlays each validation; W&B only when
installed and logged in, and never with a key of boneseg's making."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from util import fake_wandb, tiny_config

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

    from boneseg.engine.checkpoint import load_checkpoint
    from boneseg.engine.train import train

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
