"""Fixtures shared by the tests of the workflows."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from util import tiny_config, write_dataset

from boneseg import CLASSES
from boneseg.data.layout import discover
from boneseg.data.masks import MaskCache, default_cache_dir
from boneseg.submission import SubmissionWriter


@pytest.fixture(scope="module")
def fold_runs(tmp_path_factory):
    """Two tiny runs, one per fold of a 2-fold split of 2 patients (4 images)."""
    from boneseg.engine.train import train

    root = tmp_path_factory.mktemp("oof")
    data = write_dataset(root / "data", patients=2, size=64, test_patients=0)
    runs = []
    for k in range(2):
        train(tiny_config(data, root / f"run{k}", fold=k, folds=2, max_steps=1))
        runs.append(root / f"run{k}")
    return data, runs


@pytest.fixture(scope="module")
def labelled(synth_data, tmp_path_factory):
    """The synthetic set's label masks (256²) written as a CSV, plus two noisy images of other sizes."""
    folder = tmp_path_factory.mktemp("masks")
    samples = discover(synth_data, "train")[:3]
    cache = MaskCache(default_cache_dir(synth_data))
    images = folder / "images"
    images.mkdir()
    truth = {}
    for s in samples:
        item = cache.get(s)
        cv2.imwrite(str(images / s.image_name), item.image)
        truth[s.image_name] = item.masks
    rng = np.random.default_rng(0)
    odd = np.zeros((len(CLASSES), 48, 80), bool)
    odd[0, 5:20, 10:30] = True  # the main component
    odd[0, 40:42, 70:72] = True  # a 4-pixel island
    odd[1, 10:30, 40:60] = True
    odd[1, 18:21, 48:51] = False  # a 9-pixel hole
    truth["odd.png"] = odd
    cv2.imwrite(str(images / "odd.png"), (rng.random((48, 80)) * 255).astype(np.uint8))
    csv = folder / "labels.csv"
    with SubmissionWriter(csv) as w:
        for name in sorted(truth):
            w.write_masks(name, truth[name])
    return {"csv": csv, "images": images, "truth": truth, "folder": folder}
