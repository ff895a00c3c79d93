"""Input-channel modes: one `make_channels` for training and prediction, saved in the checkpoint."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from util import tiny_config

from boneseg.data.channels import make_channels, n_channels, parse_mode
from boneseg.data.transforms import normalize, to_input
from boneseg.errors import UsageError
from boneseg.runs.config import TrainConfig


def tiny(data: Path, out: Path, **extra) -> dict:
    return tiny_config(data, out, **{"max_steps": 1, **extra})


def test_modes_and_their_channels():
    rng = np.random.default_rng(0)
    img = (rng.random((40, 48)) * 255).astype(np.uint8)
    assert n_channels("gray") == 1 and n_channels("rgb") == 3 and n_channels("clahe3+sobel+laplacian") == 5
    assert parse_mode("CLAHE3+Sobel") == ("clahe3", ("sobel",))
    g = make_channels(img, "gray")
    assert g.shape == (1, 40, 48) and g.dtype == np.uint8 and np.array_equal(g[0], img)
    c = make_channels(img, "clahe3+laplacian")
    assert c.shape == (4, 40, 48)
    assert np.array_equal(c[0], img)
    assert np.array_equal(c[1], cv2.createCLAHE(2.0, (8, 8)).apply(img))
    assert np.array_equal(c[2], cv2.createCLAHE(4.0, (8, 8)).apply(img))
    flat = np.full((32, 32), 90, np.uint8)
    assert not make_channels(flat, "gray+sobel+laplacian")[1:].any()  # no edges on a flat image
    step = np.zeros((32, 32), np.uint8)
    step[:, 16:] = 200
    sob = make_channels(step, "gray+sobel")[1]
    assert sob[:, 15:17].min() > 100 and sob[:, :13].max() == 0  # the edge, and only the edge


@pytest.mark.parametrize("bad", ["clahe", "gray+canny", "gray+sobel+sobel", "hsv"])
def test_unknown_modes_are_usage_errors(bad):
    with pytest.raises(UsageError, match="--channels"):
        n_channels(bad)


def test_normalize_derives_the_channels_from_a_gray_batch():
    """Prediction hands normalize a 1-channel batch; training hands it the dataset's channels: same input."""
    rng = np.random.default_rng(1)
    imgs = (rng.random((2, 32, 32)) * 255).astype(np.uint8)
    cfg = TrainConfig(channels="clahe3+sobel", mean=[0.5], std=[0.25])
    from_gray = normalize(torch.from_numpy(imgs), cfg)
    made = torch.from_numpy(np.stack([make_channels(i, "clahe3+sobel") for i in imgs]))
    assert from_gray.shape == (2, 4, 32, 32)
    assert torch.equal(from_gray, normalize(made, cfg))
    assert torch.equal(to_input(imgs[0], cfg), from_gray[0])
    # gray/rgb keep the old path: rgb repeats the image
    rgb = normalize(torch.from_numpy(imgs), TrainConfig(channels="rgb"))
    assert rgb.shape == (2, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 2])


def test_dataset_makes_the_channels_after_augmentation(synth_data, tmp_path):
    from boneseg.data.dataset import Item, SegDataset
    from boneseg.data.layout import discover
    from boneseg.data.masks import MaskCache
    from boneseg.data.transforms import build_augmentation

    cache = MaskCache(tmp_path / "cache")
    items = [Item(s, cache) for s in discover(synth_data)[:1]]
    aug = build_augmentation("strong")
    gray = SegDataset(items, 64, aug)[(0, 7)]["image"]
    multi = SegDataset(items, 64, aug, channels="clahe3+sobel")[(0, 7)]["image"]
    assert gray.shape == (1, 64, 64) and multi.shape == (4, 64, 64)
    assert torch.equal(multi, torch.from_numpy(make_channels(gray[0].numpy(), "clahe3+sobel")))


def test_train_saves_the_mode_and_predict_reapplies_it(synth_data, tmp_path):
    from boneseg.engine.train import train
    from boneseg.inference import PredictOptions, predict
    from boneseg.runs.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    summary = train(tiny(synth_data, run, channels="clahe3+laplacian"))
    assert summary["steps"] == 1
    state = load_checkpoint(run / "last.pt")
    assert state["config"]["channels"] == "clahe3+laplacian" and state["config"]["in_channels"] == 4
    assert state["model"]["encoder.conv1.weight"].shape[1] == 4

    # Same weights, another 4-channel mode in the config: predict must follow the config (different CSV).
    swapped = tmp_path / "swapped.pt"
    save_checkpoint(swapped, dict(state, config=dict(state["config"], channels="clahe3+sobel")))
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    kw = {"options": PredictOptions(workers=0, device="cpu")}
    predict(synth_data, [run], a, **kw)
    predict(synth_data, [run / "last.pt"], c, **kw)
    predict(synth_data, [swapped], b, **kw)
    assert a.read_text() == c.read_text()
    assert a.read_text() != b.read_text()


def test_cli_rejects_an_unknown_mode(synth_data, tmp_path):
    from boneseg.cli import app

    res = CliRunner().invoke(
        app,
        [
            "train",
            str(synth_data),
            "--arch",
            "unet",
            "--encoder",
            "resnet18",
            "--size",
            "64",
            "--channels",
            "clahe",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert isinstance(res.exception, UsageError)
    assert "--channels 'clahe'" in str(res.exception) and "clahe3" in str(res.exception)
