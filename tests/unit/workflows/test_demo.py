"""The demo's pictures."""

from __future__ import annotations

import cv2
import numpy as np

from boneseg import CLASSES
from boneseg.classes import PALETTE
from boneseg.submission import SubmissionWriter


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
