"""`boneseg masks`: mask files and overlays a person opens, from a CSV or probabilities; its refusals."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from util import cli, error_line

from boneseg import CLASSES, probs
from boneseg.classes import PALETTE
from boneseg.submission import SubmissionWriter
from boneseg.workflows.masks import read_mask_file


def test_masks_from_a_csv_at_each_images_size(labelled, tmp_path, capsys):
    out = tmp_path / "m"
    code, _, err = cli(capsys, "masks", labelled["csv"], "--out", out, "--images", labelled["images"])
    assert code == 0, err
    assert f"wrote {out}" in err
    manifest = json.loads((out / "masks.json").read_text())
    assert manifest["classes"] == list(CLASSES) and set(manifest["images"]) == set(labelled["truth"])
    for name, truth in labelled["truth"].items():
        stem = name.removesuffix(".png")
        masks = read_mask_file(out / f"{stem}.npz")
        assert masks.shape == truth.shape and np.array_equal(masks, truth), name  # 48x80 kept its own size
        with np.load(out / f"{stem}.npz") as z:
            assert z["mask"].dtype == np.uint8 and list(z["classes"]) == list(CLASSES) and str(z["image_name"]) == name
        entry = manifest["images"][name]
        assert entry["area"]["finger-1"] == int(truth[0].sum()) and (entry["height"], entry["width"]) == truth.shape[1:]
        picture = cv2.cvtColor(cv2.imread(str(out / entry["overlay"])), cv2.COLOR_BGR2RGB)
        h, w = truth.shape[1:]
        assert picture.shape[0] >= h and picture.shape[1] > w + 100  # the image at its size, a legend beside it
        image = cv2.imread(str(labelled["images"] / name), cv2.IMREAD_GRAYSCALE)
        background = ~truth.any(axis=0)
        assert np.array_equal(picture[:h, :w][background][:, 0], image[background])  # drawn on the image
        first = truth[0] & ~truth[1:].any(axis=0)
        if first.any():  # class colour blended in where only finger-1 is
            y, x = np.argwhere(first)[0]
            expected = 0.55 * image[y, x] + 0.45 * np.array(PALETTE[0])
            assert np.abs(picture[y, x].astype(float) - expected).max() <= 1.5
        legend = picture[:, w:]
        swatch = np.all(np.abs(legend.astype(int) - PALETTE[0]) <= 1, axis=2)
        assert swatch.sum() >= 16  # finger-1's colour square in the legend
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left

    code, _, err = cli(capsys, "masks", labelled["csv"], "--out", out, "--images", labelled["images"])
    assert code == 1 and "already exists (use --force" in error_line(err)
    code, _, err = cli(capsys, "masks", labelled["csv"], "-o", out, "--size", 32, "--format", "tiff", "--force")
    assert code == 1 and "past the image's 1024 pixels" in error_line(err) and "labels.csv: image" in err
    assert (out / "masks.json").is_file()  # the refused run left the old folder as it was


def test_masks_on_black_and_as_tiff(labelled, tmp_path, capsys):
    sub = tmp_path / "square.csv"
    truth = labelled["truth"]
    names = [n for n in truth if n != "odd.png"]
    with SubmissionWriter(sub) as w:
        for n in names:
            w.write_masks(n, truth[n])
    out = tmp_path / "t"
    code, _, err = cli(capsys, "masks", sub, "-o", out, "--size", 256, "--format", "tiff")
    assert code == 0, err
    for n in names:
        stem = n.removesuffix(".png")
        ok, pages = cv2.imreadmulti(str(out / f"{stem}.tif"), flags=cv2.IMREAD_UNCHANGED)
        assert ok and len(pages) == len(CLASSES) and set(np.unique(pages[0])) <= {0, 255}
        assert np.array_equal(read_mask_file(out / f"{stem}.tif"), truth[n])
        picture = cv2.imread(str(out / f"{stem}.png"))
        assert picture[:256, :256][~truth[n].any(axis=0)].max() == 0  # no image: on black


def test_masks_from_probabilities(tmp_path, capsys):
    folder = tmp_path / "probs"
    q = np.zeros((len(CLASSES), 40, 60), np.uint8)
    q[0, 5:15, 5:15] = 200
    q[1, 20:30, 20:30] = 100  # 0.39: off at 0.5, on at 0.3
    probs.save(folder, "a.png", q)
    probs.write_manifest(folder, ["a.png"], ["m"])
    code, _, err = cli(capsys, "masks", folder, "-o", tmp_path / "a")
    assert code == 0, err
    masks = read_mask_file(tmp_path / "a" / "a.npz")
    assert masks.shape == (len(CLASSES), 40, 60) and masks[0].sum() == 100 and masks[1].sum() == 0
    code, _, err = cli(capsys, "masks", folder, "-o", tmp_path / "b", "--threshold", "0.3", "--no-overlays")
    assert code == 0, err
    assert read_mask_file(tmp_path / "b" / "a.npz")[1].sum() == 100 and not (tmp_path / "b" / "a.png").exists()


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--threshold", "0.3"], 2, "--threshold applies to a probability folder"),
        (["--format", "nifti"], 2, "--format 'nifti': expected one of npz, tiff"),
        (["--images", "{empty}"], 1, "no PNG images found"),
        (["--size", "0"], 2, "--size must be within 1..32768 pixels"),
        (["--size", "1000000"], 2, "--size must be within 1..32768 pixels, got 1000000"),  # not an out-of-memory hint
    ],
)
def test_masks_refuses(labelled, tmp_path, capsys, args, code, message):
    (tmp_path / "empty").mkdir()
    args = [str(a).format(empty=tmp_path / "empty") for a in args]
    got, _, err = cli(capsys, "masks", labelled["csv"], "-o", tmp_path / "o", *args)
    assert got == code and message in error_line(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value, code", [("nan", 2), ("1.5", 2), ('{"Radius": NaN}', 1)])
def test_masks_threshold_refuses_bad_numbers(tmp_path, capsys, value, code):
    folder = tmp_path / "probs"
    probs.save(folder, "a.png", np.zeros((len(CLASSES), 8, 8), np.uint8))
    probs.write_manifest(folder, ["a.png"], ["m"])
    if value.startswith("{"):
        (tmp_path / "t.json").write_text(value)
        value = str(tmp_path / "t.json")
    got, _, err = cli(capsys, "masks", folder, "-o", tmp_path / "o", "-t", value)
    assert got == code and "threshold" in error_line(err) and not (tmp_path / "o").exists()


def test_thresholds_of_calibrated_probabilities_are_not_applied_to_uncalibrated_ones(tmp_path, capsys):
    """A calibration file's thresholds (or tta --thresholds-out recording a calibration) were searched on
    calibrated probabilities: masks and the soft vote refuse them on raw ones, and take them with the calibration."""
    from boneseg.calibration import Calibration

    folder = tmp_path / "probs"
    probs.save(folder, "a.png", np.full((len(CLASSES), 8, 8), 100, np.uint8))
    probs.write_manifest(folder, ["a.png"], ["m"])
    cal = tmp_path / "cal.json"
    Calibration(np.ones(len(CLASSES)), np.zeros(len(CLASSES)), np.full(len(CLASSES), 0.3)).write(cal)
    tta = tmp_path / "tta.json"
    tta.write_text(json.dumps({"thresholds": dict.fromkeys(CLASSES, 0.3), "calibration": {"final": {"source": "c"}}}))
    for thresholds in (cal, tta):
        code, _, err = cli(capsys, "masks", folder, "-o", tmp_path / "o", "-t", thresholds)
        assert code == 1 and "calibrated probabilities" in error_line(err) and not (tmp_path / "o").exists()
        code, _, err = cli(
            capsys, "ensemble", folder, folder, "--vote", "soft", "-t", thresholds, "-o", tmp_path / "e.csv"
        )
        assert code == 1 and "calibrated probabilities" in error_line(err) and not (tmp_path / "e.csv").exists()
    cals = ["--calibration", cal, "--calibration", cal]
    code, _, err = cli(capsys, "ensemble", folder, folder, "--vote", "soft", *cals, "-t", cal, "-o", tmp_path / "e.csv")
    assert code == 0, err
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(dict.fromkeys(CLASSES, 0.3)))
    code, _, err = cli(capsys, "masks", folder, "-o", tmp_path / "o", "-t", plain, "--no-overlays")
    assert code == 0, err
    assert read_mask_file(tmp_path / "o" / "a.npz").all()  # 100/255 > 0.3


def test_an_output_folder_holding_an_input_is_refused_even_with_force(labelled, tmp_path, capsys):
    """--force replaces the output folder: when it is (or holds) what the command reads, that would be deleted."""
    folder = tmp_path / "probs"
    probs.save(folder, "a.png", np.zeros((len(CLASSES), 8, 8), np.uint8))
    probs.write_manifest(folder, ["a.png"], ["m"])
    code, _, err = cli(capsys, "masks", folder, "-o", folder, "--force")
    assert code == 2 and "holds the input" in error_line(err) and (folder / "probs.json").is_file()
    code, _, err = cli(capsys, "masks", labelled["csv"], "-o", labelled["folder"], "--images", labelled["images"],
                       "--force")  # fmt: skip
    assert code == 2 and "holds the input" in error_line(err) and labelled["csv"].is_file()
    inside = tmp_path / "o" / "report" / "p.csv"  # analyze --report replaces DIR/report
    inside.parent.mkdir(parents=True)
    inside.write_bytes(labelled["csv"].read_bytes())
    code, _, err = cli(capsys, "analyze", inside, "--images", labelled["images"], "-o", tmp_path / "o", "--report",
                       "--force")  # fmt: skip
    assert code == 2 and "holds the input" in error_line(err) and inside.is_file()
