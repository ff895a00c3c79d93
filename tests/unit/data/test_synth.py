"""`boneseg synth`: layout, label schema, determinism, anatomy statistics, the data layer, `--label-errors`."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from util import rows

from boneseg import CLASSES
from boneseg.cli import main
from boneseg.data.layout import discover
from boneseg.data.masks import load_label
from boneseg.data.synth import render_hand, split_ids, synthesize
from boneseg.errors import OutputExistsError, UsageError

# Mean class areas (pixels at 2048²) of real segmentations, from the project's anatomy reference.
REF_AREA = {
    "finger-1": 8274,
    "finger-2": 16932,
    "finger-3": 27624,
    "finger-4": 5325,
    "finger-5": 10290,
    "finger-6": 22352,
    "finger-7": 36736,
    "finger-8": 6161,
    "finger-9": 13026,
    "finger-10": 25003,
    "finger-11": 33223,
    "finger-12": 6029,
    "finger-13": 11556,
    "finger-14": 21065,
    "finger-15": 24958,
    "finger-16": 4237,
    "finger-17": 6723,
    "finger-18": 14789,
    "finger-19": 25168,
    "Trapezium": 10238,
    "Trapezoid": 6315,
    "Capitate": 16472,
    "Hamate": 11615,
    "Scaphoid": 11875,
    "Lunate": 8664,
    "Triquetrum": 7622,
    "Pisiform": 4863,
    "Radius": 82318,
    "Ulna": 44751,
}
# The largest overlaps of real labels (all present in every real image).
REF_OVERLAPS = [("Triquetrum", "Pisiform"), ("Trapezium", "Trapezoid"), ("Lunate", "Radius")]
SIZE = 256


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fill(poly: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [poly.reshape(-1, 1, 2)], 1)
    return mask.astype(bool)


@pytest.fixture(scope="module")
def hands():
    """A dozen rendered hands at 512² (image, polygons, meta)."""
    return [render_hand(np.random.default_rng([7, i]), 512) for i in range(12)]


def test_layout_and_schema(synth_data):
    root = synth_data
    train = sorted((root / "train" / "DCM").glob("ID*/*.png"))
    test = sorted((root / "test" / "DCM").glob("ID*/*.png"))
    labels = sorted((root / "train" / "outputs_json").glob("ID*/*.json"))
    assert len(train) == 8 and len(test) == 2 and len(labels) == 8
    assert not (root / "test" / "outputs_json").exists()
    assert [p.with_suffix("").relative_to(root / "train" / "DCM") for p in train] == [
        p.with_suffix("").relative_to(root / "train" / "outputs_json") for p in labels
    ]
    for path in train + test:
        assert path.parent.name[:2] == "ID" and len(path.parent.name) == 5
        stem = path.stem.removesuffix("_R").removesuffix("_L")
        assert stem.startswith("image") and stem[5:].isdigit() and len(stem[5:]) == 13
        assert path.stem.endswith(("_R", "_L")) == (path.parent.name == "ID001")
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)
    train_ids = {int(p.parent.name[2:]) for p in train}
    test_ids = {int(p.parent.name[2:]) for p in test}
    assert min(train_ids) < min(test_ids) < max(train_ids)  # interleaved like the real set
    for path in labels:
        doc = json.loads(path.read_text())
        assert doc["filename"] == path.with_suffix(".png").name
        assert [a["label"] for a in doc["annotations"]] == list(CLASSES)
        for ann in doc["annotations"]:
            assert ann["type"] == "poly_seg" and ann["attributes"] == {} and isinstance(ann["id"], str)
            pts = np.asarray(ann["points"])
            assert pts.dtype.kind == "i" and pts.ndim == 2 and pts.shape[1] == 2 and len(pts) >= 3
            assert pts.min() >= 0 and pts.max() <= SIZE - 1


def test_meta_sheet(synth_data):
    import pandas as pd

    meta = pd.read_excel(synth_data / "meta_data.xlsx")
    assert list(meta.columns) == ["ID", "나이", "성별", "체중(몸무게)", "키(신장)"]
    assert meta["ID"].tolist() == [1, 2, 3, 4, 5]
    assert set(meta["성별"].str[:1]) <= {"남", "여"}
    assert meta["나이"].between(15, 90).all() and meta["키(신장)"].between(130, 210).all()
    with zipfile.ZipFile(synth_data / "meta_data.xlsx") as z:
        assert {i.date_time for i in z.infolist()} == {(2022, 8, 22, 10, 0, 0)}


def test_deterministic(tmp_path, synth_data):
    synthesize(tmp_path / "a", patients=4, test_patients=1, size=SIZE, seed=0)
    assert _files(tmp_path / "a") == {k: v for k, v in _files(synth_data).items() if ".boneseg-cache" not in k}
    synthesize(tmp_path / "b", patients=1, test_patients=0, size=SIZE, seed=1)
    a = sorted((tmp_path / "a" / "train" / "DCM" / "ID001").glob("*.png"))[0].read_bytes()
    b = sorted((tmp_path / "b" / "train" / "DCM" / "ID001").glob("*.png"))[0].read_bytes()
    assert a != b


def test_split_ids_interleave():
    assert split_ids(8, 2) == ([1, 2, 3, 5, 6, 7, 9, 10], [4, 8])
    for p in range(1, 6):
        for t in range(0, 6):
            train, test = split_ids(p, t)
            assert sorted(train + test) == list(range(1, p + t + 1)) and 1 in train and len(test) == t


def test_options_and_force(tmp_path):
    with pytest.raises(UsageError):
        synthesize(tmp_path / "x", size=64)
    with pytest.raises(UsageError):
        synthesize(tmp_path / "x", patients=0)
    with pytest.raises(UsageError, match="128..8192"):
        synthesize(tmp_path / "x", size=10**6)  # refused before anything is allocated
    assert not (tmp_path / "x").exists()
    out = tmp_path / "d"
    synthesize(out, patients=2, test_patients=0, size=128)
    with pytest.raises(OutputExistsError):
        synthesize(out, patients=1, test_patients=0, size=128)
    synthesize(out, patients=1, test_patients=0, size=128, force=True)
    assert len(list((out / "train" / "DCM").rglob("*.png"))) == 2  # stale patients are gone


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path / "c"), "--patients", "1", "--test-patients", "1", "--size", "128"])
    assert exc.value.code == 0
    assert len(list((tmp_path / "c").rglob("*.png"))) == 4
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path / "c"), "--size", "128"])
    assert exc.value.code != 0 and "--force" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path / "e"), "--size", "50"])
    assert exc.value.code == 2 and "Error: --size" in capsys.readouterr().err


def test_polygons_inside_and_overlaps(hands):
    sides = set()
    for _image, polygons, meta in hands:
        assert list(polygons) == list(CLASSES)
        for poly in polygons.values():
            assert poly.dtype == np.int32 and len(poly) >= 3 and poly.min() >= 0 and poly.max() <= 511
        for a, b in REF_OVERLAPS:
            assert (_fill(polygons[a], 512) & _fill(polygons[b], 512)).any(), (a, b)
        thumb = np.mean([polygons[c][:, 0].mean() for c in ("finger-1", "finger-2", "finger-3")])
        little = np.mean([polygons[c][:, 0].mean() for c in ("finger-16", "finger-17", "finger-18", "finger-19")])
        sides.add("R" if thumb < little else "L")
        assert sides and meta["side"] == ("R" if thumb < little else "L")
    assert sides == {"R", "L"}


def test_anatomy_statistics(hands):
    scale = (2048 / 512) ** 2
    areas = np.array([[_fill(p[c], 512).sum() * scale for c in CLASSES] for _, p, _ in hands]).mean(0)
    ref = np.array([REF_AREA[c] for c in CLASSES])
    ratio = areas / ref
    assert ((ratio > 0.5) & (ratio < 2.0)).sum() >= 27, dict(zip(CLASSES, ratio.round(2)))
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    spearman = np.corrcoef(rank(areas), rank(ref))[0, 1]
    assert spearman >= 0.8


def test_radiograph_contrast(hands):
    """Background < soft tissue < bone, overlaps densest: the labels are visible in the image."""
    for image, polygons, _ in hands[:4]:
        bone = np.zeros(image.shape, np.uint8)
        for poly in polygons.values():
            bone += _fill(poly, 512)
        blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 2)
        background = np.median(blurred[:, :20])
        near = cv2.dilate(bone, np.ones((25, 25), np.uint8)) > 0
        tissue = np.median(blurred[near & (cv2.dilate(bone, np.ones((5, 5), np.uint8)) == 0)])
        single, double = np.median(blurred[bone == 1]), np.median(blurred[bone >= 2])
        assert background + 20 < tissue < single - 10 < double


def test_loads_through_data_layer(synth_data, tmp_path):
    from boneseg.data.layout import discover, hand_side, read_meta
    from boneseg.data.masks import MaskCache, load_label, rasterize

    train, test = discover(synth_data, "train"), discover(synth_data, "test")
    assert len(train) == 8 and len(test) == 2 and all(s.label is not None for s in train)
    meta = read_meta(synth_data)
    assert list(meta.index) == [f"ID{i:03d}" for i in range(1, 6)] and set(meta["sex"]) <= {"M", "F"}
    sides = []
    for sample in train:
        label = load_label(sample.label, (SIZE, SIZE))
        assert not label.problems
        masks = rasterize(label.polygons, (SIZE, SIZE))
        assert masks.shape == (29, SIZE, SIZE) and masks.any(axis=(1, 2)).all()
        assert (masks.sum(0) > 1).any()
        sides.append(hand_side(sample, label.polygons))
    assert set(sides) == {"R", "L"}
    cache = MaskCache(tmp_path / "cache")
    first = cache.get(train[0], 128)
    again = cache.get(train[0], 128)
    assert first.image.shape == (128, 128) and first.masks.shape == (29, 128, 128)
    assert np.array_equal(first.masks, again.masks) and first.side == sides[0]


def test_synth_label_errors_keep_the_images_and_list_the_truth(phantoms):
    truth = rows(phantoms / "noisy" / "label_errors.csv")
    assert {r["kind"] for r in truth} == {"shift", "scale", "swap", "delete", "blob"}
    for sub in ("train/DCM",):
        for a, b in zip(
            sorted((phantoms / "clean" / sub).rglob("*.png")), sorted((phantoms / "noisy" / sub).rglob("*.png"))
        ):
            assert a.read_bytes() == b.read_bytes()
    deleted = next(r for r in truth if r["kind"] == "delete")
    label = next(s.label for s in discover(phantoms / "noisy") if s.image_name == deleted["image_name"])
    assert deleted["class"] not in load_label(label).polygons
