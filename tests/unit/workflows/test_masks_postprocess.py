"""`boneseg masks` (mask files and overlays a person opens) and `boneseg postprocess` (predict's rules on a CSV)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from util import cli, error_line

from boneseg import CLASSES, probs, rle
from boneseg.classes import PALETTE
from boneseg.data.layout import discover
from boneseg.data.masks import MaskCache, default_cache_dir
from boneseg.postprocess import close_mask, postprocess_per_class
from boneseg.submission import SubmissionWriter, read_submission
from boneseg.workflows.masks import read_mask_file


@pytest.fixture(scope="module")
def labelled(synth_data, tmp_path_factory):
    """The synthetic set's label masks (256²) written as a CSV, plus two noisy images of other sizes."""
    folder = tmp_path_factory.mktemp("masks")
    samples = discover(synth_data, "train")[:3]
    cache = MaskCache(default_cache_dir(synth_data))
    images = folder / "images"
    images.mkdir()
    truth = {}
    for s in samples:
        item = cache.get(s)
        cv2.imwrite(str(images / s.image_name), item.image)
        truth[s.image_name] = item.masks
    rng = np.random.default_rng(0)
    odd = np.zeros((len(CLASSES), 48, 80), bool)
    odd[0, 5:20, 10:30] = True  # the main component
    odd[0, 40:42, 70:72] = True  # a 4-pixel island
    odd[1, 10:30, 40:60] = True
    odd[1, 18:21, 48:51] = False  # a 9-pixel hole
    truth["odd.png"] = odd
    cv2.imwrite(str(images / "odd.png"), (rng.random((48, 80)) * 255).astype(np.uint8))
    csv = folder / "labels.csv"
    with SubmissionWriter(csv) as w:
        for name in sorted(truth):
            w.write_masks(name, truth[name])
    return {"csv": csv, "images": images, "truth": truth, "folder": folder}


# -- masks ----------------------------------------------------------------------------------------


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


# -- postprocess ----------------------------------------------------------------------------------


def _decoded(csv, shapes):
    sub = read_submission(csv)
    return {n: sub.masks(n, shapes[n]) for n in sub.images}


def test_postprocess_equals_predicts_rule(labelled, tmp_path, capsys):
    shapes = {n: m.shape[1:] for n, m in labelled["truth"].items()}
    rules = {"classes": {"finger-1": {"keep_largest": True}, "finger-2": {"min_area": 30}}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "postprocess.json").write_text(json.dumps(rules))
    out = tmp_path / "clean.csv"
    code, stdout, err = cli(
        capsys, "postprocess", labelled["csv"], "-o", out, "--rules", tmp_path / "run", "--min-area", 5,
        "--images", labelled["images"], "--json",
    )  # fmt: skip
    assert code == 0, err
    per_class = [(c == 0, 30 if c == 1 else 5) for c in range(len(CLASSES))]
    got = _decoded(out, shapes)
    for name, truth in labelled["truth"].items():
        assert np.array_equal(got[name], postprocess_per_class(truth, per_class)), name
    assert not got["odd.png"][0, 40:42, 70:72].any() and got["odd.png"][0].sum() == 300
    report = json.loads(stdout)
    assert report["per_class"]["finger-1"]["pixels_removed"] >= 4 and report["pixels_added"] == 0
    assert report["rules"] == str(tmp_path / "run" / "postprocess.json")
    assert "wrote" in err and "mask(s) changed" in err


def test_postprocess_close_fills_holes_and_streams_to_stdout(labelled, tmp_path, capsys):
    code, stdout, err = cli(
        capsys, "postprocess", labelled["csv"], "-o", "-", "--close", 5, "--images", labelled["images"]
    )
    assert code == 0, err
    out = tmp_path / "c.csv"
    out.write_text(stdout)
    shapes = {n: m.shape[1:] for n, m in labelled["truth"].items()}
    got = _decoded(out, shapes)
    odd = labelled["truth"]["odd.png"]
    assert got["odd.png"][1, 18:21, 48:51].all()  # the hole closed
    for name, truth in labelled["truth"].items():
        expected = np.stack([close_mask(m, 5) for m in truth])
        assert np.array_equal(got[name], expected), name
    assert np.array_equal(got["odd.png"][2:], odd[2:])  # empty masks stay empty
    rows = [line.split(",")[0] for line in stdout.splitlines()[1:]]
    assert rows == sorted(rows) and len(rows) == len(CLASSES) * len(shapes)


@pytest.mark.parametrize(
    "args, code, message",
    [
        ([], 2, "nothing to do: give --rules, --min-area, --keep-largest or --close"),
        (["--min-area", "-1"], 2, "--min-area must be 0 or more"),
        (["--close", "-3"], 2, "--close must be 0"),
        (["--keep-largest", "--size", "99999999999"], 2, "--size must be within 1..32768 pixels"),
        (["--close", "100000"], 2, "kernel side in pixels up to 255"),  # would run for hours
        (["--rules", "{tmp}"], 1, "no postprocess.json in this folder"),
        (["--rules", "{tmp}/x.json"], 1, "x.json: file not found"),
        (["--keep-largest", "--size", "16"], 1, "past the image's 256 pixels"),
    ],
)
def test_postprocess_refuses(labelled, tmp_path, capsys, args, code, message):
    args = [a.format(tmp=tmp_path) for a in args]
    got, _, err = cli(capsys, "postprocess", labelled["csv"], "-o", tmp_path / "o.csv", *args)
    assert got == code and message in error_line(err)
    assert not (tmp_path / "o.csv").exists()


