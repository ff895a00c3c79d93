"""Input normalisation: the image as the model takes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boneseg.data.transforms import normalize, to_input
from boneseg.errors import UsageError
from boneseg.runs.config import TrainConfig


def test_to_input_normalisation():
    image = np.array([[0, 255], [128, 64]], np.uint8)
    x = to_input(image, TrainConfig(mean=[0.5], std=[0.25]))
    assert x.shape == (1, 2, 2) and x.dtype == torch.float32
    assert torch.allclose(x[0], (torch.tensor([[0, 255], [128, 64]]) / 255 - 0.5) / 0.25)
    rgb = to_input(image, TrainConfig(channels="rgb", mean=[0.4, 0.5, 0.6], std=[0.2, 0.2, 0.2]))
    assert rgb.shape == (3, 2, 2) and torch.allclose(rgb[2, 0, 0], torch.tensor(-3.0))
    batch = torch.from_numpy(np.stack([image, image]))
    assert torch.equal(normalize(batch, TrainConfig())[0], to_input(image, TrainConfig()))
    assert batch.dtype == torch.uint8 and batch[0, 0, 1] == 255  # input untouched
    with pytest.raises(UsageError, match="did you mean 'rgb'"):
        to_input(image, TrainConfig(channels="rbg"))
