"""Per-class post-processing chosen on validation (nnU-Net's rule), saved for predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from util import tiny_config

from boneseg.classes import CLASSES, NUM_CLASSES
from boneseg.errors import DataError
from boneseg.postprocess import postprocess_per_class, rules_list
from boneseg.runs.files import POSTPROCESS as RULES_FILE
from boneseg.workflows.validation import choose_rules


def tiny(data: Path, out: Path, **extra) -> dict:
    return tiny_config(data, out, **{"aug": "none", **extra})


def test_rules_only_where_they_raise_dice():
    gt = np.zeros((NUM_CLASSES, 32, 32), bool)
    gt[:, 8:20, 8:20] = True
    pred = gt.copy()
    pred[0, 28:30, 28:30] = True  # class 0: a spurious island -> a rule helps
    pred[1, 8:20, 8:20] = False
    pred[1, 9:12, 9:12] = True  # class 1: a small true-ish fragment -> removing it would hurt
    pred[1, 14:19, 14:19] = True
    rules = choose_rules([pred, pred], [gt, gt])
    assert rules[CLASSES[0]]["dice_after"] > rules[CLASSES[0]]["dice_before"]
    assert rules[CLASSES[0]]["keep_largest"] or rules[CLASSES[0]]["min_area"] > 4
    assert rules[CLASSES[1]] == {
        "keep_largest": False,
        "min_area": 0,
        "dice_before": rules[CLASSES[1]]["dice_before"],
        "dice_after": rules[CLASSES[1]]["dice_before"],
    }
    assert all(r["dice_after"] >= r["dice_before"] for r in rules.values())
    for c in range(2, NUM_CLASSES):  # perfect classes: nothing to gain, nothing applied
        assert not rules[CLASSES[c]]["keep_largest"] and rules[CLASSES[c]]["min_area"] == 0
    applied = postprocess_per_class(pred, rules_list({"classes": rules}))
    assert np.array_equal(applied[0], gt[0]) and np.array_equal(applied[1], pred[1])


def test_rules_file_is_checked():
    with pytest.raises(DataError, match="classes"):
        rules_list({"nope": 1})
    with pytest.raises(DataError, match="did you mean 'Pisiform'"):
        rules_list({"classes": {"Pisifrom": {"keep_largest": True}}})
    assert rules_list({"classes": {}}, keep_largest=True, min_area=5)[3] == (True, 5)


def test_fit_after_training_and_predict_picks_it_up(synth_data, tmp_path):
    from boneseg.engine.train import train
    from boneseg.inference import PredictOptions, predict
    from boneseg.workflows.validation import fit_postprocess

    run = tmp_path / "run"
    train(tiny(synth_data, run))
    fit_postprocess(
        run, synth_data, cache_dir=tiny(synth_data, run)["cache_dir"], options=PredictOptions(workers=0, device="cpu")
    )
    doc = json.loads((run / RULES_FILE).read_text())
    assert set(doc["classes"]) == set(CLASSES) and doc["images"] == 2 and doc["fold"] == 0
    assert doc["mean_dice_after"] >= doc["mean_dice_before"]

    # Predict applies RUN/postprocess.json by itself: an all-keep-largest file equals --keep-largest.
    (run / RULES_FILE).write_text(json.dumps({"classes": {c: {"keep_largest": True, "min_area": 0} for c in CLASSES}}))
    kw = {"options": PredictOptions(workers=0, device="cpu")}
    auto, flag, none, explicit = (tmp_path / f"{n}.csv" for n in ("auto", "flag", "none", "explicit"))
    predict(synth_data, [run], auto, **kw)
    predict(synth_data, [run], flag, keep_largest=True, postprocess_rules="none", **kw)
    predict(synth_data, [run], none, postprocess_rules="none", **kw)
    predict(synth_data, [run / "best.pt"], explicit, postprocess_rules=run / RULES_FILE, **kw)
    assert auto.read_text() == flag.read_text() == explicit.read_text()
    assert auto.read_text() != none.read_text()  # the tiny model's masks are fragmented
    # an ensemble does not inherit one member's rules
    ens = tmp_path / "ens.csv"
    predict(synth_data, [run, run], ens, **kw)
    assert ens.read_text() == none.read_text()


def test_fitted_scores_are_those_of_predict_with_and_without_the_rules(synth_data, tmp_path):
    """The rules are fitted on what predict gives (a FiLM model with its patients' metadata): predict's CSV
    of the validation fold scores each class's ``dice_before`` without the rules, ``dice_after`` with them."""
    import torch
    from util import csv_dice

    from boneseg.data.layout import discover
    from boneseg.engine.train import train
    from boneseg.inference import PredictOptions, predict
    from boneseg.runs.checkpoint import load_checkpoint, save_checkpoint
    from boneseg.runs.run import Run
    from boneseg.workflows.validation import fit_postprocess

    run = tmp_path / "run"
    cfg = tiny(synth_data, run, meta="film")
    train(cfg)
    state = load_checkpoint(run / "best.pt")  # metadata that matters: FiLM starts as the identity
    gen = torch.Generator().manual_seed(0)
    model = {k: torch.randn(v.shape, generator=gen) if k.startswith("film.") else v for k, v in state["model"].items()}
    save_checkpoint(run / "best.pt", dict(state, model=model))
    doc = fit_postprocess(run, synth_data, cache_dir=cfg["cache_dir"], options=PredictOptions(workers=0, device="cpu"))
    val = Run.open(run).validation(discover(synth_data))
    kw = {"options": PredictOptions(workers=0, device="cpu", meta=synth_data)}
    for rules, key in (("auto", "dice_after"), ("none", "dice_before")):
        out = tmp_path / f"{rules}.csv"
        predict(val, [run], out, postprocess_rules=rules, **kw)
        got = csv_dice(out, val)
        np.testing.assert_allclose([got[c] for c in CLASSES], [doc["classes"][c][key] for c in CLASSES], atol=1e-12)


def test_a_wrist_run_is_refused_by_name(synth_data, tmp_path, capsys):
    """A wrist model is refused with the reason: by train before training, and by the library (a resumed
    wrist run, whose command line does not say --wrist)."""
    from util import TINY, cli, error_line

    from boneseg.errors import UsageError
    from boneseg.inference import PredictOptions
    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import save_checkpoint
    from boneseg.workflows.validation import fit_postprocess

    cfg = tiny(synth_data, tmp_path / "wrist", wrist=True)
    state = {"config": cfg, "model": build_model(cfg).state_dict(), "epoch": 1, "step": 1, "metrics": {}}
    save_checkpoint(tmp_path / "wrist.pt", state)
    with pytest.raises(UsageError, match="--fit-postprocess applies to whole-image models, not a --wrist model"):
        fit_postprocess(tmp_path / "wrist.pt", synth_data, options=PredictOptions(workers=0, device="cpu"))
    code, _, err = cli(capsys, "train", synth_data, *TINY, "--wrist", "--fit-postprocess", "-o", tmp_path / "run")
    assert code != 0 and "not a --wrist model" in error_line(err) and not (tmp_path / "run").exists()