def test_postprocess_keeps_an_existing_output(labelled, tmp_path, capsys):
    out = tmp_path / "o.csv"
    out.write_text("keep")
    code, _, err = cli(capsys, "postprocess", labelled["csv"], "-o", out, "--keep-largest", "--size", 256)
    assert code == 1 and "already exists" in error_line(err) and out.read_text() == "keep"


def test_clean_runs_matches_the_mask_rule():
    from boneseg.postprocess import clean_mask, clean_runs

    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((37, 53)) > 0.8
        starts, ends = rle.runs_from_mask(mask)
        for keep, area, close in ((True, 0, 0), (False, 3, 0), (False, 0, 3), (True, 2, 5)):
            s, e = clean_runs(starts, ends, mask.shape, keep, area, close)
            expected = clean_mask(close_mask(mask, close), keep, area)
            assert rle.runs_to_rle(s, e) == rle.encode(expected)


# -- pictures people look at ----------------------------------------------------------------------


def test_demo_overlay_is_large_with_a_legend(tmp_path):
    """The demo's overlay.png: a small test image enlarged to 768 px, with a legend naming the classes."""
    from util import write_dataset

    from boneseg.data.layout import find_images, read_image
    from boneseg.workflows import demo

    data = write_dataset(tmp_path / "data", patients=1, size=64)
    sample = find_images(data)[0]
    masks = np.zeros((len(CLASSES), 64, 64), bool)
    masks[0, 10:20, 10:30] = True
    masks[28, 40:60, 5:15] = True
    with SubmissionWriter(tmp_path / "s.csv") as w:
        for s in find_images(data):
            w.write_masks(s.image_name, masks)
    demo._overlay(data, tmp_path / "s.csv", tmp_path / "overlay.png")
    picture = cv2.cvtColor(cv2.imread(str(tmp_path / "overlay.png")), cv2.COLOR_BGR2RGB)
    assert picture.shape[0] >= demo.OVERLAY_SIDE and picture.shape[1] > demo.OVERLAY_SIDE + 150
    image = read_image(sample.image)
    side = demo.OVERLAY_SIDE
    enlarged = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
    background = ~masks.any(axis=0).repeat(12, axis=0).repeat(12, axis=1)
    assert np.array_equal(picture[:side, :side, 0][background], enlarged[background])  # the image enlarged 12x
    legend = picture[:, demo.OVERLAY_SIDE :]
    for c in (0, 28):  # the drawn classes have filled swatches
        assert np.all(np.abs(legend.astype(int) - PALETTE[c]) <= 1, axis=2).sum() >= 100
    assert np.all(np.abs(legend.astype(int) - PALETTE[5]) <= 1, axis=2).sum() < 100  # an empty class: outline only


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


@pytest.mark.parametrize("value", ["NaN", "-3", "2.5", '""', "[]", "false"])
def test_postprocess_rules_file_refuses_bad_min_area(labelled, tmp_path, capsys, value):
    rules = tmp_path / "postprocess.json"
    rules.write_text(f'{{"classes": {{"Radius": {{"keep_largest": false, "min_area": {value}}}}}}}')
    code, _, err = cli(capsys, "postprocess", labelled["csv"], "-o", tmp_path / "o.csv", "--rules", rules)
    line = error_line(err)
    assert code == 1 and f"{rules}: class 'Radius': min_area" in line and "whole number >= 0" in line


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


@pytest.mark.parametrize("value", ["0", '""', "[]", '"yes"'])
def test_postprocess_rules_file_refuses_bad_keep_largest(labelled, tmp_path, capsys, value):
    """A value that is not true/false is refused, falsy ones included (they used to read as false)."""
    rules = tmp_path / "postprocess.json"
    rules.write_text(f'{{"classes": {{"Radius": {{"keep_largest": {value}, "min_area": 3}}}}}}')
    code, _, err = cli(capsys, "postprocess", labelled["csv"], "-o", tmp_path / "o.csv", "--rules", rules)
    assert code == 1 and f"{rules}: class 'Radius': keep_largest" in error_line(err)


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


def test_postprocess_counts_pixels_not_run_layouts(tmp_path, capsys):
    """A writer that splits a mask's runs row by row (adjacent runs) has not changed when they are merged:
    the mask is reported unchanged and its row is copied as it was."""
    split = " ".join(f"{r * 16 + 3} 2 {r * 16 + 5} 2" for r in range(2, 6))  # a 4x4 square, two runs a row
    rows = [f"a.png,{c},{split if c == 'Radius' else ''}" for c in CLASSES]
    (tmp_path / "in.csv").write_text("image_name,class,rle\n" + "\n".join(rows) + "\n")
    code, stdout, err = cli(capsys, "postprocess", tmp_path / "in.csv", "-o", tmp_path / "o.csv", "--keep-largest",
                            "--size", "16", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["changed_masks"] == 0
    assert f"a.png,Radius,{split}\n" in (tmp_path / "o.csv").read_text()


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
