"""GPU prediction throughput: images/s at 2048² for UNet++ / EfficientNet-B4 in fp16.

Cases: resize 1024 and sliding 1024/0.5, each with and without hflip TTA, through the real
`boneseg.inference.predict` pipeline (loader workers, device quantise/threshold/RLE, CSV writer).
Random weights (no download), synthetic 2048² radiographs. Exits cleanly without a CUDA device.

    python benchmarks/bench_gpu_predict.py [--images 24] [--workers 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [
    ("resize 1024", {"size": 1024}, "none"),
    ("resize 1024 + hflip", {"size": 1024}, "hflip"),
    ("sliding 1024/0.5", {"sliding": True, "window": 1024, "overlap": 0.5}, "none"),
    ("sliding 1024/0.5 + hflip", {"sliding": True, "window": 1024, "overlap": 0.5}, "hflip"),
]


def main(images: int = 24, workers: int = 4, batch_size: int = 4) -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: skipping the GPU prediction benchmark")
        return []
    import cv2
    import numpy as np

    from boneseg.data.synth import render_hand
    from boneseg.engine.checkpoint import save_checkpoint
    from boneseg.inference import predict
    from boneseg.modelling.models import build_model

    torch.backends.cudnn.benchmark = True
    rows = []
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        rng = np.random.default_rng(0)
        base = [render_hand(rng, 2048)[0] for _ in range(4)]
        for i in range(images):
            (folder / "images").mkdir(exist_ok=True)
            cv2.imwrite(str(folder / "images" / f"image{1661000000000 + i}.png"), base[i % len(base)])
        config = {
            "arch": "unetplusplus",
            "encoder": "efficientnet-b4",
            "size": 1024,
            "in_channels": 1,
            "channels": "gray",
        }
        model = build_model(config)
        with torch.no_grad():
            model.segmentation_head[0].bias.fill_(-2.0)
        save_checkpoint(
            folder / "model.pt", {"config": config, "model": model.state_dict(), "epoch": 0, "step": 0, "metrics": {}}
        )
        warm = folder / "warm"
        warm.mkdir()
        cv2.imwrite(str(warm / "w.png"), base[0])
        for name, kwargs, tta in CASES:
            common = dict(
                device="cuda", amp=True, workers=workers, batch_size=batch_size, force=True, tta=tta, **kwargs
            )
            predict(warm, [folder / "model.pt"], folder / "w.csv", **common)  # cudnn autotune, allocator
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            predict(folder / "images", [folder / "model.pt"], folder / "sub.csv", **common)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            rows.append(
                {
                    "case": name,
                    "images": images,
                    "seconds": seconds,
                    "img/s": images / seconds,
                    "peak GPU GB": torch.cuda.max_memory_allocated() / 2**30,
                    "device": torch.cuda.get_device_name(),
                }
            )
            print(rows[-1], flush=True)
    sys.path.insert(0, str(HERE))
    from common import print_table

    print_table("GPU prediction, 2048² images, UNet++ / EfficientNet-B4, fp16", rows)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    a = ap.parse_args()
    main(a.images, a.workers, a.batch_size)
