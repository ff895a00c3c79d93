"""The predictor: a hand-side-unified model sees left hands mirrored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boneseg.inference import (
    LoadedModel,
    Policy,
    Predictor,
    ViewCache,
)
from boneseg.runs.config import TrainConfig


class _HandModel(torch.nn.Module):
    """A "right-hand" model: the thumb on bright pixels of the left half of its input, the little finger
    on the mirror image of the bright pixels."""

    def forward(self, x):
        logits = torch.full((x.shape[0], 29, *x.shape[-2:]), -8.0)
        bright = x[:, 0] > 0
        logits[:, 15] = torch.where(bright.flip(-1), 8.0, -8.0)
        bright[..., x.shape[-1] // 2 :] = False
        logits[:, 0] = torch.where(bright, 8.0, -8.0)
        return logits


def _blob_image(right: bool) -> np.ndarray:
    img = np.zeros((64, 64), np.uint8)
    img[20:40, 40:56] = 255
    return img if right else img[:, ::-1].copy()


@pytest.mark.parametrize("suffix", [None, "L", "R"])
def test_unified_model_mirrors_left_hands(suffix):
    model = LoadedModel(_HandModel(), TrainConfig(size=64, unify_side="R"))
    pred = Predictor([model], "cpu")
    policy = Policy(hflip=True)  # ignored for unified models
    plan = pred.plan([policy])
    for right in (False, True):
        side = suffix if suffix else None
        item = plan.item(0, "x.png", _blob_image(right), side)
        cache = ViewCache()
        p = pred.predict(item, policy, cache)
        expected = suffix or ("R" if not right else "L")
        assert pred.image_side(item, cache) == expected
        # the model saw the image mirrored exactly when its side differs from the trained side: then
        # a blob on the right reaches the model's left half and comes back as the thumb, in place
        blob = torch.from_numpy(_blob_image(right) > 0)
        seen = (expected == "L") == right
        assert torch.equal(p[0] > 0.5, blob if seen else torch.zeros_like(blob))
