"""`boneseg calibrate`: known temperatures recovered, ECE, and the calibration it fits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from util import cli, error_line, write_dataset

from boneseg import CLASSES, calibration, probs
from boneseg.data.layout import discover
from boneseg.data.masks import build_sample
from boneseg.errors import DataError
from boneseg.workflows.calibrate import calibrate, ece, fit_class


def _hist(temperature: float, bias: float = 0.0, scale: float = 1e6) -> np.ndarray:
    """A (2, 256) histogram of saved values whose true positive rate is sigmoid((logit(p) - bias) / T)."""
    z = calibration.logits(np.arange(256) / 255)
    n = scale * np.exp(-0.5 * (z / 3) ** 2)  # pixels spread over the values
    rate = 1 / (1 + np.exp(-(z - bias) / temperature))
    return np.stack([np.rint(n * (1 - rate)), np.rint(n * rate)])


@pytest.mark.parametrize("temperature", [0.5, 2.0, 3.5])
def test_a_temperature_applied_on_purpose_is_recovered(temperature):
    t, b = fit_class(_hist(temperature))
    assert t == pytest.approx(temperature, rel=1e-3) and b == 0.0


def test_platt_recovers_temperature_and_bias():
    t, b = fit_class(_hist(2.5, bias=1.2), platt=True)
    assert t == pytest.approx(2.5, rel=1e-3) and b == pytest.approx(1.2, abs=1e-2)


def test_a_class_without_positives_keeps_the_identity():
    h = _hist(2.0)
    h[1] = 0
    assert fit_class(h, platt=True) == (1.0, 0.0)


def test_ece_of_calibrated_points_is_zero_and_bins_hold_equal_mass():
    conf = np.linspace(0.01, 0.99, 50)
    n = np.full(50, 1000.0)
    err, curve = ece(conf, conf * n, (1 - conf) * n, bins=10)
    assert err == pytest.approx(0, abs=1e-12)
    assert [round(c[2], 9) for c in curve] == [0.1] * 10
    # all-positive pixels at p = 0.2: ECE 0.8
    assert ece(np.array([0.2]), np.array([5.0]), np.array([0.0]), bins=4)[0] == pytest.approx(0.8)


def _overconfident_oof(tmp_path: Path, t0: float) -> tuple[Path, Path]:
    """OOF probabilities of a labelled set, two values per class: the predicted group (the label and one
    in 6 background pixels of its box) and the rest (one in 5 label pixels), each saved as
    sigmoid(t0 * logit(its true positive rate)): over-confident by t0."""
    data = write_dataset(tmp_path / "data", patients=2, size=64, test_patients=0)
    samples = list(discover(data, "train"))
    folder = tmp_path / "oof"
    folder.mkdir()
    masks = {s.image_name: build_sample(s).masks.astype(bool) for s in samples}
    groups = {}
    for name, m in masks.items():
        yy, xx = np.indices(m.shape[1:])
        extra = ((yy + 2 * xx) % 6 == 0)[None] & ~m
        miss = ((3 * yy + xx) % 5 == 0)[None] & m
        groups[name] = ((m & ~miss) | extra, m)
    inside = sum((g & t).sum(axis=(1, 2)) for g, t in groups.values()) / sum(
        g.sum(axis=(1, 2)) for g, _ in groups.values()
    )
    outside = sum((~g & t).sum(axis=(1, 2)) for g, t in groups.values()) / sum(
        (~g).sum(axis=(1, 2)) for g, _ in groups.values()
    )

    def saved(rate):
        z = np.log(rate) - np.log1p(-rate)
        return 1 / (1 + np.exp(-t0 * z))

    for name, (g, _) in groups.items():
        p = np.where(g, saved(inside)[:, None, None], saved(outside)[:, None, None])
        probs.save(folder, name, probs.quantize(p))
    probs.write_manifest(
        folder, [s.image_name for s in samples], ["m"], {"folds": {s.image_name: i % 2 for i, s in enumerate(samples)}}
    )
    return data, folder


def test_calibrate_finds_an_overconfidence(tmp_path):
    data, folder = _overconfident_oof(tmp_path, 2.0)
    rep = calibrate(folder, data, tmp_path / "cal.json", platt=False, workers=0, band=4)
    assert (rep.calibration.temperature > 1.3).all()  # over-confidence found (the rare misses clip at 0.5/255)
    s = rep.summary
    assert s["nll_all_after"] < s["nll_all_before"] / 2 and s["ece_all_after"] < s["ece_all_before"]
    assert rep.folds == [0, 1] and rep.settings["cross_fitted"]
    assert (tmp_path / "cal.png").stat().st_size > 10_000
    back = calibration.read(tmp_path / "cal.json")
    assert np.allclose(back.temperature, rep.calibration.temperature) and back.thresholds is not None


def test_calibrate_command(tmp_path, capsys):
    data, folder = _overconfident_oof(tmp_path, 3.0)
    out = tmp_path / "c.json"
    code, stdout, err = cli(capsys, "calibrate", folder, "--gt", data, "-o", out, "--json", "-j", "0")
    assert code == 0, err
    doc = json.loads(stdout)
    assert (
        set(doc["per_class"]) == set(CLASSES) and doc["summary"]["ece_band_after"] < doc["summary"]["ece_band_before"]
    )
    code, _, err = cli(capsys, "calibrate", folder, "--gt", data, "-o", out, "-j", "0")
    assert code == 1 and "exists" in error_line(err)
    code, _, err = cli(capsys, "calibrate", folder, "--gt", data, "-o", tmp_path / "d.json", "--bins", "1")
    assert code == 2 and "--bins" in error_line(err)
    code, _, err = cli(capsys, "calibrate", folder, "--gt", data, "-o", tmp_path / "d.json", "--fit-on", "bnd")
    assert code == 2 and "band" in error_line(err)


def test_probabilities_calibrated_when_predicted_are_not_calibrated_again(tmp_path, capsys):
    """calibrate fits on them, select and ensemble apply a calibration to them: each compounds two
    calibrations, so every reader of a probability folder refuses one whose probs.json records a calibration."""
    from boneseg.calibration import Calibration

    data, folder = _overconfident_oof(tmp_path, 2.0)
    doc = json.loads((folder / "probs.json").read_text())
    doc["calibration"] = {"m": {"source": "cal.json"}}
    (folder / "probs.json").write_text(json.dumps(doc))
    code, _, err = cli(capsys, "calibrate", folder, "--gt", data, "-o", tmp_path / "c.json", "-j", "0")
    assert code == 1 and "calibrated when predicted" in error_line(err) and not (tmp_path / "c.json").exists()
    Calibration(np.ones(len(CLASSES)), np.zeros(len(CLASSES))).write(tmp_path / "id.json")
    (tmp_path / "splits.json").write_text("{}")
    cals = ["--calibration", "none", "--calibration", tmp_path / "id.json", "-o", tmp_path / "out"]
    for command in (
        ["select", folder, folder, "--gt", data, "--splits", tmp_path / "splits.json", *cals],
        ["ensemble", folder, folder, "--vote", "soft", *cals],
    ):
        code, _, err = cli(capsys, *command)
        assert code == 1 and f"{folder}: its probabilities were calibrated" in error_line(err), err


def test_an_isotonic_calibration_recovers_a_monotone_distortion_and_round_trips(tmp_path):
    """Synthetic saved values whose true positive rate is a known non-logistic monotone map of the value (no
    temperature and bias can express it): the isotonic steps recover it; the file (version 2) reads back; a
    float probability and its saved value are calibrated alike (numpy and torch); steps that decrease or a
    version-2 file without steps are refused."""
    from boneseg.workflows.calibrate import STEP_FLOOR, fit, isotonic_steps

    v = np.arange(256) / 255
    truth = np.where(v < 0.5, 0.05 * v, 0.2 + 0.8 * v**3)  # a jump at 0.5: no logistic curve fits it
    n = np.full(256, 1e6)
    hist = np.stack([n * (1 - truth), n * truth])
    steps = isotonic_steps(hist)
    assert np.abs(steps - np.clip(truth, STEP_FLOOR, 1 - STEP_FLOOR)).max() < 1e-9 and (np.diff(steps) >= 0).all()
    assert np.allclose(isotonic_steps(np.stack([n * 0, n])), calibration.Calibration.identity().table()[0])

    cal = fit(np.stack([hist] * 29), isotonic=True)
    conf = cal.table()[0]
    assert ece(conf, hist[1], hist[0])[0] < STEP_FLOOR and ece(v, hist[1], hist[0])[0] > 0.05
    path = tmp_path / "iso.json"
    calibration.Calibration(cal.temperature, cal.bias, np.full(29, 0.3), "", cal.steps).write(path)
    doc = json.loads(path.read_text())
    assert doc["version"] == 2 and len(doc["steps"]["Ulna"]) == 256
    back = calibration.read(path)
    assert np.allclose(back.steps, cal.steps) and np.allclose(back.thresholds, 0.3)
    q = np.tile(np.arange(256, dtype=np.uint8), (29, 1, 1))
    assert np.array_equal(probs.quantize(back.apply(q / 255.0)), back.apply_quantized(q))
    import torch

    on_device = probs.quantize(back.apply(torch.from_numpy(q / 255.0).float())).astype(int)
    assert np.abs(on_device - back.apply_quantized(q)).max() <= 1  # float32: a step at k + 0.5 may round down
    for bad, message in [
        ({**doc, "steps": {**doc["steps"], "Ulna": doc["steps"]["Ulna"][::-1]}}, "'steps' of 'Ulna' must not decrease"),
        ({**doc, "steps": {**doc["steps"], "Ulna": [0.1] * 10}}, "list of 256 probabilities"),
        ({k: v for k, v in doc.items() if k != "steps"}, "version 2 needs 'steps'"),
    ]:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=message):
            calibration.read(tmp_path / "bad.json")


def test_calibrate_isotonic_command(tmp_path, capsys):
    data, folder = _overconfident_oof(tmp_path, 3.0)
    out = tmp_path / "iso.json"
    code, stdout, err = cli(capsys, "calibrate", folder, "--gt", data, "-o", out, "--isotonic", "--json", "-j", "0")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["method"] == "isotonic" and doc["summary"]["ece_all_after"] < doc["summary"]["ece_all_before"]
    back = calibration.read(out)
    assert back.steps is not None and back.thresholds is not None
