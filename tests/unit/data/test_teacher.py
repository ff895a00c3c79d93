"""A teacher's saved probabilities as soft training targets: augmented with the masks, cached."""

from __future__ import annotations

import numpy as np
import torch
from util import _write_probs

from boneseg import probs
from boneseg.data.dataset import Item, SegDataset
from boneseg.data.layout import discover
from boneseg.data.masks import MaskCache
from boneseg.data.teacher import make_teacher
from boneseg.data.transforms import build_augmentation
from boneseg.metrics import dice


def test_soft_targets_follow_the_masks_through_augmentation(synth_data, teacher, tmp_path):
    """The teacher's probabilities (saved at the images' 256²) are mirrored and warped exactly with the
    masks: thresholded, they are the masks (at 96² too, resized by the resize rule of the images)."""
    samples = discover(synth_data)
    t = make_teacher(teacher["oof"][:1], None)
    items = [Item(s, MaskCache(tmp_path / "cache"), t) for s in samples]
    for size, side, least in ((256, None, 0.98), (256, "R", 0.98), (96, None, 0.8)):
        ds = SegDataset(items, size, build_augmentation("strong", None, flip=side is None), side, soft=True)
        for i in range(len(items)):
            out = ds[(i, 1234 + i)]
            assert out["teacher"].dtype == torch.uint8 and out["teacher"].shape == (29, size, size)
            assert bool(out["labelled"])
            score = dice(out["teacher"] > 127, out["mask"].bool()).mean()
            assert score > least, (size, side, i, score)


def test_targets_are_cached_until_a_probability_file_changes(synth_data, tmp_path):
    sample = discover(synth_data)[0]
    folder = _write_probs(tmp_path / "p", [sample], 3)
    teacher, cache = make_teacher([folder], None), MaskCache(tmp_path / "cache")
    first = cache.soft_target(sample, 64, teacher)
    assert np.array_equal(first, teacher.target(sample.image_name, 64)) and first.shape == (29, 64, 64)
    assert len(list((tmp_path / "cache").glob("*.teacher-*.npz"))) == 1
    assert np.array_equal(cache.soft_target(sample, 64, teacher), first)
    probs.save(folder, sample.image_name, np.full((29, 256, 256), 7, np.uint8))  # the teacher changed
    assert (cache.soft_target(sample, 64, teacher) == 7).all()
