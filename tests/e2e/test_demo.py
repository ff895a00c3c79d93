"""`boneseg demo --quick` end to end: every step runs, the files and the summary are there, same seed same result."""

from __future__ import annotations

import json

import cv2
import pytest
from typer.testing import CliRunner
from util import browse

from boneseg.classes import CLASSES
from boneseg.cli.app import app
from boneseg.errors import OutputExistsError, UsageError
from boneseg.submission import read_submission, validate_submission
from boneseg.workflows.demo import OVERLAY, OVERLAY_SIDE, STEPS, run_demo, settings_for


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """One quick demo through the command line (the CLI test and the file checks share it)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--seed", "3", "--threads", "1"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_cli_prints_steps_and_per_class_table(demo_dir):
    _, output = demo_dir
    for i, name in enumerate(STEPS, 1):
        assert f"[{i}/{len(STEPS)}] {name}" in output
    assert "Validation Dice per class" in output
    assert all(c in output for c in ("finger-1", "Pisiform", "Ulna"))
    assert "mean validation Dice" in output
    assert "report/index.html (open it in a browser)" in output


def test_tta_step_prints_each_policy_score(demo_dir):
    out, output = demo_dir
    tta = json.loads((out / "summary.json").read_text())["tta"]
    lines = [line.split() for line in output.splitlines() if "mean Dice" in line]
    assert {words[0]: words[3] for words in lines} == {name: f"{d:.4f}" for name, d in tta["policies"].items()}
    assert [words[0] for words in lines if "best:" in words] == [tta["best"]]


def test_report_opens_in_chromium(demo_dir):
    """The demo's report works in headless Chromium: its validation images in the gallery, no errors."""
    out, _ = demo_dir
    summary = json.loads((out / "summary.json").read_text())
    with browse(out / summary["files"]["report"]) as (page, errors, requests):
        page.click('a[data-tab="gallery"]')
        assert page.locator("#gallery-items .item").count() == summary["images"]["val"]
        page.locator("#gallery-items .item").first.click()
        page.wait_for_function("document.getElementById('viewer-canvas').dataset.renders >= 1")
    assert errors == [] and all(u.startswith((out / "report").as_uri()) for u in requests), (errors, requests)


def test_outputs_and_summary_schema(demo_dir):
    out, _ = demo_dir
    for name in (
        "data/train/DCM",
        "data/test/DCM",
        "data/meta_data.xlsx",
        "splits.json",
        "run/best.pt",
        "run/metrics.jsonl",
        "val.csv",
        "submission.csv",
        "analysis/analysis.json",
        "report/index.html",
        OVERLAY,
        "summary.json",
    ):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["mean_dice"] <= 1.0
    assert list(summary["per_class_dice"]) == list(CLASSES)
    assert summary["mean_dice"] == pytest.approx(sum(summary["per_class_dice"].values()) / len(CLASSES))
    assert 0.0 <= summary["train_val_dice"] <= 1.0
    assert set(STEPS) <= set(summary["seconds"]) and summary["seconds"]["total"] > 0
    assert summary["seed"] == 3 and summary["quick"] is True and summary["threads"] == 1
    assert summary["settings"]["size"] == settings_for(quick=True)["size"]
    assert summary["tta"]["best"] in summary["tta"]["policies"]
    # the test set with TTA: a valid submission of every test image
    images = sorted(p.name for p in (out / "data/test/DCM").rglob("*.png"))
    assert summary["images"]["test"] == len(images)
    size = summary["settings"]["size"]
    assert validate_submission(out / "submission.csv", shape=(size, size), images=images) == []
    # the validation fold: exactly its images, and analyze scored them
    splits = json.loads((out / "splits.json").read_text())
    val = sorted(k.split("/")[-1] for k, f in splits["assignments"].items() if f == summary["settings"]["fold"])
    assert sorted(read_submission(out / "val.csv").images) == val == sorted(summary_val_images(out))
    overlay = cv2.imread(str(out / OVERLAY))  # the test image enlarged to OVERLAY_SIDE, a legend beside it
    factor = -(-OVERLAY_SIDE // size)
    assert overlay.shape[0] >= size * factor and overlay.shape[1] > size * factor + 150


def summary_val_images(out):
    return list(json.loads((out / "analysis/analysis.json").read_text())["per_image_dice"])


def test_same_seed_same_result(demo_dir, tmp_path):
    out, _ = demo_dir
    again = run_demo(tmp_path / "again", seed=3, quick=True, overrides={"threads": 1})
    first = json.loads((out / "summary.json").read_text())
    assert again["per_class_dice"] == first["per_class_dice"]
    assert again["train_val_dice"] == first["train_val_dice"]
    assert (tmp_path / "again/submission.csv").read_bytes() == (out / "submission.csv").read_bytes()


def test_refuses_non_empty_out_without_force(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="--force"):
        run_demo(tmp_path, quick=True)
    assert (tmp_path / "keep.txt").exists()
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert result.exit_code != 0


def test_unknown_setting_is_named():
    with pytest.raises(UsageError, match="'epoch'.*epochs"):
        settings_for(overrides={"epoch": 3})
