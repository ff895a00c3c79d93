"""Loading a 2048² training sample (image + 29 masks): the mask cache vs the notebook way."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
from common import best_of, print_table

from boneseg.classes import CLASSES
from boneseg.data.layout import discover
from boneseg.data.masks import MaskCache
from boneseg.data.synth import synthesize


def notebook_load(image_path, label_path):
    """What the competition notebooks did per item: read the PNG, parse JSON, fill 29 polygons."""
    image = cv2.imread(str(image_path))
    label_shape = tuple(image.shape[:2]) + (len(CLASSES),)
    label = np.zeros(label_shape, dtype=np.uint8)
    with open(label_path) as f:
        annotations = json.load(f)["annotations"]
    for ann in annotations:
        class_label = np.zeros(image.shape[:2], dtype=np.uint8)
        points = np.array(ann["points"])
        cv2.fillPoly(class_label, [points], 1)
        label[..., CLASSES.index(ann["label"])] = class_label
    return image, label


def main() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        synthesize(root, patients=2, test_patients=0, size=2048, seed=0)
        samples = discover(root)
        cache = MaskCache(Path(tmp) / "cache")
        for s in samples:  # build once
            cache.get(s)
        t_nb = best_of(lambda: [notebook_load(s.image, s.label) for s in samples]) / len(samples)
        t_cache = best_of(lambda: [cache.get(s) for s in samples]) / len(samples)
        size_kb = np.mean([p.stat().st_size for p in (Path(tmp) / "cache").glob("*.npz")]) / 1024
    rows = [
        {
            "load 2048² image + 29 masks": "notebook (imread + json + 29 fillPoly)",
            "ms_per_sample": 1e3 * t_nb,
            "speedup": 1.0,
        },
        {
            "load 2048² image + 29 masks": f"boneseg MaskCache ({size_kb:.0f} KB/entry)",
            "ms_per_sample": 1e3 * t_cache,
            "speedup": t_nb / t_cache,
        },
    ]
    print_table("Mask loading, synthetic 2048² samples", rows)
    return rows


if __name__ == "__main__":
    main()
