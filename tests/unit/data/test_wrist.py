"""The wrist crop: square boxes from polygons and masks, and the crop cache."""

from __future__ import annotations

import numpy as np
import torch

from boneseg.classes import CARPALS, NUM_CLASSES
from boneseg.data.wrist import CARPAL_IDX, WristCache, box_from_masks, box_from_polygons, square_box


def test_boxes_are_square_inside_and_agree():
    assert square_box(10, 20, 30, 50, (100, 100), margin=0.5) == (0, 40, 20, 60)
    y0, y1, x0, x1 = square_box(90, 99, 90, 99, (100, 100), margin=0.2)
    assert y1 == 100 and x1 == 100 and y1 - y0 == x1 - x0
    masks = np.zeros((NUM_CLASSES, 64, 64), bool)
    assert box_from_masks(masks) is None
    masks[CARPAL_IDX[0], 30:40, 20:28] = True
    masks[0, 0:5, 0:5] = True  # a finger: ignored
    box = box_from_masks(masks, margin=0.1)
    assert box == box_from_masks(torch.from_numpy(masks).float(), margin=0.1)
    poly = {CARPALS[0]: np.array([[20, 30], [27, 30], [27, 39], [20, 39]], np.int32)}
    assert box_from_polygons(poly, (64, 64), margin=0.1) == box


def test_wrist_cache_serves_carpal_crops(synth_data, tmp_path):
    from boneseg.data.layout import discover
    from boneseg.data.masks import MaskCache

    sample = discover(synth_data)[0]
    crop = WristCache(tmp_path, margin=0.15).get(sample, 64)
    full = MaskCache(tmp_path).get(sample, 64)
    assert crop.image.shape == (64, 64) and crop.masks.shape == (NUM_CLASSES, 64, 64)
    carp = crop.masks[CARPAL_IDX]
    assert carp.any(axis=(1, 2)).all()  # every carpal bone is in the crop...
    assert not carp[:, [0, -1], :].any() and not carp[:, :, [0, -1]].any()  # ...with a margin around it
    # carpals fill much more of the crop than of the whole image
    assert carp.mean() > 3 * full.masks[CARPAL_IDX].mean()
    assert (tmp_path / "wrist-m0.15").is_dir()
