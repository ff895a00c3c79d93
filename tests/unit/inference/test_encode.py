"""Run-length encoding on the device equals the reference encoder."""

from __future__ import annotations

import numpy as np
import torch

from boneseg import rle
from boneseg.inference import (
    masks_to_rles,
)


def test_device_rle_equals_reference():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 7, 9)) > 0.5
    masks[1] = True
    masks[2] = False
    masks[3, :, -1] = True  # runs wrapping from one row's end into the next row
    masks[3, 1:, 0] = True
    assert masks_to_rles(torch.from_numpy(masks)) == [rle.encode(m) for m in masks]
