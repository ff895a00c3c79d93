"""`boneseg analyze`: run-length Dice against direct mask computation, similarity, JSON, plots, errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from util import square_polygons, write_dataset, write_label

from boneseg import CLASSES, metrics
from boneseg.cli import main
from boneseg.data.layout import discover
from boneseg.data.masks import MaskCache, default_cache_dir
from boneseg.errors import DataError, UsageError
from boneseg.submission import SubmissionWriter
from boneseg.workflows.analysis import analyze, suggest_ensemble


def cli(capsys, *args):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def truth_masks(root):
    cache = MaskCache(default_cache_dir(root))
    samples = discover(root, "train")
    return samples, np.stack([cache.get(s).masks for s in samples])


def perturb(masks, seed):
    """Realistic errors per class: dilated, eroded, shifted, dropped, spurious or untouched."""
    rng, kernel, out = np.random.default_rng(seed), np.ones((3, 3), np.uint8), masks.copy()
    for img in out:
        for c in range(len(CLASSES)):
            r = rng.random()
            if r < 0.25:
                img[c] = cv2.dilate(img[c].astype(np.uint8), kernel).astype(bool)
            elif r < 0.5:
                img[c] = cv2.erode(img[c].astype(np.uint8), kernel).astype(bool)
            elif r < 0.6:
                img[c] = np.roll(img[c], 4, axis=1)
            elif r < 0.65:
                img[c] = False
        img[3, 0, -3:] = img[3, 1, :2] = True  # a run wrapping from one row into the next
    return out


def write_csv(path, names, masks):
    with SubmissionWriter(path) as w:
        for name, m in zip(names, masks):
            w.write_masks(name, m)
    return path


def test_dice_equals_direct_computation(synth_data, tmp_path):
    samples, gt = truth_masks(synth_data)
    pred = perturb(gt, seed=1)
    csv = write_csv(tmp_path / "pred.csv", [s.image_name for s in samples], pred)
    result = analyze([csv], synth_data)
    expected = metrics.dice(pred, gt)
    np.testing.assert_allclose(result.dice[0], expected, rtol=0, atol=1e-12)
    report = result.to_json()
    assert report["images"] == len(samples)
    assert report["mean_dice"] == pytest.approx(expected.mean(axis=0).mean(), abs=1e-12)
    assert list(report["per_class_dice"]) == list(CLASSES)
    for c, name in enumerate(CLASSES):
        assert report["per_class_dice"][name] == pytest.approx(expected[:, c].mean(), abs=1e-12)
        ratio = pred[:, c].sum() / gt[:, c].sum()
        assert report["area_ratio"][name] == pytest.approx(ratio, rel=1e-12)
    per_image = expected.mean(axis=1)
    assert report["per_image_dice"] == pytest.approx({s.image_name: v for s, v in zip(samples, per_image)})
    worst = report["worst_images"]
    assert [w["image"] for w in worst] == [samples[i].image_name for i in np.argsort(per_image, kind="stable")]
    assert worst[0]["worst_class_dice"] == pytest.approx(expected[np.argmin(per_image)].min())
    assert report["models"][str(csv)]["mean_dice"] == report["mean_dice"]
    assert report["similarity"] is None and report["suggested_ensemble"] == []


def test_perfect_prediction_scores_one(synth_data, tmp_path):
    samples, gt = truth_masks(synth_data)
    csv = write_csv(tmp_path / "gt.csv", [s.image_name for s in samples], gt)
    report = analyze([csv], synth_data).to_json()
    assert report["mean_dice"] == 1.0 and set(report["area_ratio"].values()) == {1.0}


def test_empty_predictions_and_missing_classes(tmp_path):
    data = write_dataset(tmp_path / "data", patients=1, size=64, test_patients=0)
    samples = discover(data, "train")
    polys = square_polygons(64)
    del polys["Ulna"]  # a class missing from one label: empty truth
    write_label(samples[0].label, polys)
    csv = write_csv(tmp_path / "empty.csv", [s.image_name for s in samples], np.zeros((2, 29, 64, 64), bool))
    report = analyze([csv], data).to_json()
    dice = report["per_class_dice"]
    assert dice["Ulna"] == 0.5  # image 0: both empty -> 1; image 1: truth not empty -> 0
    assert all(v == 0.0 for k, v in dice.items() if k != "Ulna")
    assert report["area_ratio"]["Ulna"] == 0.0 and report["models"][str(csv)]["empty_masks"]["Ulna"] == 2


def test_cli_json_schema_plots_and_force(synth_data, tmp_path, capsys):
    samples, gt = truth_masks(synth_data)
    names = [s.image_name for s in samples]
    a = write_csv(tmp_path / "a.csv", names, perturb(gt, 2))
    b = write_csv(tmp_path / "b.csv", names, perturb(gt, 3))
    out = tmp_path / "report"
    code, stdout, stderr = cli(capsys, "analyze", a, b, "--gt", synth_data, "--out", out, "--json", "--worst", "4")
    assert code == 0, stderr
    doc = json.loads(stdout)  # stdout holds the JSON only
    assert set(doc) >= {
        "inputs",
        "images",
        "mean_dice",
        "per_class_dice",
        "per_image_dice",
        "worst_images",
        "area_ratio",
        "models",
        "similarity",
        "suggested_ensemble",
    }
    assert doc["inputs"] == [str(a), str(b)] and doc["images"] == len(names)
    assert doc["mean_dice"] == doc["models"][str(a)]["mean_dice"] != doc["models"][str(b)]["mean_dice"]
    mean = np.array(doc["similarity"]["mean"])
    assert mean.shape == (2, 2) and np.allclose(np.diag(mean), 1) and mean[0, 1] == mean[1, 0] < 1
    assert list(doc["similarity"]["per_class"]) == list(CLASSES)
    assert len(doc["worst_images"]) == 4
    assert doc["suggested_ensemble"][0] == max(doc["models"], key=lambda k: doc["models"][k]["mean_dice"])
    assert "Dice per class" in stderr and "suggested ensemble" in stderr
    assert "[bold]" not in stderr and "[/" not in stderr  # styled, not printed as markup
    assert json.loads((out / "analysis.json").read_text()) == doc
    for name in ("per_class.png", "dice_vs_area.png", "worst_cases.png", "similarity.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[0] > 100
    code, _, stderr = cli(capsys, "analyze", a, "--gt", synth_data, "--out", out)
    assert code == 1 and "already exists" in stderr and "--force" in stderr
    code, _, _ = cli(capsys, "analyze", a, "--gt", synth_data, "--out", out, "--force")
    assert code == 0


def test_similarity_of_a_csv_with_itself_is_one(synth_data, tmp_path, capsys):
    samples, gt = truth_masks(synth_data)
    pred = perturb(gt, 4)
    pred[0] = False  # an all-empty image too
    csv = write_csv(tmp_path / "p.csv", [s.image_name for s in samples], pred)
    code, stdout, _ = cli(capsys, "analyze", csv, csv, "--size", 256, "--json")
    doc = json.loads(stdout)
    assert code == 0 and doc["mean_dice"] is None and doc["per_class_dice"] is None
    assert doc["similarity"]["mean"] == [[1.0, 1.0], [1.0, 1.0]]
    assert all(m == [[1.0, 1.0], [1.0, 1.0]] for m in doc["similarity"]["per_class"].values())
    assert len(doc["models"]) == 2  # the same file twice keeps two entries


def test_iou_changes_spread_and_disagreement_equal_direct_computation(synth_data, tmp_path, capsys):
    """What teams' own scripts print, from the run-length sweep, against numpy on the decoded masks."""
    samples, gt = truth_masks(synth_data)
    names = [s.image_name for s in samples]
    preds = [perturb(gt, 5), perturb(gt, 6), perturb(gt, 7)]
    preds[2][3, :12] = False  # image 3 loses 12 classes in one model only: the most disputed image
    csvs = [write_csv(tmp_path / f"{k}.csv", names, p) for k, p in enumerate(preds)]
    code, stdout, stderr = cli(capsys, "analyze", *csvs, "--gt", synth_data, "--json", "--worst", "3")
    assert code == 0, stderr
    doc = json.loads(stdout)
    inter, area, truth = metrics.dice_counts(preds[0], gt)
    union = area + truth - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    assert doc["mean_iou"] == pytest.approx(iou.mean(axis=0).mean(), abs=1e-12)
    assert doc["per_class_iou"] == pytest.approx(dict(zip(CLASSES, iou.mean(axis=0))), abs=1e-12)
    assert doc["models"][str(csvs[1])]["mean_iou"] < doc["models"][str(csvs[1])]["mean_dice"]
    for k in (1, 2):
        changes = doc["models"][str(csvs[k])]["changes"]
        added = (preds[k] & ~preds[0]).sum(axis=(0, 2, 3))
        removed = (preds[0] & ~preds[k]).sum(axis=(0, 2, 3))
        assert changes["from"] == str(csvs[0])
        assert changes["added"] == added.sum() and changes["removed"] == removed.sum() > 0
        assert [changes["per_class"][c] for c in CLASSES] == [
            {"added": int(a), "removed": int(r)} for a, r in zip(added, removed)
        ]
    assert "changes" not in doc["models"][str(csvs[0])]
    areas = np.stack([p.sum(axis=(2, 3)).mean(axis=0) for p in preds])  # (models, 29) mean px per image
    for c, name in enumerate(CLASSES):
        spread = doc["area_spread"][name]
        assert spread["mean"] == pytest.approx(areas[:, c].mean()) and spread["std"] == pytest.approx(areas[:, c].std())
        assert spread["cv"] == pytest.approx(areas[:, c].std() / areas[:, c].mean())
    pairwise = np.mean([metrics.dice(preds[a], preds[b]) for a, b in ((0, 1), (0, 2), (1, 2))], axis=0)
    order = np.argsort(pairwise.mean(axis=1), kind="stable")[:3]
    assert [d["image"] for d in doc["disagreement_images"]] == [names[i] for i in order]
    top = doc["disagreement_images"][0]
    assert top["image"] == names[3] and top["worst_class"] in CLASSES[:12]
    assert top["mean_pairwise_dice"] == pytest.approx(pairwise[3].mean(), abs=1e-12)
    for title in ("IoU", "Pixels added / removed going from", "Class areas across models", "disagree on most"):
        assert title in stderr
    code, stdout, _ = cli(capsys, "analyze", csvs[0], "--size", 256, "--json")
    doc = json.loads(stdout)
    assert doc["mean_iou"] is None and doc["area_spread"] is None and doc["disagreement_images"] == []


