"""`boneseg select`: greedy ensemble selection on OOF predictions built from the phantom's true masks with
controlled per-class degradation, where the right answer is known; `ensemble` applies the plan."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from util import cli

from boneseg import probs
from boneseg.classes import CLASSES, FINGERS
from boneseg.data.layout import discover
from boneseg.data.masks import MaskCache, default_cache_dir
from boneseg.data.split import make_splits
from boneseg.errors import UsageError
from boneseg.submission import SubmissionWriter
from boneseg.workflows.select import select

FINGER = np.array([c in FINGERS for c in CLASSES])


def erode(m: np.ndarray) -> np.ndarray:
    return cv2.erode(m.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)


@pytest.fixture(scope="module")
def oof(synth_data, tmp_path_factory):
    """OOF CSVs and probability folders of made-up models over the 8 train images, and a 2-fold splits file."""
    folder = tmp_path_factory.mktemp("oof")
    samples = discover(synth_data, "train")
    cache = MaskCache(default_cache_dir(synth_data))
    truth = {s.image_name: cache.get(s).masks for s in samples}
    (folder / "splits.json").write_text(json.dumps(make_splits(samples, folds=2, seed=0)))

    def csv(name, degrade):
        with SubmissionWriter(folder / f"{name}.csv") as w:
            for image in sorted(truth):
                w.write_masks(image, np.stack([degrade(c, m) for c, m in enumerate(truth[image])]))

    def probs_folder(name, value):
        for image, masks in truth.items():
            probs.save(folder / name, image, np.stack([value(c, m) for c, m in enumerate(masks)]).astype(np.uint8))
        probs.write_manifest(folder / name, sorted(truth), [name])

    csv("fingers", lambda c, m: m if FINGER[c] else erode(m))  # right on fingers only
    csv("carpals", lambda c, m: erode(m) if FINGER[c] else m)  # right on the others only
    csv("copy", lambda c, m: m if FINGER[c] else erode(m))  # a duplicate of "fingers"
    csv("weak", lambda c, m: np.roll(m, 9, axis=1))  # wrong everywhere
    for k in range(3):  # each misses a different third of the rows
        rows = (np.arange(256) % 3 == k)[:, None]
        csv(f"third{k}", lambda c, m, rows=rows: m & ~rows)
    # soft: "faint" is right everywhere but only 100/255 sure on the non-finger classes (off at 0.5)
    probs_folder("faint", lambda c, m: m * (200 if FINGER[c] else 100))
    probs_folder("pweak", lambda c, m: np.roll(m, 9, axis=1) * 255 * FINGER[c])  # and sure of nothing else
    return folder


def plan_dice(capsys, folder, inputs, plan, data) -> float:
    """Mean Dice of `ensemble INPUTS --per-class PLAN` scored by `analyze` against the labels."""
    out = folder / f"applied-{plan.stem}.csv"
    assert cli(capsys, "ensemble", *inputs, "--per-class", plan, "--workers", 1, "-o", out, "--force")[0] == 0
    code, stdout, _ = cli(capsys, "analyze", out, "--gt", data, "--json")
    assert code == 0
    return json.loads(stdout)["mean_dice"]


def test_per_class_hard_selection_finds_the_known_answer_and_ensemble_scores_what_it_promised(oof, synth_data, capsys):
    names = ["fingers", "carpals", "copy", "weak"]
    inputs = [oof / f"{n}.csv" for n in names]
    code, _, err = cli(
        capsys,
        "select",
        *inputs,
        "--gt",
        synth_data,
        "--splits",
        oof / "splits.json",
        "--steps",
        4,
        "-o",
        oof / "plan.json",
    )
    assert code == 0, err
    plan = json.loads((oof / "plan.json").read_text())
    assert plan["vote"] == "hard" and plan["folds"] == [0, 1]
    for c, name in enumerate(CLASSES):  # the right model alone: never its duplicate, never the weak one
        assert plan["per_class"][name] == ([1, 0, 0, 0] if FINGER[c] else [0, 1, 0, 0]), name
    assert plan["score"]["mean"] == 1.0
    assert plan["best_single"]["input"] == str(inputs[0]) and plan["best_single"]["noise"] is False
    assert all(step["noise"] for step in plan["steps"][1:])  # nothing left to gain after step 1
    assert "noise" in err and "plan: OOF Dice 1.0000" in err
    assert plan_dice(capsys, oof, inputs, oof / "plan.json", synth_data) == pytest.approx(
        plan["score"]["mean"], abs=1e-12
    )


def test_hard_majority_of_three_beats_each_model_and_overall_mode_shares_one_ensemble(oof, synth_data, capsys):
    inputs = [oof / f"third{k}.csv" for k in range(3)] + [oof / "weak.csv"]
    result = select(inputs, synth_data, oof / "splits.json", steps=3, per_class=False, out=oof / "third.json")
    assert (result.weights == [1, 1, 1, 0]).all()  # a majority of 3 restores every pixel
    plan = result.plan()
    assert plan["select"] == "overall" and plan["score"]["mean"] == 1.0
    assert plan["best_single"]["mean"] < 0.85 and plan["best_single"]["noise"] is False
    assert plan_dice(capsys, oof, inputs, oof / "third.json", synth_data) == pytest.approx(1.0)

    mixed = [oof / "fingers.csv", oof / "carpals.csv"]
    overall = select(mixed, synth_data, oof / "splits.json", steps=2, per_class=False)
    assert (overall.weights == overall.weights[0]).all()  # one ensemble for every class
    assert overall.score.mean() < select(mixed, synth_data, oof / "splits.json", steps=2).score.mean() == 1.0


def test_soft_selection_tunes_thresholds_and_ensemble_applies_them(oof, synth_data, capsys):
    inputs = [oof / "faint", oof / "pweak"]
    code, _, err = cli(
        capsys,
        "select",
        *inputs,
        "--gt",
        synth_data,
        "--splits",
        oof / "splits.json",
        "--tune-thresholds",
        "--steps",
        2,
        "--workers",
        1,
        "-o",
        oof / "soft.json",
    )
    assert code == 0, err
    plan = json.loads((oof / "soft.json").read_text())
    assert plan["vote"] == "soft" and plan["score"]["mean"] == 1.0
    assert all(w == [1, 0] for w in plan["per_class"].values())
    for c, name in enumerate(CLASSES):  # 100/255 = 0.39: the faint classes need a lower threshold
        assert (plan["thresholds"][name] == 0.5) if FINGER[c] else (plan["thresholds"][name] < 100 / 255)
    assert plan["thresholds_gain"]["gain"] > 0 and not plan["thresholds_gain"]["noise"]
    assert plan_dice(capsys, oof, inputs, oof / "soft.json", synth_data) == pytest.approx(1.0, abs=1e-12)

    untuned = select(inputs, synth_data, oof / "splits.json", steps=1, workers=1)
    assert untuned.score[~FINGER].max() == 0.0 and untuned.score[FINGER].min() == 1.0  # off at 0.5


def test_plans_are_applied_only_as_made_and_bad_inputs_are_one_line(oof, synth_data, capsys):
    csvs, folders = [oof / "fingers.csv", oof / "carpals.csv"], [oof / "faint", oof / "pweak"]
    select(csvs, synth_data, oof / "splits.json", steps=1, out=oof / "hard.json")
    select(folders, synth_data, oof / "splits.json", steps=1, workers=1, out=oof / "soft1.json")
    base = ["--gt", synth_data, "--splits", oof / "splits.json"]
    hard, soft = json.loads((oof / "hard.json").read_text()), json.loads((oof / "soft1.json").read_text())
    edited = {
        "lost": {**hard, "per_class": {c: w for c, w in hard["per_class"].items() if c != "Ulna"}},
        "lost_t": {**soft, "thresholds": {c: t for c, t in soft["thresholds"].items() if c != "Ulna"}},
        "kind": {**hard, "vote": "majority"},
    }
    for name, doc in edited.items():
        (oof / f"{name}.json").write_text(json.dumps(doc))
    cases = [
        (["ensemble", *csvs[::-1], "--per-class", oof / "hard.json", "-o", oof / "x.csv"], 1, "the plan's order"),
        (["ensemble", *csvs, "--per-class", oof / "lost.json", "-o", oof / "x.csv"], 1, "'per_class' lacks 1 class"),
        (
            ["ensemble", *folders, "--per-class", oof / "lost_t.json", "-o", oof / "x.csv"],
            1,
            "lacks 1 class(es), e.g. Ulna",
        ),
        (["ensemble", *csvs, "--per-class", oof / "kind.json", "-o", oof / "x.csv"], 1, "'vote' must be hard or soft"),
        (["ensemble", *folders, "--per-class", oof / "hard.json", "-o", oof / "x.csv"], 1, "a plan for a hard vote"),
        (
            ["ensemble", *folders, "--per-class", oof / "soft1.json", "--threshold", "0.4", "-o", oof / "x.csv"],
            2,
            "carries its own thresholds",
        ),
        (
            ["ensemble", *csvs, oof / "weak.csv", "--per-class", oof / "hard.json", "-o", oof / "x.csv"],
            1,
            "a plan for 2 inputs (fingers.csv, carpals.csv), given 3",
        ),
        (["select", *csvs, *base, "--tune-thresholds", "-o", oof / "y.json"], 2, "--vote soft only"),
        (["select", csvs[0], folders[0], *base, "-o", oof / "y.json"], 2, "mix folders and files"),
        (["select", *csvs, *base, "--steps", 0, "-o", oof / "y.json"], 2, "--steps"),
        (["select", *csvs, *base, "-o", oof / "hard.json"], 1, "already exists"),
    ]
    for args, want, text in cases:
        code, _, err = cli(capsys, *args)
        lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
        assert code == want and len(lines) == 1 and text in lines[0] and "Traceback" not in err, (args, err)
    assert not (oof / "x.csv").exists() and not (oof / "y.json").exists()


def test_oof_images_must_be_labelled_train_images_of_two_folds(oof, synth_data, tmp_path, capsys):
    foreign = tmp_path / "foreign.csv"
    foreign.write_text((oof / "fingers.csv").read_text().replace("\nimage", "\nother"))
    code, _, err = cli(
        capsys, "select", foreign, "--gt", synth_data, "--splits", oof / "splits.json", "-o", tmp_path / "p.json"
    )
    assert code == 1 and "not among the labelled train images" in err
    one_fold = json.loads((oof / "splits.json").read_text())
    one_fold["assignments"] = dict.fromkeys(one_fold["assignments"], 0)
    (tmp_path / "one.json").write_text(json.dumps(one_fold))
    code, _, err = cli(
        capsys,
        "select",
        oof / "fingers.csv",
        "--gt",
        synth_data,
        "--splits",
        tmp_path / "one.json",
        "-o",
        tmp_path / "p.json",
    )
    assert code == 1 and "at least 2 folds" in err and not (tmp_path / "p.json").exists()


def test_soft_oof_of_a_dataset_with_two_images_of_one_name_is_refused(tmp_path):
    import shutil

    from util import write_dataset

    from boneseg.errors import DataError

    data = write_dataset(tmp_path / "data", patients=2, size=64, test_patients=0)
    samples = discover(data, "train")
    for s in samples:
        probs.save(tmp_path / "p", s.image_name, np.zeros((29, 64, 64), np.uint8))
    probs.write_manifest(tmp_path / "p", [s.image_name for s in samples], ["m"])
    first = samples[0]
    for sub, src in (("DCM", first.image), ("outputs_json", first.label)):
        (data / "train" / sub / "ID009").mkdir()
        shutil.copy(src, data / "train" / sub / "ID009" / src.name)
    with pytest.raises(DataError, match=f"two images named {first.image_name}"):
        select([tmp_path / "p"], data, tmp_path / "splits.json", workers=1)


def test_soft_selection_on_calibrated_inputs(oof, synth_data, tmp_path):
    """ "faint" is 100/255 sure of its non-finger classes: a calibration with bias -1 lifts them above 0.5, so
    the selection scores 1.0 untuned; the same files make `ensemble` reproduce it."""
    from boneseg.calibration import Calibration

    Calibration(np.ones(29), np.full(29, -1.0)).write(tmp_path / "lift.json")
    inputs = [oof / "faint", oof / "pweak"]
    lifted = select(
        inputs, synth_data, oof / "splits.json", steps=1, workers=1, calibration=[tmp_path / "lift.json", "none"]
    )
    assert lifted.score.min() == 1.0
    with pytest.raises(UsageError, match="--calibration"):
        select(inputs, synth_data, oof / "splits.json", calibration=[tmp_path / "lift.json"])
