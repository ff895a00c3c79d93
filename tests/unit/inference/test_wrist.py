"""The wrist second stage: training on carpals, predict's paste-back, the stage's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from util import tiny_config

from boneseg.classes import CARPALS, CLASSES, NUM_CLASSES
from boneseg.data.wrist import CARPAL_IDX, box_from_masks


def tiny(data: Path, out: Path, **extra) -> dict:
    return tiny_config(data, out, **{"aug": "none", **extra})


def test_refine_replaces_carpals_inside_the_box_only(synth_data, tmp_path):
    from boneseg.engine.train import train
    from boneseg.inference.predictor import load_models
    from boneseg.inference.wrist import WristStage

    run = tmp_path / "wrist"
    train(tiny(synth_data, run, wrist=True, max_steps=1))
    stage = WristStage(load_models([run], torch.device("cpu"))[0], torch.device("cpu"))
    probs = torch.full((NUM_CLASSES, 128, 128), 0.25)
    probs[CARPAL_IDX, 60:80, 40:70] = 0.9
    before = probs.clone()
    image = torch.randint(0, 255, (128, 128), dtype=torch.uint8)
    stage.refine(probs, image)
    others = [i for i in range(NUM_CLASSES) if i not in CARPAL_IDX]
    assert torch.equal(probs[others], before[others])
    y0, y1, x0, x1 = box_from_masks(before, stage.margin)
    outside = torch.ones(128, 128, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert (probs[CARPAL_IDX][:, outside] == 0).all()
    assert not torch.equal(probs[CARPAL_IDX, y0:y1, x0:x1], before[CARPAL_IDX, y0:y1, x0:x1])
    empty = torch.zeros(NUM_CLASSES, 32, 32)
    assert torch.equal(stage.refine(empty.clone(), image[:32, :32]), empty)  # no carpals: unchanged


def test_wrist_training_and_predict_with_two_models(synth_data, tmp_path):
    from boneseg.engine.train import train
    from boneseg.inference import PredictOptions, predict
    from boneseg.runs.checkpoint import load_checkpoint, save_checkpoint
    from boneseg.submission import read_submission

    wrist = tmp_path / "wrist"
    train(tiny(synth_data, wrist, wrist=True, wrist_margin=0.2))
    state = load_checkpoint(wrist / "best.pt")
    assert state["config"]["wrist"] is True and state["config"]["wrist_margin"] == 0.2
    line = json.loads((wrist / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["val_dice"] == pytest.approx(np.mean([line["val_dice_per_class"][c] for c in CARPALS]))

    first = tmp_path / "first"
    train(tiny(synth_data, first, max_steps=1))
    # A first stage that sees carpal bones everywhere: the wrist box is then the whole (square) image.
    st = load_checkpoint(first / "last.pt")
    sd = dict(st["model"])
    bias = sd["segmentation_head.0.bias"].clone()
    bias[CARPAL_IDX] = 20.0
    sd["segmentation_head.0.bias"] = bias
    forced = tmp_path / "first.pt"
    save_checkpoint(forced, dict(st, model=sd))
    on = PredictOptions(workers=0, device="cpu")
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    predict(synth_data, [forced], one, options=on)
    predict(synth_data, [forced], two, options=on.replace(wrist_model=wrist))
    a, b = read_submission(one), read_submission(two)
    changed = set()
    for img in a.images:
        ra, rb = dict(zip(CLASSES, a.image_rles(img))), dict(zip(CLASSES, b.image_rles(img)))
        for c in CLASSES:
            if c not in CARPALS:
                assert ra[c] == rb[c], (img, c)
            elif ra[c] != rb[c]:
                changed.add(c)
    assert changed  # the wrist model's carpal predictions replaced the all-foreground first stage

    # tta runs the same second stage: its scores are the Dice of predict's CSV
    from util import csv_dice

    from boneseg.data.layout import discover
    from boneseg.workflows.validation import evaluate_policies

    val = discover(synth_data, "train")[:3]
    out = tmp_path / "val.csv"
    predict(val, [forced], out, options=on.replace(wrist_model=wrist), tta="hflip")
    report = evaluate_policies(
        synth_data,
        [forced],
        policies=["none", "hflip"],
        samples=val,
        search=None,
        options=on.replace(wrist_model=wrist),
    )
    got, want = report.policies["resize:hflip"]["per_class_dice"], csv_dice(out, val)
    np.testing.assert_allclose(list(got.values()), list(want.values()), atol=1e-12)
    plain = evaluate_policies(synth_data, [forced], policies=["hflip"], samples=val, search=None, options=on)
    assert plain.policies["resize:hflip"]["per_class_dice"] != got


def save_untrained(path: Path, cfg: dict) -> Path:
    """A tiny real checkpoint straight from `build_model` (no training)."""
    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import save_checkpoint

    save_checkpoint(path, {"config": cfg, "model": build_model(cfg).state_dict(), "epoch": 1, "step": 1, "metrics": {}})
    return path


@pytest.mark.parametrize("command", ["predict", "tta"])
def test_a_model_in_the_wrong_stage_is_refused_in_one_line(synth_data, tmp_path, capsys, command):
    """A wrist model as the first stage (it would segment the whole image as a wrist crop) or a whole-image
    model as the wrist stage (it would segment the crop as a whole hand) is refused, not run."""
    from util import cli, error_line

    whole = save_untrained(tmp_path / "whole.pt", tiny(synth_data, tmp_path / "w"))
    wrist = save_untrained(tmp_path / "wrist.pt", tiny(synth_data, tmp_path / "c", wrist=True))
    out = ["-o", tmp_path / "o.csv"] if command == "predict" else ["--search", "0.5,0.5"]
    common = [command, synth_data, *out, "--device", "cpu", "--workers", "0"]
    code, _, err = cli(capsys, *common, "-m", wrist)
    assert code != 0 and "wrist.pt: a wrist second-stage model" in error_line(err) and "--wrist-model" in err
    code, _, err = cli(capsys, *common, "-m", whole, "--wrist-model", whole)
    assert code != 0 and f"--wrist-model {whole}: not a wrist second-stage model" in error_line(err)
    assert not (tmp_path / "o.csv").exists()
    for wrist_only in (False, True):  # other classes than the 29: refused in either stage
        c8 = save_untrained(
            tmp_path / "c8.pt", tiny(synth_data, tmp_path / "c", wrist=wrist_only, classes=list(CARPALS))
        )
        code, _, err = cli(capsys, *common, *(["-m", whole, "--wrist-model", c8] if wrist_only else ["-m", c8]))
        assert code != 0 and "c8.pt: its 8 classes (Trapezium, Trapezoid, Capitate, …) are not the 29" in error_line(
            err
        )


def test_a_film_wrist_model_gets_the_patients_metadata(synth_data, tmp_path):
    """The wrist model is run like the first stage: a FiLM wrist model sees each patient's metadata."""
    from boneseg.data.layout import discover
    from boneseg.inference.predictor import Predictor
    from boneseg.inference.stages import ImageStages

    whole = save_untrained(tmp_path / "whole.pt", tiny(synth_data, tmp_path / "w"))
    wrist = save_untrained(tmp_path / "wrist.pt", tiny(synth_data, tmp_path / "c", wrist=True, meta="film"))
    sample = discover(synth_data)[0]
    with ImageStages(Predictor.from_checkpoints([whole], device="cpu"), synth_data, wrist) as stages:
        assert stages.wrist is not None
        stages.before(sample)
        model = stages.wrist.lm.model
        assert model.default_meta is not None and torch.equal(
            model.default_meta[0], torch.from_numpy(stages.table[sample.patient])
        )
    assert model.default_meta is None


def test_a_unified_wrist_model_mirrors_by_the_file_names_side(synth_data, tmp_path):
    """A left hand (``_L`` file name) is mirrored for a wrist model unified to R even when the first stage's
    masks do not show the side (no thumb or little finger): the same crop as the mirrored right hand."""
    from boneseg.inference.predictor import Item, Predictor
    from boneseg.inference.stages import ImageStages

    whole = save_untrained(tmp_path / "whole.pt", tiny(synth_data, tmp_path / "w"))
    wrist = save_untrained(tmp_path / "wrist.pt", tiny(synth_data, tmp_path / "c", wrist=True, unify_side="R"))
    probs = torch.full((NUM_CLASSES, 128, 128), 0.1)
    probs[CARPAL_IDX, 60:80, 40:60] = 0.9  # carpals only: the masks show no side
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8))
    with ImageStages(Predictor.from_checkpoints([whole], device="cpu"), None, wrist) as stages:
        left = stages.after(probs.clone(), Item(0, "a_L.png", (128, 128), "L", {(128, 128): image}))
        right = stages.after(probs.flip(-1), Item(0, "a_R.png", (128, 128), "R", {(128, 128): image.flip(-1)}))
    assert torch.equal(left, right.flip(-1))