def test_fold_restricts_to_validation_images(synth_data, tmp_path):
    from boneseg.data.split import make_splits
    from boneseg.io import write_json

    samples, gt = truth_masks(synth_data)
    splits = make_splits(samples, folds=2, seed=0)
    write_json(tmp_path / "splits.json", splits)
    val = {n for n, f in splits["assignments"].items() if f == 1}
    csv = write_csv(tmp_path / "all.csv", [s.image_name for s in samples], gt)
    result = analyze([csv], synth_data, fold=1, splits=tmp_path / "splits.json")
    assert set(result.inputs.images) == {s.image_name for s in samples if s.name in val}
    assert result.mean_dice() == 1.0 and "ignored" in result.inputs.notes[0]
    keep = [i for i, s in enumerate(samples) if s.name not in val]
    part = write_csv(tmp_path / "part.csv", [samples[i].image_name for i in keep], gt[keep])
    with pytest.raises(DataError, match="lacks .* validation image"):
        analyze([part], synth_data, fold=1, splits=tmp_path / "splits.json")
    with pytest.raises(UsageError, match="--fold and --splits"):
        analyze([csv], synth_data, fold=1)


def test_errors_name_the_fault(synth_data, tmp_path, capsys):
    samples, gt = truth_masks(synth_data)
    names = [s.image_name for s in samples]
    stranger = write_csv(tmp_path / "x.csv", ["nowhere.png", *names[1:]], gt)
    with pytest.raises(DataError, match=r"not among the labelled train images.*nowhere\.png"):
        analyze([stranger], synth_data)
    fewer = write_csv(tmp_path / "fewer.csv", names[:-1], gt[:-1])
    full = write_csv(tmp_path / "full.csv", names, gt)
    with pytest.raises(DataError, match="images differ"):
        analyze([full, fewer], size=256)
    bad = tmp_path / "bad.csv"
    bad.write_text(full.read_text().replace(f"{names[0]},finger-2,", f"{names[0]},finger-2,99999999 3 "))
    code, _, stderr = cli(capsys, "analyze", bad, "--gt", synth_data)
    assert code == 1 and stderr.startswith("Error: ") and "finger-2" in stderr and names[0] in stderr
    assert len(stderr.strip().splitlines()) == 1
    code, _, stderr = cli(capsys, "analyze", full, "--fold", "0")
    assert code == 2 and "--fold" in stderr
    afile = tmp_path / "afile"
    afile.write_text("kept")
    for out in (["--out", afile], ["--out", afile, "--force"]):
        code, _, stderr = cli(capsys, "analyze", full, "--size", 256, *out)
        assert code == 1 and stderr == f"Error: --out {afile}: exists and is not a folder\n"
    assert afile.read_text() == "kept"


