"""Training data loader at ``--size 1024`` from 2048² images: samples/s per worker, boneseg vs the notebook way.

The notebook way (per item, every epoch): ``cv2.imread`` the PNG in colour, divide by 255 in float64, parse
the JSON, fill 29 polygons at 2048², resize image and 29-channel mask to 1024, transpose, to float tensors.
boneseg: `SegDataset` over the mask cache built once at 1024 (uint8 image + bit-packed masks), uint8 tensors
out, normalisation (`normalize`) done on the batch (on the GPU in real training; here on the CPU and
counted). Both run in one process, which is what one data-loader worker does.

    python benchmarks/bench_loader.py [--images 6] [--size 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402

from boneseg.classes import CLASSES  # noqa: E402


def notebook_item(image_path, label_path, size: int):
    image = cv2.imread(str(image_path)) / 255.0
    label = np.zeros(tuple(image.shape[:2]) + (len(CLASSES),), dtype=np.uint8)
    with open(label_path) as f:
        annotations = json.load(f)["annotations"]
    for ann in annotations:
        class_label = np.zeros(image.shape[:2], dtype=np.uint8)
        cv2.fillPoly(class_label, [np.array(ann["points"])], 1)
        label[..., CLASSES.index(ann["label"])] = class_label
    image = cv2.resize(image, (size, size))
    label = np.stack(
        [cv2.resize(label[..., c], (size, size), interpolation=cv2.INTER_NEAREST) for c in range(len(CLASSES))], -1
    )
    return torch.from_numpy(image.transpose(2, 0, 1)).float(), torch.from_numpy(label.transpose(2, 0, 1)).float()


def _rate(fn, n: int, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - t)
    return n / best


def main(images: int = 6, size: int = 1024) -> list[dict]:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from boneseg.data.dataset import Item, SegDataset, item_seed, prepare_cache
    from boneseg.data.layout import discover
    from boneseg.data.masks import MaskCache
    from boneseg.data.synth import synthesize
    from boneseg.data.transforms import build_augmentation, normalize
    from boneseg.runs.config import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        synthesize(root, patients=max(1, images // 2), test_patients=0, size=2048, seed=0)
        samples = discover(root)[:images]
        cache = MaskCache(Path(tmp) / "cache")
        items = [Item(s, cache) for s in samples]
        t = time.perf_counter()
        prepare_cache(items, size, workers=1)
        build_s = (time.perf_counter() - t) / len(items)
        n = len(items)
        config = TrainConfig()

        def ours(transform):
            ds = SegDataset(items, size, transform)

            def one(i):
                item = ds[(i, item_seed(0, 0, i))]
                normalize(item["image"][None], config)
                item["mask"].float()  # the float conversion the loss needs (on the GPU in real training)

            return one

        nb = _rate(lambda i: notebook_item(samples[i].image, samples[i].label, size), n)
        plain = _rate(ours(None), n)
        aug = _rate(ours(build_augmentation("default")), n)
    rows = [
        {
            "loader (1 worker, 1024 from 2048²)": "notebook: imread + float64 + json + 29 fillPoly + resize",
            "samples_per_s": nb,
            "speedup": 1.0,
        },
        {
            "loader (1 worker, 1024 from 2048²)": "boneseg SegDataset, --aug none",
            "samples_per_s": plain,
            "speedup": plain / nb,
        },
        {
            "loader (1 worker, 1024 from 2048²)": "boneseg SegDataset, --aug default",
            "samples_per_s": aug,
            "speedup": aug / nb,
        },
        {
            "loader (1 worker, 1024 from 2048²)": "one-time cache build (per sample)",
            "samples_per_s": 1 / build_s,
            "speedup": None,
        },
    ]
    print_table(f"Data loader throughput at --size {size} ({n} synthetic 2048² samples)", rows)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--size", type=int, default=1024)
    a = ap.parse_args()
    main(a.images, a.size)
