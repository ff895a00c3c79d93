"""The dataset layout: discovery, patients, hand side, images, PNG sizes and the metadata table."""

import os

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from util import square_polygons, write_label

from boneseg.data import layout, masks
from boneseg.data.layout import png_shape
from boneseg.errors import DataError


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


def test_side_from_probs():
    from boneseg.data.layout import side_from_masks as side_from_probs

    p = torch.zeros(29, 10, 10)
    p[0, :, 1] = 1
    p[16, :, 8] = 1
    assert side_from_probs(p) == "R" and side_from_probs(p.flip(-1)) == "L"
    assert side_from_probs(torch.zeros(29, 4, 4)) is None


def test_png_shape(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.zeros((30, 50), np.uint8))
    assert png_shape(path) == (30, 50)
    (tmp_path / "b.png").write_bytes(b"not a png")
    assert png_shape(tmp_path / "b.png") is None
