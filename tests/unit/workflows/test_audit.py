"""The label audit (`boneseg audit`): injected label errors ranked first, crops, probabilities, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from util import cli, rows, write_dataset

from boneseg.data.layout import discover, png_shape
from boneseg.data.masks import load_label, rasterize
from boneseg.errors import UsageError
from boneseg.submission import SubmissionWriter


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    return lines[0]


def noisy_truth_csv(clean: Path, out: Path, outlines: bool = False) -> Path:
    """Stand-in "predictions": the clean phantom's true masks, each image moved by up to 2 px and each class
    grown or shrunk by a pixel at random (mild noise, so that the test needs no trained model); with
    `outlines`, each class is moved by up to 3 px on its own and keeps its size instead: a model whose
    outlines wander (Dice of a small bone spread widely) but whose areas are right."""
    import cv2

    rng = np.random.default_rng(0)
    kernel = np.ones((3, 3), np.uint8)
    with SubmissionWriter(out) as w:
        for s in discover(clean):
            shape = png_shape(s.image)
            masks = rasterize(load_label(s.label, shape).polygons, shape).view(np.uint8)
            if outlines:
                moved = [np.roll(m, tuple(rng.integers(-3, 4, 2)), (0, 1)) for m in masks]
                w.write_masks(s.image_name, np.stack(moved).view(np.bool_))
                continue
            masks = np.roll(masks, tuple(rng.integers(-2, 3, 2)), axis=(1, 2))
            masks = np.stack(
                [
                    cv2.dilate(m, kernel) if rng.random() < 0.3 else cv2.erode(m, kernel) if rng.random() < 0.4 else m
                    for m in masks
                ]
            )
            w.write_masks(s.image_name, masks.view(np.bool_))
    return out


def test_audit_ranks_the_injected_errors_first(phantoms, tmp_path, capsys):
    pred = noisy_truth_csv(phantoms / "clean", tmp_path / "pred.csv")
    out = tmp_path / "audit"
    code, _, err = cli(
        capsys, "audit", phantoms / "noisy", "--pred", pred, "--out", out, "--min-score", "-100", "--crops", "3"
    )
    assert code == 0, err
    truth = {(r["image_name"], r["class"]) for r in rows(phantoms / "noisy" / "label_errors.csv")}
    ranked = [(r["image_name"], r["class"]) for r in rows(out / "suspects.csv")]
    n = len(truth)
    assert n >= 5
    assert sum(t in set(ranked[: 2 * n]) for t in truth) >= 0.8 * n
    assert sum(p not in truth for p in ranked[:n]) <= 2
    scores = [float(r["score"]) for r in rows(out / "suspects.csv")]
    assert scores == sorted(scores, reverse=True)
    kinds = {(r["image_name"], r["class"]): r["kind"] for r in rows(out / "suspects.csv")}
    injected = {(r["image_name"], r["class"]): r["kind"] for r in rows(phantoms / "noisy" / "label_errors.csv")}
    assert all(kinds[p] == "missing" for p, k in injected.items() if k == "delete")
    assert all(kinds[p] == "swap" for p, k in injected.items() if k == "swap")
    doc = json.loads((out / "audit.json").read_text())
    assert doc["images"] == 12 and doc["ranked"][0]["score"] == scores[0]
    assert len(list((out / "crops").glob("*.png"))) == 3
    # the list leaves the suspect images out of eda
    top = tmp_path / "top.csv"
    top.write_text("image_name,class\n" + "".join(f"{a},{b}\n" for a, b in ranked[:n]))
    code, stdout, err = cli(capsys, "eda", phantoms / "noisy", "--exclude", top, "--json", "--samples", "0")
    assert code == 0, err
    assert json.loads(stdout)["counts"]["images"] == 12 - len({a for a, _ in ranked[:n]})
    # an existing output is kept without --force
    code, _, err = cli(capsys, "audit", phantoms / "noisy", "--pred", pred, "--out", out)
    assert code == 1 and "--force" in error_line(err)


def _truth_csv(clean: Path, out: Path, change) -> Path:
    """The clean phantom's true masks as predictions, each image's stack passed through `change(i, masks)`."""
    with SubmissionWriter(out) as w:
        for i, s in enumerate(discover(clean)):
            shape = png_shape(s.image)
            w.write_masks(s.image_name, change(i, rasterize(load_label(s.label, shape).polygons, shape)))
    return out


def test_geometry_comes_from_the_label_and_weak_predictions_are_said(phantoms, tmp_path, capsys):
    """A prediction that puts the index and little metacarpals the other way round on one image does not make
    its clean finger rows `geometry` suspects (the rows' axis is the label's own); predictions far from the
    labels (mean Dice below 0.5) are said to be too weak to rank, in a warning and in audit.json."""
    from boneseg import CLASSES

    a, b = CLASSES.index("finger-7"), CLASSES.index("finger-19")

    def swap_ends(i, masks):
        if i == 0:
            masks[[a, b]] = masks[[b, a]]
        return masks

    pred = _truth_csv(phantoms / "clean", tmp_path / "swapped.csv", swap_ends)
    code, _, err = cli(capsys, "audit", phantoms / "clean", "--pred", pred, "--out", tmp_path / "a", "--crops", "0")
    assert code == 0, err
    assert [r for r in rows(tmp_path / "a" / "suspects.csv") if r["kind"] == "geometry"] == []
    doc = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert doc["mean_dice"] > 0.9 and doc["weak_predictions"] is False and "too weak" not in err

    pred = _truth_csv(phantoms / "clean", tmp_path / "shifted.csv", lambda i, m: np.roll(m, 60, axis=2))
    code, out, err = cli(capsys, "audit", phantoms / "clean", "--pred", pred, "--out", tmp_path / "b", "--crops", "0")
    assert code == 0, err
    doc = json.loads((tmp_path / "b" / "audit.json").read_text())
    assert doc["mean_dice"] < 0.5 and doc["weak_predictions"] is True
    assert "too weak to rank labels" in " ".join(err.split()) and "mean Dice" in " ".join(err.split())


SMALL_CARPALS = ("Triquetrum", "Lunate", "Pisiform", "Trapezoid", "Scaphoid", "Trapezium")


def rescaled_copy(clean: Path, out: Path) -> dict[tuple[str, str], float]:
    """A copy of `clean` with one small carpal per image rescaled about its centre by 0.6 or 1.5 (the Dice
    of such a label stays ~0.6-0.7, within the spread of a small bone); returns the rescaled pairs."""
    shutil.copytree(clean, out)
    wrong = {}
    for i, s in enumerate(discover(out)):
        name, factor = SMALL_CARPALS[i % len(SMALL_CARPALS)], (0.6, 1.5)[i % 2]
        doc = json.loads(s.label.read_text())
        for a in doc["annotations"]:
            if a["label"] == name:
                pts = np.array(a["points"], float)
                a["points"] = np.rint(pts.mean(0) + (pts - pts.mean(0)) * factor).astype(int).tolist()
        s.label.write_text(json.dumps(doc))
        wrong[(s.image_name, name)] = factor
    return wrong


def test_audit_finds_rescaled_small_carpals(phantoms, tmp_path, capsys):
    wrong = rescaled_copy(phantoms / "clean", tmp_path / "scaled")
    pred = noisy_truth_csv(phantoms / "clean", tmp_path / "pred.csv", outlines=True)
    out = tmp_path / "audit"
    code, _, err = cli(
        capsys, "audit", tmp_path / "scaled", "--pred", pred, "--out", out, "--min-score", "-100", "--crops", "0"
    )
    assert code == 0, err
    ranked = [(r["image_name"], r["class"], r["kind"]) for r in rows(out / "suspects.csv")]
    top = {(a, c): k for a, c, k in ranked[: 2 * len(wrong)]}
    assert [p for p in wrong if p not in top] == []  # the area ratio finds them; Dice alone misses most
    assert {top[p] for p in wrong} == {"disagreement"}
    assert sum((a, c) not in wrong for a, c, _ in ranked[: len(wrong)]) <= 2


def test_audit_reads_probabilities_and_refuses_foreign_predictions(phantoms, tmp_path, capsys):
    from boneseg import probs

    samples = discover(phantoms / "clean")[:2]
    folder = tmp_path / "probs"
    for s in samples:
        shape = png_shape(s.image)
        probs.save(folder, s.image_name, probs.quantize(rasterize(load_label(s.label, shape).polygons, shape) * 0.9))
    probs.write_manifest(folder, [s.image_name for s in samples], ["truth"])
    code, _, err = cli(capsys, "audit", phantoms / "noisy", "--pred", folder, "--out", tmp_path / "a", "--crops", "0")
    assert code == 0, err
    assert "10 of the 12 train images have no prediction" in err
    other = tmp_path / "other.csv"
    with SubmissionWriter(other) as w:
        w.write_masks("elsewhere.png", np.zeros((29, 8, 8), bool))
    code, _, err = cli(capsys, "audit", phantoms / "noisy", "--pred", other, "--out", tmp_path / "b")
    assert code == 1 and "predicts none of the 12 train images" in error_line(err)
    code, _, err = cli(capsys, "synth", tmp_path / "s", "--label-errors", "1.5")
    assert code == 2 and "--label-errors" in error_line(err)
    code, _, err = cli(capsys, "synth", tmp_path / "s", "--patients", "4", "--label-errors", "0.05")
    assert code == 2 and "no error among 8 train images (one needs at least 0.125)" in error_line(err)
    assert not (tmp_path / "s").exists()


def test_oof_runs_the_models_as_predict_does(fold_runs, tmp_path, capsys):
    """oof takes predict's options of how the models run: one sliding tile of the training size is the
    resize prediction (same CSV), recorded as the sliding policy; a calibration file is refused (Python)."""
    from boneseg.inference import PredictOptions
    from boneseg.workflows.oof import oof

    _, runs = fold_runs
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert cli(capsys, "oof", *runs, "-o", a, "--device", "cpu")[0] == 0
    code, _, err = cli(capsys, "oof", *runs, "-o", b, "--save-probs", tmp_path / "p", "--device", "cpu",
                       "--sliding", "--window", "64", "--overlap", "0", "--no-amp", "-b", "2")  # fmt: skip
    assert code == 0, err
    assert a.read_text() == b.read_text()
    assert json.loads((tmp_path / "p" / "probs.json").read_text())["policy"] == "sliding:none"
    with pytest.raises(UsageError, match="--calibration"):
        oof(runs, tmp_path / "c.csv", options=PredictOptions(calibration=tmp_path / "cal.json"))


def truth_csv(data: Path, out: Path, images: int | None = None) -> Path:
    """The labels of `data` (its first `images` images) as a submission: perfect predictions."""
    with SubmissionWriter(out) as w:
        for s in discover(data)[:images]:
            shape = png_shape(s.image)
            w.write_masks(s.image_name, rasterize(load_label(s.label, shape).polygons, shape))
    return out


def test_audit_crops_are_replaced_whole_and_checked_first(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", patients=2, size=64, test_patients=0)
    pred, out = truth_csv(data, tmp_path / "pred.csv"), tmp_path / "audit"
    args = ["audit", data, "--pred", pred, "--out", out, "--min-score", "-100"]
    assert cli(capsys, *args, "--crops", "3")[0] == 0
    assert len(list((out / "crops").glob("*.png"))) == 3
    (out / "suspects.csv").unlink()
    (out / "audit.json").unlink()
    code, _, err = cli(capsys, *args, "--crops", "1")
    assert code == 1 and "crops is not empty" in error_line(err) and not (out / "suspects.csv").exists()
    assert cli(capsys, *args, "--crops", "1", "--force")[0] == 0
    assert len(list((out / "crops").glob("*.png"))) == 1  # none of the earlier audit's crops left beside it


def test_audit_of_too_few_images_says_so_and_shared_names_are_refused(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", patients=2, size=64, test_patients=0)
    code, _, err = cli(
        capsys, "audit", data, "--pred", truth_csv(data, tmp_path / "two.csv", 2), "--out", tmp_path / "a"
    )
    assert code == 0 and "2 of the 4 train images have no prediction" in err
    assert "only 2 image(s) audited" in err.replace("\n", " ")
    code, _, err = cli(capsys, "audit", data, "--pred", truth_csv(data, tmp_path / "all.csv"), "--out", tmp_path / "b")
    assert code == 0 and "audited" not in err
    first = discover(data)[0]
    twin = data / "train" / "DCM" / "ID009" / first.image_name
    twin.parent.mkdir(parents=True)
    shutil.copy(first.image, twin)
    (data / "train" / "outputs_json" / "ID009").mkdir()
    shutil.copy(first.label, data / "train" / "outputs_json" / "ID009" / first.label.name)
    code, _, err = cli(capsys, "audit", data, "--pred", tmp_path / "all.csv", "--out", tmp_path / "c")
    assert code == 1 and f"two images named {first.image_name}" in error_line(err)


def test_run_audit_checks_options_and_outputs_before_any_work(tmp_path):
    """The command's one entry point: an existing output or a bad --crops is refused before the (long) audit
    reads anything, from Python as from the command line."""
    from boneseg.errors import OutputExistsError, UsageError
    from boneseg.workflows.audit import run_audit

    out = tmp_path / "audit"
    out.mkdir()
    (out / "suspects.csv").write_text("image_name,class,kind,score\n")
    with pytest.raises(OutputExistsError, match=r"suspects\.csv"):
        run_audit(tmp_path / "no-data", tmp_path / "no.csv", out)
    with pytest.raises(UsageError, match=r"^--crops must be 0 or more, got -1$"):
        run_audit(tmp_path / "no-data", tmp_path / "no.csv", tmp_path / "other", crops=-1)


def test_audit_weighs_disagreement_by_the_models_uncertainty(phantoms, tmp_path, capsys):
    """--uncertainty: maps that are sure everywhere change no score; a model unsure exactly where the injected
    errors are takes them off the list (geometry, from the label alone, stays); the unsureness is in
    suspects.csv and audit.json; maps of other images are refused."""
    from boneseg import CLASSES, uncertainty

    pred = noisy_truth_csv(phantoms / "clean", tmp_path / "pred.csv")
    samples = discover(phantoms / "noisy")
    injected = {(r["image_name"], r["class"]): r["kind"] for r in rows(phantoms / "noisy" / "label_errors.csv")}

    def maps(folder: Path, unsure_at: set) -> Path:
        for s in samples:
            u = np.zeros((len(CLASSES), *png_shape(s.image)), np.uint8)
            for c, name in enumerate(CLASSES):
                u[c] = 255 if (s.image_name, name) in unsure_at else 0
            uncertainty.save(folder, s.image_name, {"entropy": u})
        uncertainty.write_manifest(folder, [s.image_name for s in samples], ["entropy"])
        return folder

    base = ("audit", phantoms / "noisy", "--pred", pred, "--crops", "0")
    code, _, err = cli(capsys, *base, "--out", tmp_path / "plain")
    assert code == 0, err
    code, _, err = cli(capsys, *base, "--out", tmp_path / "sure", "--uncertainty", maps(tmp_path / "u0", set()))
    assert code == 0, err
    plain, sure = rows(tmp_path / "plain" / "suspects.csv"), rows(tmp_path / "sure" / "suspects.csv")
    assert [{k: r[k] for k in ("image_name", "class", "kind", "score")} for r in sure] == plain
    assert plain and {r["uncertainty"] for r in sure} == {"0.0000"}
    doc = json.loads((tmp_path / "sure" / "audit.json").read_text())
    assert doc["uncertainty"]["maps"] == ["entropy"] and doc["ranked"][0]["uncertainty"] == 0.0

    code, _, err = cli(
        capsys, *base, "--out", tmp_path / "unsure", "--uncertainty", maps(tmp_path / "u1", set(injected))
    )
    assert code == 0, err
    listed = {(r["image_name"], r["class"]): r for r in rows(tmp_path / "unsure" / "suspects.csv")}
    found_before = [p for p in injected if p in {(r["image_name"], r["class"]) for r in plain}]
    assert len(found_before) >= 5
    assert all(listed[p]["kind"] == "geometry" for p in injected if p in listed)
    assert all(float(r["uncertainty"]) == 1.0 for p, r in listed.items() if p in injected)

    few = tmp_path / "few"
    uncertainty.write_manifest(few, [s.image_name for s in samples[:3]], ["entropy"])
    code, _, err = cli(capsys, *base, "--out", tmp_path / "x", "--uncertainty", few)
    assert code == 1 and "no maps of 9 of the 12 audited image(s)" in error_line(err)
    code, _, err = cli(capsys, *base, "--out", tmp_path / "x", "--uncertainty", tmp_path / "plain")
    assert code == 1 and "uncertainty.json" in error_line(err)
