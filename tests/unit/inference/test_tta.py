"""`boneseg tta`: policy scores equal the competition Dice of predict's CSV; tuned thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_predict import make_checkpoint
from typer.testing import CliRunner
from util import csv_dice

from boneseg import CLASSES, probs
from boneseg.cli import app
from boneseg.data.layout import discover
from boneseg.data.split import fold_samples, make_splits
from boneseg.errors import OutputExistsError, UsageError
from boneseg.inference import Policy, PredictOptions, Predictor, predict
from boneseg.io import write_json
from boneseg.metrics import dice, mean_dice
from boneseg.workflows.validation import dice_curves, evaluate_policies, search_thresholds

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


def test_policy_names():
    assert Policy.parse("none") == Policy()
    assert Policy.parse("sliding:hflip+scale", [1, 0.5]).views() == [
        (0.5, False),
        (0.5, True),
        (1.0, False),
        (1.0, True),
    ]
    assert Policy.parse("flip").name == "resize:hflip"
    with pytest.raises(UsageError, match="did you mean 'hflip'"):
        Policy.parse("hflp")
    with pytest.raises(UsageError, match="sliding"):
        Policy.parse("slidng:none")
    for bad in ("0", "1,-0.5", "nan", ","):  # the refusal quotes --scales as given
        with pytest.raises(UsageError, match=f"got '{bad}'"):
            Policy.parse("scale", bad)


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
