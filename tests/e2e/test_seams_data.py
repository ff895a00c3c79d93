"""The seams between data files and the tools: labels for another image size, 16-bit images, stale or
corrupt cache entries, corrupt images linked by `pseudo` (issue 14)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from util import TINY, cli, error_line, square_polygons, write_dataset, write_label

from boneseg import CLASSES
from boneseg.data.layout import discover, png_shape
from boneseg.data.masks import rasterize
from boneseg.submission import SubmissionWriter


@pytest.fixture()
def data(tmp_path):
    return write_dataset(tmp_path / "data", patients=3, size=64)


def _labels(data):
    return sorted((data / "train" / "outputs_json").rglob("*.json"))


def _images(data, split="train"):
    return sorted((data / split / "DCM").rglob("*.png"))


def _eda_problems(capsys, data) -> list[dict]:
    code, out, err = cli(capsys, "eda", data, "--json")
    assert code == 0, err
    return json.loads(out)["problems"]["items"]


def _declare_size(label, width, height):
    doc = json.loads(label.read_text())
    doc["metadata"] = {"width": width, "height": height}
    label.write_text(json.dumps(doc))


# -- 1. images that do not match their labels -------------------------------------------------------


def test_eda_reports_labels_for_another_size(data, capsys):
    sized, edge, small = _labels(data)[:3]
    _declare_size(sized, 128, 128)  # metadata says 128², the PNG is 64²
    polys = square_polygons(64)
    polys["Ulna"] = [[50, 50], [64, 50], [60, 60]]  # x == width is already outside
    write_label(edge, polys)
    image = _images(data)[2]  # a 128² image with labels drawn at 64²
    cv2.imwrite(str(image), np.full((128, 128), 90, np.uint8))
    assert small.stem == image.stem
    problems = _eda_problems(capsys, data)
    kinds = {(p["image"].split("/")[-1].split(".")[0], p["kind"]) for p in problems}
    assert (sized.stem, "size_mismatch") in kinds
    assert (edge.stem, "out_of_image") in kinds
    assert (small.stem, "wrong_scale") in kinds
    detail = next(p["detail"] for p in problems if p["kind"] == "size_mismatch")
    assert "128x128" in detail and "64x64" in detail


def test_labels_drawn_for_a_smaller_image_are_refused_by_train_and_left_out_by_skip_bad(data, tmp_path, capsys):
    """The top-left-quarter rule eda reports lives in the label reader: train refuses such a label with the
    --skip-bad hint, and --skip-bad leaves it out with a warning naming it."""
    image, label = _images(data)[2], _labels(data)[2]
    cv2.imwrite(str(image), np.full((128, 128), 90, np.uint8))  # the labels were drawn at 64²
    args = ["train", data, *TINY, "--cache-dir", tmp_path / "cache", "--max-steps", "1"]
    code, _, err = cli(capsys, *args, "--out", tmp_path / "run")
    line = error_line(err)
    assert code == 1 and label.name in line and "top-left quarter of the 128x128 image" in line, line
    assert "--skip-bad" in line and not (tmp_path / "run" / "last.pt").exists()
    code, _, err = cli(capsys, *args, "--skip-bad", "--out", tmp_path / "run2")
    assert code == 0, err
    assert "left out 1 sample(s)" in err and label.name in err
    pred = tmp_path / "pred.csv"  # audit reads the same labels: it says so
    with SubmissionWriter(pred) as w:
        for s in discover(data):
            w.write_masks(s.image_name, np.zeros((29, *png_shape(s.image)), bool))
    code, _, err = cli(capsys, "audit", data, "--pred", pred, "--out", tmp_path / "audit", "--crops", "0")
    assert code == 0 and "1 label(s) have problems that train refuses" in " ".join(err.split()), err
    assert "top-left quarter" in " ".join(err.split())


def test_train_refuses_labels_for_another_size_and_skip_bad_leaves_them_out(data, tmp_path, capsys):
    label = _labels(data)[1]
    _declare_size(label, 128, 128)
    args = ["train", data, *TINY, "--cache-dir", tmp_path / "cache", "--max-steps", "1"]
    code, _, err = cli(capsys, *args, "--out", tmp_path / "run")
    line = error_line(err)
    assert code == 1 and label.name in line and "128x128" in line, line
    assert not (tmp_path / "run" / "last.pt").exists()
    code, _, err = cli(capsys, *args, "--skip-bad", "--out", tmp_path / "run2")
    assert code == 0, err
    assert "left out 1 sample(s)" in err and label.name in err


def test_16_bit_images_keep_their_full_range(data, capsys):
    image = _images(data)[0]
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))  # 12-bit X-ray stored in 16 bits
    cv2.imwrite(str(image), ramp)
    cv2.imwrite(str(_images(data)[1]), cv2.cvtColor(np.full((64, 64), 200, np.uint8), cv2.COLOR_GRAY2BGR))
    code, out, err = cli(capsys, "eda", data, "--json")
    assert code == 0, err
    records = {r["name"]: r for r in json.loads(out)["images"]}
    wide = records[image.relative_to(data / "train" / "DCM").as_posix()]
    assert 120 < wide["mean"] < 135 and wide["std"] > 60  # 0..255, not 0..15
    rgb = records[_images(data)[1].relative_to(data / "train" / "DCM").as_posix()]
    assert rgb["mean"] == pytest.approx(200)


# -- 2. a stale cache entry hides nothing; a corrupt one is rebuilt ---------------------------------


def test_label_broken_after_caching_is_found_before_training(data, tmp_path, capsys):
    args = ["train", data, *TINY, "--cache-dir", tmp_path / "cache", "--max-steps", "1"]
    code, _, err = cli(capsys, *args, "--out", tmp_path / "run1")
    assert code == 0, err
    broken = _labels(data)[2]
    polys = square_polygons(64)
    polys["Ulna"] = [[1, 1], [90, 1], [9, 9]]
    write_label(broken, polys)
    code, _, err = cli(capsys, *args, "--skip-bad", "--out", tmp_path / "run2")
    assert code == 0, err
    assert "left out 1 sample(s)" in err and broken.name in err and "outside the 64x64" in err


def test_corrupt_cache_entries_are_rebuilt(data, tmp_path, capsys):
    args = ["train", data, *TINY, "--cache-dir", tmp_path / "cache", "--max-steps", "1"]
    assert cli(capsys, *args, "--out", tmp_path / "run1")[0] == 0
    entries = sorted((tmp_path / "cache").rglob("*.npz"))
    assert entries
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncated
    entries[1].write_bytes(b"")  # empty
    code, _, err = cli(capsys, *args, "--out", tmp_path / "run2")
    assert code == 0, err
    assert "Error" not in err and (tmp_path / "run2" / "last.pt").is_file()


# -- 3. pseudo links only images that decode -----------------------------------------------------------


def test_pseudo_refuses_a_corrupt_test_image(data, tmp_path, capsys):
    tests = _images(data, "test")
    masks = rasterize({k: np.array(v) for k, v in square_polygons(64).items()}, (64, 64))
    sub = tmp_path / "sub.csv"
    from boneseg.rle import encode

    rows = ["image_name,class,rle"] + [f"{t.name},{c},{encode(m)}" for t in tests for c, m in zip(CLASSES, masks)]
    sub.write_text("\n".join(rows) + "\n")
    corrupt = tests[1]
    corrupt.write_bytes(corrupt.read_bytes()[:80])  # header intact, pixel data cut
    code, _, err = cli(capsys, "pseudo", sub, data, "-o", tmp_path / "pseudo", "--workers", "1")
    line = error_line(err)
    assert code == 1 and corrupt.name in line and "corrupt" in line, line
    assert not (tmp_path / "pseudo").exists()
