"""The shared plotting helpers: overlays and PNG files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from util import is_png

from boneseg.classes import PALETTE
from boneseg.errors import OutputExistsError
from boneseg.plots import GT_COLOUR, PRED_COLOUR, overlay, overlay_compare, save_png


def test_overlay_colours_each_class():
    image = np.full((8, 8), 100, np.uint8)
    masks = np.zeros((29, 8, 8), bool)
    masks[0, :2] = masks[28, 6:] = True
    masks[0, 4, 4] = masks[1, 4, 4] = True  # overlap: colours averaged
    out = overlay(image, masks, alpha=1.0)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == PALETTE[0] and tuple(out[7, 7]) == PALETTE[28]
    assert tuple(out[3, 3]) == (100, 100, 100)
    assert np.allclose(out[4, 4], (np.array(PALETTE[0]) + PALETTE[1]) / 2, atol=1)
    half = overlay(image, masks, alpha=0.5)
    assert np.allclose(half[0, 0], (np.array(PALETTE[0]) + 100) / 2, atol=1)


def test_overlay_compare_two_colours():
    image = np.zeros((4, 4), np.uint8)
    pred, gt = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    pred[0, 0] = gt[1, 1] = pred[2, 2] = gt[2, 2] = True
    out = overlay_compare(image, pred, gt, alpha=1.0)
    assert tuple(out[0, 0]) == PRED_COLOUR and tuple(out[1, 1]) == GT_COLOUR
    assert tuple(out[2, 2]) not in (PRED_COLOUR, GT_COLOUR, (0, 0, 0)) and tuple(out[3, 3]) == (0, 0, 0)
    stacked = overlay_compare(image, pred[None].repeat(3, 0), gt[None].repeat(3, 0), alpha=1.0)
    assert np.array_equal(stacked, out)


def test_save_png_array_and_figure(tmp_path):
    from boneseg.plots import heatmap

    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0] = 255
    path = save_png(rgb, tmp_path / "a.png")
    back = cv2.imread(str(path))
    assert back.shape == (5, 6, 3) and tuple(back[0, 0]) == (0, 0, 255)  # stored as RGB (read back as BGR)
    fig = heatmap(np.eye(3), ["a", "b", "c"], "t")
    assert is_png(save_png(fig, tmp_path / "f.png")) and not fig.axes  # released after saving
    with pytest.raises(OutputExistsError):
        save_png(rgb, tmp_path / "a.png")
    save_png(rgb, tmp_path / "a.png", force=True)
