"""`boneseg eda`: geometry, the report's numbers, plots and label problems."""

from __future__ import annotations

import json

import numpy as np
import pytest
from util import is_png, square_polygons, write_dataset, write_label

from boneseg import CLASSES
from boneseg.cli import main
from boneseg.data.layout import discover
from boneseg.data.masks import MaskCache, default_cache_dir
from boneseg.errors import OutputExistsError
from boneseg.workflows.eda import overlap_matrix, run_eda, self_intersections, write_eda


def test_self_intersections():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]])
    assert self_intersections(square) == 0
    assert self_intersections(np.array([[0, 0], [10, 10], [10, 0], [0, 10]])) == 1  # bow-tie
    assert self_intersections(np.array([[0, 0], [10, 0], [10, 0], [10, 10], [0, 10], [0, 0]])) == 0  # repeats
    star = np.array([[np.cos(t), np.sin(t)] for t in np.pi / 2 + 4 * np.pi / 5 * np.arange(5)]) * 100
    assert self_intersections(star.round()) == 5  # pentagram
    assert self_intersections(star.round(), chunk=7) == 5  # chunked the same
    assert self_intersections(square[:3]) == 0


def test_overlap_matrix_equals_brute_force():
    rng = np.random.default_rng(0)
    masks = np.zeros((29, 40, 40), bool)
    boxes = np.zeros((29, 4), np.int64)
    for c in range(29):
        if c == 5:
            continue  # an absent class
        y0, x0 = rng.integers(0, 30, 2)
        y1, x1 = y0 + rng.integers(1, 10), x0 + rng.integers(1, 10)
        masks[c, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.8
        boxes[c] = (y0, y1, x0, x1)
    areas, inter = overlap_matrix(masks, boxes)
    flat = masks.reshape(29, -1).astype(np.int64)
    expected = flat @ flat.T
    assert areas.tolist() == np.diag(expected).tolist()
    np.fill_diagonal(expected, 0)
    assert inter.tolist() == expected.tolist()


def test_report_numbers_match_the_masks(synth_data):
    report = run_eda(synth_data)
    doc = report.to_json()
    samples = discover(synth_data, "train")
    cache = MaskCache(default_cache_dir(synth_data))
    masks = np.stack([cache.get(s).masks for s in samples]).astype(np.int64)
    counts = doc["counts"]
    assert counts["images"] == 8 and counts["patients"] == 4
    assert counts["test_images"] == 2 and counts["test_patients"] == 1
    assert counts["sides"]["L"] + counts["sides"]["R"] == 8 and counts["sides"]["L"] == 4
    assert doc["image_sizes"] == {"train": {"256x256": 8}, "test": {"256x256": 2}}
    areas = masks.sum((2, 3))
    for c, name in enumerate(CLASSES):
        assert doc["class_areas"][name]["mean"] == pytest.approx(areas[:, c].mean())
        assert doc["class_areas"][name]["max"] == areas[:, c].max()
    flat = masks.reshape(8, 29, -1)
    pair = np.einsum("ncp,ndp->cd", flat, flat)
    top = doc["overlaps"][0]
    i, j = CLASSES.index(top["a"]), CLASSES.index(top["b"])
    assert top["mean_px_all"] == pytest.approx(pair[i, j] / 8)
    assert top["mean_px_all"] == max(pair[a, b] for a in range(29) for b in range(a + 1, 29)) / 8
    assert len(doc["overlaps"]) == int(np.count_nonzero(np.triu(pair, 1)))
    image = cache.get(samples[0]).image
    assert doc["images"][0]["mean"] == pytest.approx(image.mean())
    assert doc["images"][0]["std"] == pytest.approx(image.std())
    assert doc["images"][0]["areas"] == areas[0].tolist()
    assert sum(doc["intensity"]["train"]["histogram"]) == 8 * 256 * 256
    meta = doc["metadata"]
    assert meta["patients"] == 5 and meta["train_patients_with_meta"] == 4 and meta["age"]["count"] == 5
    assert doc["problems"]["items"] == []


def test_cli_writes_plots_and_json(synth_data, tmp_path, capsys):
    out = tmp_path / "eda"
    with pytest.raises(SystemExit) as exc:
        main(["eda", str(synth_data), "--out", str(out), "--json", "--samples", "2"])
    captured = capsys.readouterr()
    assert exc.value.code in (0, None), captured.err
    doc = json.loads(captured.out)  # stdout is the JSON only; tables on stderr
    assert "Class areas" in captured.err and "Overlapping classes" in captured.err
    assert json.loads((out / "eda.json").read_text()) == doc
    for name in ("class_areas.png", "overlap_heatmap.png", "samples.png", "metadata.png", "intensity.png"):
        assert is_png(out / name), name
    with pytest.raises(SystemExit) as exc:
        main(["eda", str(synth_data), "--out", str(out)])
    assert exc.value.code == 1 and "already exists" in capsys.readouterr().err


def test_label_problems_are_reported(tmp_path):
    data = write_dataset(tmp_path / "data", patients=2, size=64, test_patients=0)
    samples = discover(data, "train")
    polys = square_polygons(64)
    polys["finger-4"] = [[0, 0], [20, 20], [20, 0], [0, 20]]  # bow-tie
    polys["finger-7"] = [[30, 30], [31, 30], [31, 31]]  # tiny
    polys["Ulna"] = [[50, 50], [70, 50], [70, 60]]  # outside the 64x64 image
    del polys["Radius"]
    write_label(samples[1].label, polys)
    (data / "test" / "DCM").mkdir(parents=True)  # an empty test folder
    report = run_eda(data)
    doc = report.to_json()
    found = {(p["image"], p["class"], p["kind"]) for p in doc["problems"]["items"]}
    name = samples[1].name
    assert found == {
        (name, "finger-4", "self_intersection"),
        (name, "finger-7", "tiny"),
        (name, "Ulna", "out_of_image"),
        (name, "Radius", "missing_class"),
    }
    assert doc["problems"]["counts"] == {"self_intersection": 1, "tiny": 1, "out_of_image": 1, "missing_class": 1}
    assert doc["class_areas"]["Radius"]["missing"] == 1 and doc["class_areas"]["Ulna"]["count"] == len(samples) - 1
    assert doc["metadata"] is None and doc["counts"]["test_images"] == 0
    written = write_eda(report, tmp_path / "out")
    assert not (tmp_path / "out" / "metadata.png").exists() and all(is_png(p) for p in written[1:])
    with pytest.raises(OutputExistsError):
        write_eda(report, tmp_path / "out")


def test_a_malformed_label_is_listed_with_the_other_problems(tmp_path):
    """One label file that is not JSON (or gives a key twice) is a problem of that image, not the end of eda."""
    data = write_dataset(tmp_path / "data", patients=2, size=64, test_patients=0)
    samples = discover(data, "train")
    samples[0].label.write_text('{"annotations": [')
    samples[2].label.write_text('{"annotations": [], "annotations": []}')
    polys = square_polygons(64)
    del polys["Radius"]
    write_label(samples[1].label, polys)
    doc = run_eda(data).to_json()
    found = {(p["image"], p["kind"]) for p in doc["problems"]["items"]}
    assert found == {
        (samples[0].name, "unreadable"),
        (samples[1].name, "missing_class"),
        (samples[2].name, "unreadable"),
    }
    details = " ".join(p["detail"] for p in doc["problems"]["items"])
    assert "malformed JSON" in details and "key 'annotations' is given twice" in details
