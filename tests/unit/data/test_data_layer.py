import json
import os
import time

import numpy as np
import pandas as pd
import pytest
from util import square_polygons, write_dataset, write_label

from boneseg import CLASSES
from boneseg.data import layout, masks
from boneseg.errors import DataError


@pytest.fixture()
def data(tmp_path):
    return write_dataset(tmp_path / "data")


def test_discover_layout(data):
    train = layout.discover(data)
    assert [s.name for s in train] == sorted(s.name for s in train)
    assert len(train) == 4 and all(s.label.exists() for s in train)
    assert {s.patient for s in train} == {"ID001", "ID002"}
    test = layout.discover(data, "test")
    assert len(test) == 2 and all(s.label is None for s in test)
    assert [s.name for s in layout.find_images(data)] == [s.name for s in test]
    assert len(layout.find_images(data / "train" / "DCM")) == 4
    assert len(layout.find_images(test[0].image)) == 1


def test_discover_mismatch(data):
    os.remove(data / "train" / "outputs_json" / "ID001" / "image1661000000010.json")
    with pytest.raises(DataError, match="without a label.*ID001/image1661000000010.png"):
        layout.discover(data)
    assert len(layout.discover(data, skip_bad=True)) == 3
    write_label(data / "train" / "outputs_json" / "ID009" / "orphan.json", square_polygons(64))
    with pytest.raises(DataError, match="without an image"):
        layout.discover(data)


def test_discover_follows_folder_links_and_any_suffix_case(data, tmp_path):
    moved = tmp_path / "elsewhere" / "ID002"
    (data / "train" / "DCM" / "ID002").rename(moved.parent.mkdir() or moved)
    (data / "train" / "DCM" / "ID002").symlink_to(moved, target_is_directory=True)
    (data / "train" / "DCM" / "ID001" / "loop").symlink_to(data / "train" / "DCM", target_is_directory=True)
    label = data / "train" / "outputs_json" / "ID001" / "image1661000000010.json"
    label.rename(label.with_suffix(".JSON"))
    image = data / "train" / "DCM" / "ID001" / "image1661000000011.png"
    image.rename(image.with_suffix(".PNG"))
    train = layout.discover(data)
    assert [s.name for s in train] == [
        "ID001/image1661000000010.png",
        "ID001/image1661000000011.PNG",
        "ID002/image1661000000020.png",
        "ID002/image1661000000021.png",
    ]
    assert train[0].label == label.with_suffix(".JSON") and all(s.label.is_file() for s in train)


@pytest.mark.parametrize(
    "name,patient",
    [
        ("ID001/image1.png", "ID001"),
        ("ID001/left/image1.png", "ID001"),
        ("site2/ID007/image1.png", "ID007"),
        ("patientA/right/image1.png", "patientA"),
        ("image1.png", "image1"),
    ],
)
def test_patient_of_nested_layouts(name, patient):
    assert layout.Sample(name, layout.Path(name)).patient == patient


