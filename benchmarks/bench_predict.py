"""Prediction: boneseg's streaming predictor vs the notebook way, time and peak memory.

Workload: N synthetic 1024² radiographs (phantom hands), a UNet/ResNet-18 (random weights, head bias -2
so masks are blobs, not noise) at --size 256, resize mode, threshold 0.5, CPU. Each run is a fresh
process so its peak resident memory (ru_maxrss) is its own.

The notebook way: predict every image, keep its full-size float32 probabilities in a list, then
threshold, run-length encode with the notebooks' flatten/diff encoder in a Python loop, and write a
DataFrame. boneseg: `boneseg.inference.predict` (uint8 quantisation, RLE boundaries on the device,
rows streamed to the CSV by a writer thread). Also measured: the ``--save-probs`` file size per image
at 2048² for realistic probabilities (real masks from ../shared, Gaussian-blurred edges).

    python benchmarks/bench_predict.py            # ~1-2 minutes on 2 cores
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import notebook_encode

HERE = Path(__file__).resolve().parent
SIZES = (4, 12, 24)
IMAGE, MODEL = 1024, 256


def _setup(folder: Path, n: int) -> Path:
    """n PNGs and a checkpoint in `folder`."""
    import cv2
    import torch

    from boneseg.data.synth import render_hand
    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import save_checkpoint

    rng = np.random.default_rng(0)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, _, _ = render_hand(rng, IMAGE)
        cv2.imwrite(str(images / f"image{1661000000000 + i}.png"), image)
    config = {"arch": "unet", "encoder": "resnet18", "size": MODEL, "in_channels": 1, "channels": "gray"}
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        model.segmentation_head[0].bias.fill_(-2.0)
    save_checkpoint(
        folder / "model.pt", {"config": config, "model": model.state_dict(), "epoch": 0, "step": 0, "metrics": {}}
    )
    return images


def _notebook(images: Path, ckpt: Path, out: Path) -> None:
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from boneseg.classes import CLASSES
    from boneseg.data.layout import find_images, read_image
    from boneseg.data.transforms import to_input
    from boneseg.inference.predictor import resize_image
    from boneseg.runs.run import Run

    run = Run.open(ckpt)
    model, config = run.model(), run.config
    outputs, names = [], []
    with torch.no_grad():
        for s in find_images(images):
            image = read_image(s.image)
            x = to_input(resize_image(image, (MODEL, MODEL)), config)[None]
            y = F.interpolate(model(x), size=image.shape, mode="bilinear")
            outputs.append(torch.sigmoid(y)[0].numpy())  # full-size float masks kept for every image
            names.append(s.image_name)
    rows = []
    for name, probs in zip(names, outputs):
        for c, p in enumerate(probs):
            rows.append((name, CLASSES[c], notebook_encode(p > 0.5)))
    pd.DataFrame(rows, columns=["image_name", "class", "rle"]).to_csv(out, index=False)


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not inherit the parent's peak
    across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(method: str, n: int, folder: str) -> None:
    import torch

    torch.set_num_threads(2)
    folder = Path(folder)
    out = folder / f"{method}.csv"
    t = time.perf_counter()
    if method == "notebook":
        _notebook(folder / "images", folder / "model.pt", out)
    else:
        from boneseg.inference import PredictOptions, predict

        predict(
            folder / "images", [folder / "model.pt"], out, force=True, options=PredictOptions(device="cpu", workers=1)
        )
    seconds = time.perf_counter() - t
    peak = _peak_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak}))


def _run(method: str, n: int, folder: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", method, str(n), str(folder)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save_probs_size() -> dict:
    """Size and time of one 2048² image's --save-probs file for realistic (blurred real) probabilities."""
    import cv2
    from common import load_masks

    from boneseg import probs

    masks, source = load_masks(1)
    p = np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), 3) for m in masks[0]])
    q = probs.quantize(p)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        path = probs.save(d, "x.png", q)
        seconds = time.perf_counter() - t
        mb = path.stat().st_size / 2**20
        t = time.perf_counter()
        probs.load(d, "x.png")
        load_s = time.perf_counter() - t
    return {
        "method": f"--save-probs file, 2048² ({source.split(' (')[0]})",
        "images": 1,
        "seconds": seconds,
        "img/s": 1 / seconds,
        "peak MB": float("nan"),
        "note": f"{mb:.2f} MB per image (raw 116 MB), load {load_s:.2f} s",
    }


def main() -> list[dict]:
    from common import print_table

    rows = []
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        _setup(folder, max(SIZES))
        all_images = sorted((folder / "images").iterdir())
        for n in SIZES:
            for extra in all_images[n:]:
                extra.rename(folder / extra.name)  # keep the first n images in the folder
            res = {m: _run(m, n, folder) for m in ("notebook", "boneseg")}
            same = (folder / "notebook.csv").read_text().replace("\r", "") == (folder / "boneseg.csv").read_text()
            for m, r in res.items():
                rows.append(
                    {
                        "method": m,
                        "images": n,
                        "seconds": r["seconds"],
                        "img/s": n / r["seconds"],
                        "peak MB": r["peak_mb"],
                        "note": ""
                        if m == "notebook"
                        else f"{res['notebook']['seconds'] / r['seconds']:.2f}x faster, "
                        f"{res['notebook']['peak_mb'] / r['peak_mb']:.2f}x less memory"
                        + ("" if same else " (CSV differs: float vs quantised probabilities)"),
                    }
                )
            for extra in folder.glob("*.png"):
                extra.rename(folder / "images" / extra.name)
    rows.append(save_probs_size())
    print_table(f"Prediction, {IMAGE}² images, UNet/ResNet-18 at {MODEL} on CPU", rows)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.path.insert(0, str(HERE))
        main()
