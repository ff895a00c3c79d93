"""Fixtures shared by the tests of inference."""

from __future__ import annotations

import shutil

import pytest
from util import make_checkpoint

from boneseg.data.layout import find_images


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def one_image(synth_data, tmp_path_factory):
    """A folder holding a single 256² test image."""
    folder = tmp_path_factory.mktemp("one")
    src = find_images(synth_data)[0].image
    shutil.copy(src, folder / src.name)
    return folder
