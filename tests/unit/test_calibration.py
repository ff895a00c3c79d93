"""Calibration: the file's strict reader, the rule on float and uint8 probabilities, and the calibration
applied where probabilities are used (predict, a run folder's own, an export, the soft vote, tta, pseudo) and
predict's uncertainty maps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from util import cli, error_line, make_checkpoint, write_dataset

from boneseg import CLASSES, calibration, probs, uncertainty
from boneseg.calibration import Calibration
from boneseg.errors import DataError
from boneseg.inference import PredictOptions, predict

OPTS = ("--workers", "0", "--device", "cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calpredict")
    data = write_dataset(root / "data", patients=1, test_patients=1)
    runs = []
    for seed in (0, 1):
        (root / f"run{seed}").mkdir()
        make_checkpoint(root / f"run{seed}" / "best.pt", seed=seed)
        runs.append(root / f"run{seed}")
    cal = Calibration(np.linspace(0.6, 3.0, 29), np.linspace(-0.5, 0.5, 29), np.full(29, 0.45))
    cal.write(root / "cal.json")
    plain = root / "plain"
    predict(
        data,
        [runs[0]],
        root / "plain.csv",
        save_probs=plain,
        options=PredictOptions(device="cpu", workers=0, calibration="none"),
    )
    return data, runs, cal, root, plain


def test_predict_applies_a_calibration_file_and_its_thresholds(setup, tmp_path, capsys):
    data, runs, cal, root, plain = setup
    code, _, err = cli(
        capsys, "predict", data, "-m", runs[0], "-o", tmp_path / "c.csv", "--calibration", root / "cal.json",
        "--save-probs", tmp_path / "p", *OPTS,
    )  # fmt: skip
    assert code == 0, err
    manifest = probs.read_manifest(tmp_path / "p")
    assert manifest["calibration"]["final"]["source"] == str(root / "cal.json")
    assert manifest["threshold"] == pytest.approx([0.45] * 29)
    for name in manifest["images"]:
        raw, calibrated = probs.load(plain, name), probs.load(tmp_path / "p", name)
        assert np.abs(cal.apply_quantized(raw).astype(int) - calibrated).max() <= 1  # float vs uint8 rounding
        assert not np.array_equal(raw, calibrated)
    # the CSV is the calibrated probabilities cut at the calibration's thresholds
    code, _, err = cli(capsys, "ensemble", tmp_path / "p", "--vote", "soft", "-t", "0.45", "-o", tmp_path / "e.csv")
    assert code == 0, err
    assert (tmp_path / "e.csv").read_text() == (tmp_path / "c.csv").read_text()


def test_a_run_folder_holding_a_calibration_applies_it_by_default(setup, tmp_path, capsys):
    data, runs, cal, root, plain = setup
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes((runs[0] / "best.pt").read_bytes())
    cal.write(run / "calibration.json")
    code, _, err = cli(
        capsys, "predict", data, "-m", run, "-o", tmp_path / "a.csv", "--save-probs", tmp_path / "a", *OPTS
    )
    assert code == 0, err
    assert "applying its calibration" in err
    manifest = probs.read_manifest(tmp_path / "a")
    assert manifest["calibration"]["models"][0]["temperature"]["finger-1"] == pytest.approx(0.6)
    name = manifest["images"][0]
    assert (
        np.abs(cal.apply_quantized(probs.load(plain, name)).astype(int) - probs.load(tmp_path / "a", name)).max() <= 1
    )
    code, _, err = cli(
        capsys, "predict", data, "-m", run, "-o", tmp_path / "b.csv", "--calibration", "none",
        "--save-probs", tmp_path / "b", *OPTS,
    )  # fmt: skip
    assert code == 0 and probs.read_manifest(tmp_path / "b")["calibration"] is None
    assert np.array_equal(probs.load(tmp_path / "b", name), probs.load(plain, name))
    # a broken calibration file in a run folder is one line naming it
    (run / "calibration.json").write_text(json.dumps({"format": "boneseg-calibration", "version": 1}))
    code, _, err = cli(capsys, "predict", data, "-m", run, "-o", tmp_path / "x.csv", *OPTS)
    assert code == 1 and "calibration.json" in error_line(err)


def test_an_export_carries_the_calibration(setup, tmp_path, capsys):
    data, runs, cal, root, plain = setup
    out = tmp_path / "m.ts"
    code, _, err = cli(capsys, "export", runs[0], "-f", "torchscript", "-o", out, "--calibration", root / "cal.json")
    assert code == 0, err
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["calibration"]["temperature"]["Ulna"] == pytest.approx(3.0)
    assert sidecar["thresholds"]["Ulna"] == pytest.approx(0.45)
    bare = tmp_path / "bare.ts"  # the calibrated thresholds without the calibration: refused
    code, _, err = cli(capsys, "export", runs[0], "-f", "torchscript", "-o", bare, "--threshold", root / "cal.json")
    assert code == 1 and "calibrated probabilities" in error_line(err) and not bare.exists()
    code, _, err = cli(
        capsys,
        "predict",
        data,
        "-m",
        out,
        "-o",
        tmp_path / "e.csv",
        "--save-probs",
        tmp_path / "e",
        "--trust-model",
        *OPTS,
    )
    assert code == 0, err
    code, _, err = cli(
        capsys, "predict", data, "-m", runs[0], "-o", tmp_path / "r.csv", "--calibration", root / "cal.json",
        "--save-probs", tmp_path / "r", *OPTS,
    )  # fmt: skip
    assert code == 0, err
    name = probs.read_manifest(tmp_path / "e")["images"][0]
    assert np.abs(probs.load(tmp_path / "e", name).astype(int) - probs.load(tmp_path / "r", name)).max() <= 1


def test_soft_vote_calibrates_each_input(setup, tmp_path, capsys):
    data, runs, cal, root, plain = setup
    other = Calibration(np.full(29, 0.5), np.zeros(29))
    other.write(tmp_path / "other.json")
    code, _, err = cli(
        capsys, "ensemble", plain, plain, "--vote", "soft", "--calibration", root / "cal.json",
        "--calibration", tmp_path / "other.json", "-o", tmp_path / "v.csv", "-j", "0",
    )  # fmt: skip
    assert code == 0, err
    from boneseg.submission import read_submission
    from boneseg.workflows.ensemble import soft_plan, soft_vote_image

    sub = read_submission(tmp_path / "v.csv")
    for name in probs.read_manifest(plain)["images"]:
        q = probs.load(plain, name)
        want = soft_vote_image([cal.apply_quantized(q), other.apply_quantized(q)], soft_plan(2))
        assert np.array_equal(sub.masks(Path(name).name, q.shape[1:]), want)
    code, _, err = cli(capsys, "ensemble", plain, plain, "--calibration", root / "cal.json", "-o", tmp_path / "w.csv")
    assert code == 2 and "--calibration" in error_line(err)


def test_soft_vote_refuses_to_calibrate_twice(setup, tmp_path, capsys):
    data, runs, cal, root, plain = setup
    predict(
        data,
        [runs[0]],
        tmp_path / "c.csv",
        save_probs=tmp_path / "c",
        options=PredictOptions(device="cpu", workers=0, calibration=root / "cal.json"),
    )
    code, _, err = cli(capsys, "ensemble", tmp_path / "c", "--calibration", root / "cal.json", "-o", tmp_path / "w.csv")
    assert code == 1 and "calibrated when predicted" in error_line(err)


def test_uncertainty_maps_and_table(setup, tmp_path, capsys):
    data, runs, cal, root, plain = setup
    code, _, err = cli(
        capsys, "predict", data, "-m", runs[0], "-m", runs[1], "--tta", "hflip", "-o", tmp_path / "u.csv",
        "--save-uncertainty", tmp_path / "u", *OPTS,
    )  # fmt: skip
    assert code == 0, err
    manifest = uncertainty.read_manifest(tmp_path / "u")
    assert manifest["maps"] == ["entropy", "tta", "ensemble"]
    with open(tmp_path / "u" / "uncertainty.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 29 * len(manifest["images"]) and rows[0]["class"] == CLASSES[0]
    for name in manifest["images"]:
        maps = uncertainty.load(tmp_path / "u", name)
        assert set(maps) == {"entropy", "tta", "ensemble"} and maps["entropy"].shape == (29, 64, 64)
        assert maps["ensemble"].max() > 0 and maps["tta"].max() > 0
    # one model, no TTA: entropy alone; the map is the entropy of the saved probabilities
    predict(
        data,
        [runs[0]],
        tmp_path / "v.csv",
        save_probs=tmp_path / "vp",
        save_uncertainty=tmp_path / "v",
        options=PredictOptions(device="cpu", workers=0, calibration="none"),
    )
    assert uncertainty.read_manifest(tmp_path / "v")["maps"] == ["entropy"]
    name = manifest["images"][0]
    q = probs.load(tmp_path / "vp", name)
    expect = uncertainty.quantize(uncertainty.entropy(q / 255.0))
    assert np.abs(uncertainty.load(tmp_path / "v", name)["entropy"].astype(int) - expect).max() <= 3
    code, _, err = cli(capsys, "predict", data, "-m", runs[0], "-o", tmp_path / "w.csv", "--save-uncertainty",
                       tmp_path / "u", *OPTS)  # fmt: skip
    assert code == 1 and "not empty" in error_line(err)


def test_tta_searches_thresholds_on_calibrated_probabilities(setup, tmp_path):
    from boneseg.workflows.validation import evaluate_policies

    data, runs, cal, root, plain = setup
    from boneseg.data.layout import discover

    samples = discover(data, "train")
    common = {"policies": ["none"], "samples": samples, "search": (0.0, 1.0)}
    on = PredictOptions(workers=0, device="cpu")
    raw = evaluate_policies(
        data, [runs[0]], options=on.replace(calibration="none"), thresholds_out=tmp_path / "raw.json", **common
    )
    done = evaluate_policies(
        data, [runs[0]], options=on.replace(calibration=root / "cal.json"), thresholds_out=tmp_path / "c.json", **common
    )
    assert json.loads((tmp_path / "raw.json").read_text()) == raw.thresholds
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["thresholds"] == done.thresholds and doc["calibration"]["final"]["source"] == str(root / "cal.json")
    # a monotone map per class: the best Dice over every cut is the same up to the uint8 re-quantisation
    assert done.tuned_mean_dice == pytest.approx(raw.tuned_mean_dice, abs=0.02)
    assert probs.read_thresholds(tmp_path / "c.json").shape == (29,)
    with pytest.raises(DataError, match="thresholds searched on calibrated probabilities"):  # not on raw ones
        predict(
            data,
            [runs[0]],
            tmp_path / "x.csv",
            threshold=tmp_path / "c.json",
            options=PredictOptions(calibration="none", device="cpu"),
        )
    assert not (tmp_path / "x.csv").exists()


def test_pseudo_calibrates_a_probability_folder(setup, tmp_path, capsys):
    data, runs, cal, root, plain = setup
    sure = Calibration(np.full(29, 0.05), np.full(29, -3.0))  # everything confidently on
    sure.write(tmp_path / "sure.json")
    opts = ("--min-confidence", "0.99", "--json", "-j", "0")
    code, out, err = cli(
        capsys, "pseudo", plain, data, "-o", tmp_path / "ps", "--calibration", tmp_path / "sure.json", *opts
    )
    assert code == 0, err
    calibrated = json.loads(out)
    code, out, err = cli(capsys, "pseudo", plain, data, "-o", tmp_path / "pr", *opts)
    assert code == 0, err
    assert len(calibrated["left_out"]) == 0 < len(json.loads(out)["left_out"])


def test_pseudo_leaves_out_uncertain_images(setup, tmp_path, capsys):
    data, runs, cal, root, plain = setup
    predict(
        data,
        [runs[0]],
        tmp_path / "u.csv",
        save_uncertainty=tmp_path / "u",
        options=PredictOptions(device="cpu", workers=0, calibration="none"),
    )
    common = ("--uncertainty", tmp_path / "u", "--json", "-j", "0")
    code, out, err = cli(capsys, "pseudo", plain, data, "-o", tmp_path / "p0", "--max-uncertainty", "0", *common)
    assert code == 0, err
    left = json.loads(out)["left_out"]
    assert left and all(r["reason"].startswith("uncertainty") for r in left)
    code, out, err = cli(capsys, "pseudo", plain, data, "-o", tmp_path / "p1", "--max-uncertainty", "1", *common)
    assert code == 0 and not any(r["reason"].startswith("uncertainty") for r in json.loads(out)["left_out"])
    code, _, err = cli(capsys, "pseudo", plain, data, "-o", tmp_path / "p2", "--max-uncertainty", "0.5")
    assert code == 2 and "--uncertainty" in error_line(err)


def test_predict_and_an_export_apply_an_isotonic_calibration(setup, tmp_path, capsys):
    """A version-2 file (steps per saved value) goes where a temperature goes: predict applies it, an export's
    sidecar carries it and predict -m EXPORT applies it alike."""
    data, runs, _, root, plain = setup
    steps = np.tile(np.sqrt(np.arange(256) / 255), (29, 1))  # monotone, far from any logistic map
    iso = Calibration(np.ones(29), np.zeros(29), None, "", steps)
    iso.write(tmp_path / "iso.json")
    code, _, err = cli(
        capsys, "predict", data, "-m", runs[0], "-o", tmp_path / "c.csv", "--calibration", tmp_path / "iso.json",
        "--save-probs", tmp_path / "p", *OPTS,
    )  # fmt: skip
    assert code == 0, err
    for name in probs.read_manifest(tmp_path / "p")["images"]:
        raw, calibrated = probs.load(plain, name), probs.load(tmp_path / "p", name)
        assert np.abs(iso.apply_quantized(raw).astype(int) - calibrated).max() <= 1  # float vs uint8 rounding
    out = tmp_path / "m.ts"
    code, _, err = cli(
        capsys, "export", runs[0], "-f", "torchscript", "-o", out, "--calibration", tmp_path / "iso.json"
    )
    assert code == 0, err
    assert len(json.loads(Path(f"{out}.json").read_text())["calibration"]["steps"]["Ulna"]) == 256
    code, _, err = cli(
        capsys, "predict", data, "-m", out, "-o", tmp_path / "e.csv", "--save-probs", tmp_path / "e", "--trust-model",
        *OPTS,
    )  # fmt: skip
    assert code == 0, err
    name = probs.read_manifest(tmp_path / "e")["images"][0]
    assert np.abs(probs.load(tmp_path / "e", name).astype(int) - probs.load(tmp_path / "p", name)).max() <= 1


def test_apply_float_and_uint8_agree_and_clip_alike():
    cal = calibration.Calibration(np.linspace(0.5, 3, 29), np.linspace(-1, 1, 29))
    q = np.tile(np.arange(256, dtype=np.uint8), (29, 1, 1))
    from_float = probs.quantize(cal.apply(q / 255.0))
    assert np.array_equal(from_float, cal.apply_quantized(q))
    import torch

    assert np.array_equal(probs.quantize(cal.apply(torch.from_numpy(q / 255.0))), from_float)
    # beyond the outermost bins a probability is calibrated as its saved value
    extreme = cal.apply(np.full((29, 1, 1), 1e-9))
    assert np.allclose(extreme, cal.apply(np.full((29, 1, 1), 0.0)))


def test_reader_is_strict(tmp_path):
    good = calibration.Calibration(np.full(29, 2.0), np.zeros(29), np.full(29, 0.4))
    good.write(tmp_path / "c.json")
    back = calibration.read(tmp_path / "c.json")
    assert np.allclose(back.temperature, 2.0) and np.allclose(back.thresholds, 0.4)
    doc = json.loads((tmp_path / "c.json").read_text())
    for key, value, message in [
        ("format", "x", "not a boneseg calibration"),
        ("version", 9, "version 9"),
        ("temperature", {**doc["temperature"], "Radius": 0}, "'temperature' of 'Radius'"),
        ("temperature", {**doc["temperature"], "Radius": float("nan")}, "not a finite number"),
        ("bias", {k: v for k, v in doc["bias"].items() if k != "Ulna"}, "lacks 1 class"),
        ("bias", {**doc["bias"], "Radus": 0}, "unknown class 'Radus'"),
        ("thresholds", {"Radius": 2}, "'thresholds'"),
    ]:
        (tmp_path / "bad.json").write_text(json.dumps({**doc, key: value}))
        with pytest.raises(DataError, match="bad.json") as info:
            calibration.read(tmp_path / "bad.json")
        assert message in str(info.value)
