"""Metadata heads / FiLM, the boundary head and distance maps: trained a step, saved, reapplied by predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from util import tiny_config

from boneseg.classes import NUM_CLASSES
from boneseg.modelling.heads import META_DIM, AuxModel, aux_loss, meta_table, meta_vector, outer_band, side_target
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


# -- metadata ---------------------------------------------------------------------------------------


def test_meta_vector_standardises_and_flags_missing_fields():
    v = meta_vector({"age": 55, "sex": "F", "height": float("nan"), "weight": None})
    assert v.shape == (META_DIM,)
    assert v[0] == pytest.approx(1.0) and v[1] == -1.0 and v[2] == 0 and v[3] == 0
    assert v[4:].tolist() == [1, 1, 0, 0]
    assert not meta_vector(None).any()


def test_meta_table_reads_the_dataset_file(synth_data, tmp_path):
    table = meta_table(synth_data)
    assert {"ID001", "ID002"} <= set(table) and all(v[4:].all() for v in table.values())
    below = meta_table(synth_data / "test" / "DCM")  # found from below, as predict does
    assert below.keys() == table.keys() and all(np.array_equal(below[k], table[k]) for k in table)
    assert meta_table(tmp_path) == {}


def test_side_target_from_masks():
    masks = np.zeros((NUM_CLASSES, 8, 8), bool)
    masks[0, :, 1] = True  # thumb left
    masks[15, :, 6] = True  # little finger right
    assert side_target(masks) == 1.0
    assert side_target(masks[:, :, ::-1]) == 0.0
    assert np.isnan(side_target(np.zeros_like(masks)))


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


# -- distance maps and the dtbce loss ----------------------------------------------------------------


def test_distance_maps_are_signed_and_clipped():
    from boneseg.data.masks import DIST_ZERO, decode_distance, distance_maps

    masks = np.zeros((2, 40, 40), bool)
    masks[0, 10:30, 10:30] = True
    d = decode_distance(distance_maps(masks, clip=6), clip=6)
    assert d.dtype == np.float32
    assert (d[0][masks[0]] > 0).all() and (d[0][~masks[0]] < 0).all()
    assert d[0, 20, 20] == 6 and d[0, 0, 0] == -6 and d[0, 10, 20] == 1 and d[0, 9, 20] == -1
    assert (d[1] == -6).all()  # empty class: far outside everywhere
    assert decode_distance(np.zeros(1, np.uint8), 6)[0] == -6  # augmentation padding = far outside
    assert distance_maps(masks, 6).dtype == np.uint8 and int(distance_maps(masks, 6)[0, 10, 20]) == DIST_ZERO + 1


def test_distance_maps_are_cached_and_follow_augmentation(synth_data, tmp_path):
    from boneseg.data.dataset import Item, SegDataset
    from boneseg.data.layout import discover
    from boneseg.data.masks import MaskCache, decode_distance
    from boneseg.data.transforms import build_augmentation

    cache = MaskCache(tmp_path / "cache")
    sample = discover(synth_data)[0]
    first = cache.distance(sample, 64)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any(".dist16." in f for f in files)
    assert np.array_equal(cache.distance(sample, 64), first)
    ds = SegDataset([Item(sample, cache)], 64, build_augmentation("strong"), distance=16)
    for seed in (1, 2, 3):
        item = ds[(0, seed)]
        d = decode_distance(item["dist"].numpy())
        assert np.array_equal(d > 0, item["mask"].numpy().astype(bool))  # warped together, exactly


def test_dtbce_weighs_far_mistakes_more():
    from boneseg.data.masks import distance_maps
    from boneseg.modelling.losses import LossTerm, build_loss, parse_loss

    assert parse_loss("bce+dice+0.5*dtbce")[-1] == LossTerm(0.5, "dtbce")
    target = torch.zeros(1, 1, 40, 40)
    target[..., 10:30, 10:30] = 1
    dist = torch.from_numpy(distance_maps(target[0].bool().numpy()))[None]
    loss = build_loss("dtbce")
    assert loss.needs_distance
    near, far = target.clone() * 20 - 10, target.clone() * 20 - 10
    near[..., 9, 20] = 10  # a wrong pixel next to the edge
    far[..., 39, 39] = 10  # a wrong pixel far from the bone
    assert loss(far, target, dist) > loss(near, target, dist)
    assert torch.equal(loss(near, target), loss(near, target, dist))  # computed from the target when not given


def test_dtbce_trains_a_step(synth_data, tmp_path):
    from boneseg.engine.train import train
    from boneseg.runs.checkpoint import load_checkpoint

    run = tmp_path / "run"
    s = train(tiny(synth_data, run, loss="bce+dice+0.5*dtbce", distance_clip=8, aug="strong"))
    assert s["steps"] == 1
    cfg = load_checkpoint(run / "last.pt")["config"]
    assert cfg["loss"] == "bce+dice+0.5*dtbce" and cfg["distance_clip"] == 8
    assert any(".dist8." in p.name for p in (tmp_path / "cache").iterdir())
