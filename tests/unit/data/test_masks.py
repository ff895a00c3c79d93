"""Labels to masks: reading and rasterising polygons, label errors, the mask cache, packing, distance maps."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from util import square_polygons, write_label

from boneseg import CLASSES
from boneseg.data import layout, masks
from boneseg.errors import DataError


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


def test_distance_maps_are_signed_and_clipped():
    from boneseg.data.masks import DIST_ZERO, decode_distance, distance_maps

    masks = np.zeros((2, 40, 40), bool)
    masks[0, 10:30, 10:30] = True
    d = decode_distance(distance_maps(masks, clip=6), clip=6)
    assert d.dtype == np.float32
    assert (d[0][masks[0]] > 0).all() and (d[0][~masks[0]] < 0).all()
    assert d[0, 20, 20] == 6 and d[0, 0, 0] == -6 and d[0, 10, 20] == 1 and d[0, 9, 20] == -1
    assert (d[1] == -6).all()  # empty class: far outside everywhere
    assert decode_distance(np.zeros(1, np.uint8), 6)[0] == -6  # augmentation padding = far outside
    assert distance_maps(masks, 6).dtype == np.uint8 and int(distance_maps(masks, 6)[0, 10, 20]) == DIST_ZERO + 1


def test_distance_maps_are_cached_and_follow_augmentation(synth_data, tmp_path):
    from boneseg.data.dataset import Item, SegDataset
    from boneseg.data.layout import discover
    from boneseg.data.masks import MaskCache, decode_distance
    from boneseg.data.transforms import build_augmentation

    cache = MaskCache(tmp_path / "cache")
    sample = discover(synth_data)[0]
    first = cache.distance(sample, 64)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any(".dist16." in f for f in files)
    assert np.array_equal(cache.distance(sample, 64), first)
    ds = SegDataset([Item(sample, cache)], 64, build_augmentation("strong"), distance=16)
    for seed in (1, 2, 3):
        item = ds[(0, seed)]
        d = decode_distance(item["dist"].numpy())
        assert np.array_equal(d > 0, item["mask"].numpy().astype(bool))  # warped together, exactly
