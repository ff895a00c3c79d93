"""Validation: `boneseg tta` policy scores equal the competition Dice of predict's CSV, tuned thresholds, and
the per-class post-processing chosen on validation (nnU-Net's rule) and saved for predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from util import csv_dice, make_checkpoint, tiny_config

from boneseg import CLASSES, probs
from boneseg.classes import NUM_CLASSES
from boneseg.cli import app
from boneseg.data.layout import discover
from boneseg.data.split import fold_samples, make_splits
from boneseg.errors import OutputExistsError, UsageError
from boneseg.inference import Policy, PredictOptions, Predictor, predict
from boneseg.io import write_json
from boneseg.metrics import dice, mean_dice
from boneseg.postprocess import postprocess_per_class, rules_list
from boneseg.runs.files import POSTPROCESS as RULES_FILE
from boneseg.workflows.validation import choose_rules, dice_curves, evaluate_policies, search_thresholds

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(synth_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tta")
    ckpt = make_checkpoint(tmp / "model.pt")
    splits = tmp / "splits.json"
    write_json(splits, make_splits(discover(synth_data), folds=2, seed=0))
    return synth_data, ckpt, splits, tmp


def test_tta_json_scores_equal_the_dice_of_predicts_csv(setup, tmp_path):
    data, ckpt, splits, _ = setup
    thr = tmp_path / "thr.json"
    result = runner.invoke(
        app,
        [
            "tta",
            str(data),
            "-m",
            str(ckpt),
            "--fold",
            "0",
            "--splits",
            str(splits),
            "--policies",
            "none,hflip,sliding:none",
            "--window",
            "128",
            "--json",
            "--workers",
            "1",
            "--thresholds-out",
            str(thr),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["policies"]) == {"resize:none", "resize:hflip", "sliding:none"}
    assert report["best"] == max(report["policies"], key=lambda k: report["policies"][k]["mean_dice"])
    _, val = fold_samples(discover(data), json.loads(splits.read_text()), 0)
    assert report["images"] == len(val) and report["fold"] == 0

    # the same images through predict -> CSV -> competition Dice give the same numbers
    pred = Predictor.from_checkpoints([ckpt], device="cpu", window=128)
    for name, tta, sliding in (("resize:hflip", "hflip", False), ("sliding:none", "none", True)):
        out = tmp_path / f"{tta}{sliding}.csv"
        predict(val, pred, out, tta=tta, sliding=sliding, options=PredictOptions(workers=0))
        want = csv_dice(out, val)
        got = report["policies"][name]["per_class_dice"]
        assert list(got) == list(CLASSES)
        np.testing.assert_allclose([got[c] for c in CLASSES], [want[c] for c in CLASSES], atol=1e-12)
        assert report["policies"][name]["mean_dice"] == pytest.approx(mean_dice(want), abs=1e-12)

    # the tuned thresholds, used by predict, reach the tuned score on these images
    thresholds = json.loads(thr.read_text())
    assert list(thresholds) == list(CLASSES) and all(0.3 <= t <= 0.7 for t in thresholds.values())
    best = Policy.parse(report["best"])
    out = tmp_path / "tuned.csv"
    predict(val, pred, out, tta=best, threshold=thr, options=PredictOptions(workers=0))
    assert mean_dice(csv_dice(out, val)) == pytest.approx(report["tuned_mean_dice"], abs=1e-12)
    assert report["tuned_mean_dice"] >= report["policies"][report["best"]]["mean_dice"] - 1e-12


def test_tta_table_and_force(setup, tmp_path):
    data, ckpt, splits, _ = setup
    thr = tmp_path / "thr.json"
    thr.write_text("{}")
    result = runner.invoke(
        app,
        [
            "tta",
            str(data),
            "-m",
            str(ckpt),
            "--fold",
            "1",
            "--splits",
            str(splits),
            "--policies",
            "none",
            "--thresholds-out",
            str(thr),
            "--workers",
            "0",
        ],
    )
    assert isinstance(result.exception, OutputExistsError) and thr.read_text() == "{}"
    result = runner.invoke(
        app,
        [
            "tta",
            str(data),
            "-m",
            str(ckpt),
            "--fold",
            "1",
            "--splits",
            str(splits),
            "--policies",
            "none,scale",
            "--scales",
            "0.5,1",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best:" in result.output and "resize:scale" in result.output


def test_dice_curves_match_direct_dice():
    rng = np.random.default_rng(0)
    q = torch.from_numpy(rng.integers(0, 256, (29, 16, 16), dtype=np.uint8))
    gt = torch.from_numpy(rng.random((29, 16, 16)) > 0.6)
    gt[3] = False
    curves = dice_curves(q, gt)
    for k in (0, 76, 127, 200, 255):
        np.testing.assert_allclose(curves[:, k], dice(q.numpy() > k, gt.numpy()), atol=1e-12)


def test_search_thresholds_round_trip():
    curves = np.zeros((29, 256))
    curves[:, 100] = 1.0  # best cut 100 (t ~ 0.394) for every class...
    curves[5, :] = 0.5  # ...but a flat curve for class 5: ties go to the default (cut 127)
    curves[6, 250] = 2.0  # outside the range: ignored
    curves[6, 90] = 1.5
    t, score = search_thresholds(curves, 0.3, 0.7)
    cuts = probs.cutoffs(t)
    assert cuts[0] == 100 and cuts[5] == 127 and cuts[6] == 90
    assert score[0] == 1.0 and score[5] == 0.5 and score[6] == 1.5
    with pytest.raises(UsageError):
        search_thresholds(curves, 0.8, 0.2)
    curves[7, 255] = 3.0  # a class best left empty (e.g. absent from every validation image): the top cut
    t, score = search_thresholds(curves, 0.3, 1.0)
    assert t[7] == 1.0 and probs.cutoffs(t)[7] == 255 and score[7] == 3.0
    assert probs.read_thresholds(dict(zip(CLASSES, t.tolist())))[7] == 1.0  # a valid threshold file


def test_evaluate_defaults_to_all_train_images_with_a_note(setup):
    data, ckpt, _, _ = setup
    samples = discover(data)[:2]
    report = evaluate_policies(
        data, [ckpt], policies=["none"], samples=samples, search=None, options=PredictOptions(workers=0, device="cpu")
    )
    assert report.images == 2 and report.thresholds is None and report.best == "resize:none"


def test_tta_empty_search_is_a_usage_error(tmp_path, capsys):
    from boneseg.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["tta", str(tmp_path), "-m", str(tmp_path / "m.pt"), "--search", ""])
    assert exc.value.code == 2 and "--search must be low,high" in capsys.readouterr().err


def test_sliding_adds_the_sliding_version_of_each_named_policy(setup):
    """``--sliding`` also scores the sliding-window versions, of ``--policies`` names as of the default ones."""
    data, ckpt, _, _ = setup
    kw = {"samples": discover(data)[:1], "search": None, "options": PredictOptions(workers=0, device="cpu", window=64)}
    report = evaluate_policies(data, [ckpt], policies=["none", "sliding:none", "resize:hflip"], sliding=True, **kw)
    assert list(report.policies) == ["resize:none", "sliding:none", "resize:hflip"]
    assert list(evaluate_policies(data, [ckpt], policies=["none"], **kw).policies) == ["resize:none"]


def test_default_images_are_the_runs_own_validation_fold(setup, tmp_path):
    """Without --fold/--splits, a run trained on an on-the-fly split (no splits file) is scored on the images
    it validated on, not on its training images too."""
    from boneseg.runs.checkpoint import load_checkpoint, save_checkpoint

    data, ckpt, _, _ = setup
    samples = discover(data)
    run = tmp_path / "run.pt"
    save_checkpoint(run, {**load_checkpoint(ckpt), "val_images": [s.name for s in samples[2:4]]})
    report = evaluate_policies(
        data, [run], policies=["none"], search=None, options=PredictOptions(workers=0, device="cpu")
    )
    assert report.images == 2 and report.fold == 0 and not report.notes
    other = tmp_path / "other.pt"  # another fold's model trained on those images: said, not hidden
    save_checkpoint(other, {**load_checkpoint(ckpt), "val_images": [s.name for s in samples[3:5]]})
    report = evaluate_policies(
        data, [run, other], policies=["none"], search=None, options=PredictOptions(workers=0, device="cpu")
    )
    assert report.images == 2 and report.notes == [f"{other} trained on 1 of these 2 images: its scores are optimistic"]


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