def test_missing_folders(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        layout.discover(tmp_path / "nope")
    with pytest.raises(DataError, match="train/DCM"):
        layout.discover(tmp_path)


def test_hand_side(data):
    samples = layout.discover(data)
    sides = [masks.load_label(s.label).side for s in samples]
    assert sides == ["R", "L", "R", "L"]
    s = layout.Sample("ID001/image1_L.png", data / "x.png")
    assert s.suffix_side == "L" and layout.hand_side(s) == "L"
    assert layout.hand_side(layout.Sample("ID001/image1.png", data / "x.png")) == "unknown"


def test_read_image_errors(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="unreadable or corrupt"):
        layout.read_image(bad)
    with pytest.raises(DataError, match="not found"):
        layout.read_image(tmp_path / "missing.png")


def test_metadata_as_csv_is_found_like_the_xlsx(tmp_path):
    from boneseg.data.meta import find_meta_file, meta_table

    (tmp_path / "meta_data.csv").write_text("ID,나이,성별,체중(몸무게),키(신장)\n1,30,남,70,175\n", encoding="utf-8")
    assert layout.read_meta(tmp_path).loc["ID001", "age"] == 30
    assert find_meta_file(tmp_path / "test" / "DCM") == tmp_path / "meta_data.csv"
    assert meta_table(tmp_path)["ID001"][4:].all()  # every field present


def test_read_meta_korean_and_junk(tmp_path):
    df = pd.DataFrame(
        {
            "ID": [1, 2, 3],
            "나이": [30, "41_x0008_", None],
            "성별": ["남", "여_x0008_", "남"],
            "체중(몸무게)": [70.5, 55, 80],
            "키(신장)": [175, 160.2, 181],
            "Unnamed: 5": [None] * 3,
        }
    )
    df.to_excel(tmp_path / "meta_data.xlsx", index=False)
    meta = layout.read_meta(tmp_path)
    assert list(meta.index) == ["ID001", "ID002", "ID003"]
    assert meta.loc["ID002", "age"] == 41 and meta.loc["ID002", "sex"] == "F" and np.isnan(meta.loc["ID003", "age"])
    assert meta.loc["ID001", "height"] == 175
    assert layout.read_meta(tmp_path / "none") is None
    pd.DataFrame({"who": [1]}).to_excel(tmp_path / "odd.xlsx", index=False)
    with pytest.raises(DataError, match="no ID column"):
        layout.read_meta(tmp_path, tmp_path / "odd.xlsx")


def test_rasterize_keeps_overlaps():
    polys = {
        "Trapezium": np.array([[2, 2], [10, 2], [10, 10], [2, 10]]),
        "Trapezoid": np.array([[6, 6], [14, 6], [14, 14], [6, 14]]),
    }
    m = masks.rasterize(polys, (16, 16))
    assert m.shape == (29, 16, 16) and m.dtype == bool
    a, b = m[CLASSES.index("Trapezium")], m[CLASSES.index("Trapezoid")]
    assert a.sum() == 81 and b.sum() == 81 and (a & b).sum() == 25
    half = masks.rasterize(polys, (8, 8), (0.5, 0.5))
    assert abs(int(half[CLASSES.index("Trapezium")].sum()) - 81 / 4) <= 6


@pytest.mark.parametrize(
    "doc,fragment",
    [
        ("{not json", "malformed JSON"),
        (json.dumps({"x": 1}), "no 'annotations'"),
        (
            json.dumps({"annotations": [{"label": "finger-99", "points": [[0, 0], [1, 0], [1, 1]]}]}),
            "unknown class 'finger-99'",
        ),
        (json.dumps({"annotations": [{"label": "Ulna", "points": [[0, 0], [1, 1]]}]}), "at least 3"),
        (json.dumps({"annotations": [{"label": "Ulna", "points": [[0, 0], [1, 0], [1, 1]]}] * 2}), "duplicate polygon"),
        (json.dumps({"annotations": [{"label": "Ulna", "points": [[0, 0], [99, 0], [1, 1]]}]}), "outside the 16x16"),
        (json.dumps({"annotations": [{"label": "Ulna", "points": "abc"}]}), "points"),
        (json.dumps({"annotations": [{"label": "Ulna", "points": [[0, 0], [1e12, 0], [1, 1]]}]}), "beyond"),
    ],
)
def test_label_errors(tmp_path, doc, fragment):
    p = tmp_path / "l.json"
    p.write_text(doc)
    with pytest.raises(DataError, match=fragment) as err:
        masks.load_label(p, (16, 16))
    assert str(p) in str(err.value)


def test_label_coordinates_beyond_any_image_are_refused_without_a_shape(tmp_path):
    p = tmp_path / "l.json"
    write_label(p, {"Ulna": [[0, 0], [3e9, 0], [1, 1]]})  # would wrap around in int32
    with pytest.raises(DataError, match="beyond"):
        masks.load_label(p)
    p.write_text(json.dumps({"annotations": [], "metadata": {"height": 1e400, "width": 16}}))  # inf: no size
    assert masks.load_label(p, (16, 16)).polygons == {}


def test_label_with_a_byte_order_mark_is_read(tmp_path):
    p = tmp_path / "l.json"
    write_label(p, {"Ulna": [[0, 0], [5, 0], [5, 5]]})
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    assert list(masks.load_label(p).polygons) == ["Ulna"]


def test_label_missing_class_is_a_problem_not_error(tmp_path):
    p = tmp_path / "l.json"
    write_label(p, {"Ulna": [[0, 0], [5, 0], [5, 5]]})
    label = masks.load_label(p)
    assert list(label.polygons) == ["Ulna"] and len(label.problems) == 28


def test_cache_hit_and_invalidation(data, tmp_path):
    sample = layout.discover(data)[0]
    cache = masks.MaskCache(tmp_path / "cache")
    first = cache.get(sample)
    ref = masks.build_sample(sample)
    assert np.array_equal(first.masks, ref.masks) and np.array_equal(first.image, ref.image)
    assert first.side == "R" and first.original_shape == (64, 64)
    entries = list((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 1
    mtime = entries[0].stat().st_mtime_ns
    again = cache.get(sample)
    assert np.array_equal(again.masks, first.masks) and entries[0].stat().st_mtime_ns == mtime  # a hit
    small = cache.get(sample, size=32)
    assert small.image.shape == (32, 32) and small.masks.shape == (29, 32, 32)
    # change the label: the entry is rebuilt
    time.sleep(0.01)
    polys = square_polygons(64)
    polys["Ulna"] = [[0, 0], [63, 0], [63, 63], [0, 63]]
    write_label(sample.label, polys)
    changed = cache.get(sample)
    assert changed.masks[CLASSES.index("Ulna")].all()


def test_cache_sees_a_label_replaced_with_the_same_size_and_time(data, tmp_path):
    sample = layout.discover(data)[0]
    cache = masks.MaskCache(tmp_path / "cache")
    assert not cache.get(sample).masks[CLASSES.index("Ulna")].all()
    st = sample.label.stat()
    polys = square_polygons(64)
    polys["Ulna"] = [[0, 0], [63, 0], [63, 63], [0, 63]]
    text = json.dumps({"annotations": [{"label": n, "points": p} for n, p in polys.items()]})
    sample.label.write_text(text.ljust(st.st_size) if len(text) <= st.st_size else text)
    os.utime(sample.label, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p`/`rsync -a`/an archive restore
    assert sample.label.stat().st_size == st.st_size
    assert cache.get(sample).masks[CLASSES.index("Ulna")].all()


def test_pack_unpack_round_trip():
    rng = np.random.default_rng(3)
    m = np.zeros((29, 40, 50), bool)
    m[:5] = rng.random((5, 40, 50)) > 0.5
    m[7, 10:13, 20:31] = True
    boxes, bits = masks.pack_masks(m)
    assert np.array_equal(masks.unpack_masks(boxes, bits, (40, 50)), m)