def test_suggest_ensemble_rule():
    sim = np.array([[1.0, 0.97, 0.90, 0.93], [0.97, 1.0, 0.92, 0.95], [0.90, 0.92, 1.0, 0.94], [0.93, 0.95, 0.94, 1.0]])
    # the best (1), then the least similar model within tolerance (2, not the weaker 0 or the similar 3)
    assert suggest_ensemble(sim, [0.90, 0.93, 0.925, 0.93], tolerance=0.01, max_models=2) == [1, 2]
    assert suggest_ensemble(sim, [0.90, 0.93, 0.80, 0.93], tolerance=0.01) == [1, 3]
    assert suggest_ensemble(sim, [0.90, 0.93, 0.80, 0.80], tolerance=0.01) == [1]
    assert suggest_ensemble(sim) == [0, 2]  # no scores: least similar pair
    assert suggest_ensemble(np.ones((2, 2)), [0.9, 0.9]) == [0]  # a copy adds nothing


def test_per_class_plot_starts_at_zero(synth_data, tmp_path):
    from boneseg.workflows.analysis import _per_class_figure, analyze

    samples = discover(synth_data, "train")
    cache = MaskCache(default_cache_dir(synth_data))
    with SubmissionWriter(tmp_path / "p.csv") as w:
        for s in samples:
            m = cache.get(s).masks.copy()
            m[:, :, :3] = False  # a small error everywhere: Dice near 0.9-1
            w.write_masks(s.image_name, m)
    fig = _per_class_figure(analyze([tmp_path / "p.csv"], synth_data))
    dice_axis = fig.axes[0]
    assert dice_axis.get_xlim() == (0.0, 1.0)
    assert min(t.get_fontsize() for t in dice_axis.get_yticklabels()) >= 10
