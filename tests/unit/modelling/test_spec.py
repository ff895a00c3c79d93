"""`ModelSpec`: one typed view of a run's config, the same from its typed form and its saved form."""

from __future__ import annotations

import torch

from boneseg.classes import CLASSES
from boneseg.modelling.models import build_model
from boneseg.modelling.spec import ModelSpec
from boneseg.runs.config import TrainConfig


def test_the_typed_and_the_saved_config_give_one_spec():
    cfg = TrainConfig(
        arch="unet",
        encoder="resnet18",
        size=64,
        channels="gray+sobel",
        encoder_weights="none",
        model_kwargs={"decoder_channels": [16, 8, 8, 8, 8]},
        boundary_head=0.5,
        boundary_sharpen=0.2,
    )
    typed, saved = ModelSpec.of(cfg), ModelSpec.of(cfg.to_dict())
    assert typed == saved and ModelSpec.of(typed) is typed
    assert (typed.in_channels, typed.classes, typed.boundary_head) == (2, len(CLASSES), 0.5)
    torch.manual_seed(0)
    a = build_model(cfg)
    torch.manual_seed(0)
    b = build_model(cfg.to_dict())
    assert type(a) is type(b) and a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_a_saved_config_of_an_older_version_keeps_its_shape():
    """A checkpoint's dict with a class count and no channels (older versions) builds as saved."""
    old = {"arch": "unet", "encoder": "resnet18", "in_channels": 3, "classes": 29, "unify_hands": "R"}
    spec = ModelSpec.of(old)
    assert (spec.in_channels, spec.classes, spec.meta, spec.norm) == (3, 29, None, None)
    assert build_model(old).encoder.conv1.in_channels == 3
