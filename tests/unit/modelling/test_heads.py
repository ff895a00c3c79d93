"""Metadata heads / FiLM and the boundary head: trained a step, saved, reapplied by predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from util import tiny_config

from boneseg.modelling.heads import META_DIM, AuxModel, aux_loss, meta_vector, outer_band
from boneseg.modelling.models import build_model
from boneseg.runs.config import TrainConfig


def tiny(data: Path, out: Path, **extra) -> dict:
    return tiny_config(data, out, **{"max_steps": 1, **extra})


SMALL = {
    "arch": "unet",
    "encoder": "resnet18",
    "encoder_weights": "none",
    "in_channels": 1,
    "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]},
}


def test_wrapper_outputs_and_eval_equivalence():
    torch.manual_seed(0)
    model = build_model({**SMALL, "meta": "aux+film", "boundary_head": 1.0})
    assert isinstance(model, AuxModel)
    x = torch.randn(2, 1, 64, 64)
    out = model.train()(x, meta=torch.zeros(2, META_DIM))
    assert out["masks"].shape == (2, 29, 64, 64) and out["boundary"].shape == (2, 29, 64, 64)
    assert out["meta"].shape == (2, 5)
    model.eval()
    with torch.no_grad():
        y = model(x)
        assert torch.equal(y, model.base(x))  # FiLM starts as the identity; no sharpening configured
        model.sharpen = 0.9
        sharp = model(x)
    assert (torch.sigmoid(sharp) <= torch.sigmoid(y) + 1e-6).all() and not torch.allclose(sharp, y)
    assert build_model(SMALL).__class__.__name__ == "Unet"  # nothing asked: the bare smp model


def test_aux_loss_masks_missing_metadata():
    torch.manual_seed(0)
    target = torch.zeros(2, 29, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    pred = torch.zeros(2, 5, requires_grad=True)
    meta = torch.zeros(2, META_DIM)
    meta[0] = torch.from_numpy(meta_vector({"age": 70, "sex": "M", "height": 180, "weight": 90}))
    batch = {"meta": meta, "side": torch.tensor([1.0, float("nan")])}
    loss = aux_loss({"meta": pred}, batch, target, TrainConfig(meta_weight=1.0))
    loss.backward()
    assert pred.grad[0].abs().sum() > 0
    assert pred.grad[1].abs().sum() == 0  # the image without metadata nor side contributes nothing
    band = outer_band(target)
    assert band[0, 0, 4:12, 4:12].sum() == 0 and band[0, 0, 3, 4:12].all() and band.max() == 1


def test_meta_and_boundary_train_save_and_predict(synth_data, tmp_path):
    from boneseg.engine.train import train
    from boneseg.inference import predict
    from boneseg.runs.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    train(tiny(synth_data, run, meta="aux+film", boundary_head=0.5))
    state = load_checkpoint(run / "last.pt")
    cfg = state["config"]
    assert cfg["meta"] == "aux+film" and cfg["boundary_head"] == 0.5
    keys = set(state["model"])
    assert {"meta_head.0.weight", "film.2.weight", "boundary_head.0.weight"} <= keys
    assert any(k.startswith("base.encoder.") for k in keys)

    # Make FiLM strong so the metadata visibly matters, then predict with and without it.
    sd = dict(state["model"])
    g = torch.Generator().manual_seed(0)
    sd["film.2.weight"] = torch.randn(sd["film.2.weight"].shape, generator=g)
    sd["film.2.bias"] = torch.randn(sd["film.2.bias"].shape, generator=g)
    strong = tmp_path / "strong.pt"
    save_checkpoint(strong, dict(state, model=sd))
    empty = tmp_path / "meta.csv"
    empty.write_text("ID,age\n999,50\n")  # a metadata file without these patients
    from boneseg.inference import PredictOptions

    on = PredictOptions(workers=0, device="cpu")
    kw = {"options": on, "postprocess_rules": "none"}
    with_meta, without = tmp_path / "a.csv", tmp_path / "b.csv"
    predict(synth_data, [strong], with_meta, **kw)
    predict(synth_data, [strong], without, **{**kw, "options": on.replace(meta=empty)})
    assert with_meta.read_text() != without.read_text()

    # tta feeds the same metadata: its scores are the Dice of predict's CSV, with and without it
    from util import csv_dice

    from boneseg.data.layout import discover
    from boneseg.workflows.validation import evaluate_policies

    val = discover(synth_data, "train")[:3]
    scores = []
    for name, meta in (("with", synth_data), ("without", empty)):
        out = tmp_path / f"val-{name}.csv"
        predict(val, [strong], out, **{**kw, "options": on.replace(meta=meta)})
        report = evaluate_policies(
            synth_data,
            [strong],
            policies=["none"],
            samples=val,
            search=None,
            options=on.replace(meta=None if name == "with" else meta),
        )
        got, want = report.policies["resize:none"]["per_class_dice"], csv_dice(out, val)
        np.testing.assert_allclose(list(got.values()), list(want.values()), atol=1e-12)
        scores.append(list(got.values()))
    assert scores[0] != scores[1]

    # Sharpening is an inference setting read from the checkpoint's config.
    sharp = tmp_path / "sharp.pt"
    save_checkpoint(sharp, dict(state, config=dict(cfg, boundary_sharpen=0.9)))
    plain_csv, sharp_csv = tmp_path / "p.csv", tmp_path / "s.csv"
    predict(synth_data, [run / "last.pt"], plain_csv, **kw)
    predict(synth_data, [sharp], sharp_csv, **kw)
    assert plain_csv.read_text() != sharp_csv.read_text()


def test_dtbce_trains_a_step(synth_data, tmp_path):
    from boneseg.engine.train import train
    from boneseg.runs.checkpoint import load_checkpoint

    run = tmp_path / "run"
    s = train(tiny(synth_data, run, loss="bce+dice+0.5*dtbce", distance_clip=8, aug="strong"))
    assert s["steps"] == 1
    cfg = load_checkpoint(run / "last.pt")["config"]
    assert cfg["loss"] == "bce+dice+0.5*dtbce" and cfg["distance_clip"] == 8
    assert any(".dist8." in p.name for p in (tmp_path / "cache").iterdir())
