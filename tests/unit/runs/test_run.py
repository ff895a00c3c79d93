"""`Run`: a run folder resolved once (an old checkpoint typed too); every reader takes its typed fields."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from boneseg.classes import CLASSES
from boneseg.errors import UsageError
from boneseg.modelling.models import build_model
from boneseg.runs.checkpoint import save_checkpoint
from boneseg.runs.config import TrainConfig, merge_resume
from boneseg.runs.run import Run


def _checkpoint(path: Path, **config) -> Path:
    cfg = {
        "arch": "unet",
        "encoder": "resnet18",
        "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]},
        "in_channels": 1,
        "classes": list(CLASSES),
        **config,
    }
    save_checkpoint(path, {"config": cfg, "model": build_model(cfg).state_dict(), "epoch": 1, "step": 1, "metrics": {}})
    return path


def test_run_open_types_an_old_checkpoint(tmp_path):
    """Keys of other versions are ignored and missing ones take `TrainConfig`'s defaults: no reader has its own."""
    ckpt = _checkpoint(tmp_path / "run" / "best.pt", wrist=True, unify_hands="R", fold=None, future_key=1, workers=7)
    run = Run.open(tmp_path / "run")
    defaults = TrainConfig()
    assert isinstance(run.config, TrainConfig) and run.checkpoint == ckpt
    assert run.config.unify_side == "R" and run.config.wrist
    assert (run.size, run.fold, run.splits, run.channels) == (defaults.size, defaults.fold, None, "gray")
    assert (run.mean, run.std, run.classes) == (defaults.mean, defaults.std, tuple(CLASSES))
    assert run.config.workers == defaults.workers  # a runtime option an old checkpoint held is not the run's
    assert run.postprocess_rules is None
    assert Run.open(run) is run


def test_every_reader_takes_the_run_defaults(tmp_path):
    """The predictor and the wrist stage of a checkpoint that names no size use the same one (`TrainConfig`)."""
    from boneseg.inference.predictor import Predictor
    from boneseg.inference.stages import ImageStages

    ckpt, wrist = _checkpoint(tmp_path / "old.pt"), _checkpoint(tmp_path / "wrist.pt", wrist=True)
    predictor = Predictor.from_checkpoints([ckpt], device="cpu")
    stages = ImageStages(predictor, wrist_model=wrist)
    size = TrainConfig().size
    assert predictor.size_of(predictor.models[0]) == size and stages.wrist.size == size
    assert stages.wrist.margin == TrainConfig().wrist_margin
    assert predictor.models[0].run.checkpoint == ckpt


def test_predict_opens_each_checkpoint_once(tmp_path, monkeypatch):
    """`predict -m RUN` loads and resolves the run once (post-processing rules included)."""
    from util import write_dataset

    from boneseg.inference.pipeline import PredictOptions
    from boneseg.inference.run import predict

    data = write_dataset(tmp_path / "data", patients=1, size=64, test_patients=1)
    run = tmp_path / "run"
    _checkpoint(run / "best.pt", size=64)
    (run / "postprocess.json").write_text('{"classes": {}}', encoding="utf-8")
    from boneseg.runs import run as run_mod

    loads, resolved = [], []
    real_load, real_resolve = torch.load, run_mod.resolve_checkpoint
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(Path(f)) or real_load(f, *a, **k))
    monkeypatch.setattr(run_mod, "resolve_checkpoint", lambda p: resolved.append(Path(p)) or real_resolve(p))
    with pytest.warns(Warning, match="post-processing rules"):
        predict(data, [run], tmp_path / "sub.csv", options=PredictOptions(device="cpu", workers=0))
    assert resolved.count(run) == 1 and loads.count(run / "best.pt") == 1


def test_one_resize_rule_for_training_and_prediction(tmp_path):
    """A non-square image reaches a model with the same pixels in the training cache and in the predictor."""
    import cv2
    import numpy as np

    from boneseg.data.layout import Sample
    from boneseg.data.masks import build_sample
    from boneseg.inference.predictor import InputPlan

    rng = np.random.default_rng(0)
    image = (rng.random((160, 30)) * 255).astype(np.uint8)  # fewer pixels, but the width grows
    cv2.imwrite(str(tmp_path / "a.png"), image)
    trained = build_sample(Sample("a.png", tmp_path / "a.png"), 64).image
    predicted = InputPlan(frozenset({64})).item(0, "a.png", image, "R").inputs[(64, 64)].numpy()
    assert np.array_equal(trained, predicted)


def test_a_resume_compares_settings_not_their_spelling():
    """What a config file or a command may write otherwise than the run saved it is the same setting."""
    saved = TrainConfig(data="d", out="o", optimizer="adamw", scheduler="cosine", mean=[0.449]).to_dict()
    given = {"optimizer": "AdamW", "scheduler": "Cosine", "mean": 0.449, "std": 0.226, "arch": "Unet"}
    assert merge_resume(given, saved).optimizer == "adamw"
    for key, value in (("mean", 0.5), ("optimizer", "sgd"), ("std", [0.226, 0.226])):
        with pytest.raises(UsageError, match=f"the run was started with {key}="):
            merge_resume({key: value}, saved)
