"""ONNX export: onnxruntime against torch on this CPU, and how close the exported model's output is.

Workload: the demo's model (`boneseg.workflows.demo.SETTINGS`: UNet/ResNet-18, decoder 128-64-32-16-16,
trained at 160² with hand-side unification) trained briefly (--max-steps) on a small synthetic set at 256²,
exported with `boneseg export --format onnx`. Measured:

- the largest difference between onnxruntime's and torch's probabilities (the predictor's output at
  full resolution on the test images, and the raw graph at 160²);
- whether `predict -m model.onnx` writes the torch CSV byte for byte, else the per-class Dice between them;
- forward time of one image (batch 1) at 160² and 512², torch vs onnxruntime (best of alternating rounds).

    python benchmarks/bench_onnx.py            # ~2 minutes on 2 cores
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import race

STEPS, PATIENTS, TEST_PATIENTS = 40, 6, 3


def main() -> None:
    from boneseg.cli import main as cli
    from boneseg.data.layout import find_images
    from boneseg.data.synth import synthesize
    from boneseg.engine.train import train
    from boneseg.inference import Policy, Predictor, load_models
    from boneseg.inference.pipeline import ImageDataset
    from boneseg.metrics import dice
    from boneseg.runs.config import TrainConfig
    from boneseg.submission import read_submission
    from boneseg.workflows.demo import SETTINGS
    from boneseg.workflows.export import Probabilities

    tmp = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    data = tmp / "data"
    synthesize(data, patients=PATIENTS, test_patients=TEST_PATIENTS, size=SETTINGS["size"], seed=0)
    keys = ("arch", "encoder", "model_kwargs", "batch_size", "lr", "loss", "aug")
    cfg = {k: SETTINGS[k] for k in keys} | {
        "data": str(data),
        "out": str(tmp / "run"),
        "size": SETTINGS["train_size"],
        "unify_side": SETTINGS["unify_hands"],
        "encoder_weights": "none",
        "epochs": 60,
        "max_steps": STEPS,
        "device": "cpu",
        "workers": 0,
    }
    train(TrainConfig.from_any(cfg))
    run = tmp / "run" / "last.pt"

    def call(*args):
        try:
            cli([str(a) for a in args])
        except SystemExit as exc:
            if exc.code:
                raise

    call("export", run, "--format", "onnx", "-o", tmp / "model.onnx")

    cpu = torch.device("cpu")
    torch_p, onnx_p = (Predictor(load_models([m], cpu), cpu) for m in (run, tmp / "model.onnx"))
    policy = Policy.parse("none")
    ds = ImageDataset(find_images(data), torch_p.plan([policy]))
    full = max(
        float((onnx_p.predict(ds[i], policy) - torch_p.predict(ds[i], policy)).abs().max()) for i in range(len(ds))
    )
    graph = Probabilities([torch_p.models[0].model], [1.0]).eval()
    x = torch.randn(2, 1, 160, 160)
    with torch.no_grad():
        raw = float((onnx_p.models[0].model(x, (160, 160)) - graph(x, torch.tensor([160, 160]))).abs().max())

    csvs = {}
    for name, model in (("torch", run), ("onnx", tmp / "model.onnx")):
        csv = tmp / f"{name}.csv"
        call("predict", data, "-m", model, "-o", csv, "--workers", "0", "--device", "cpu", "--postprocess", "none")
        csvs[name] = csv
    a, b = (read_submission(csvs[k]) for k in ("torch", "onnx"))
    identical = csvs["torch"].read_bytes() == csvs["onnx"].read_bytes()
    shape = (SETTINGS["size"], SETTINGS["size"])
    per_class = np.mean(
        [dice(a.masks(s.image_name, shape), b.masks(s.image_name, shape)) for s in find_images(data)], 0
    )

    ort = onnx_p.models[0].model
    times = {}
    for side in (160, 512):
        x, hw = torch.randn(1, 1, side, side), (side, side)
        with torch.no_grad():
            t = race(
                {"torch": lambda x=x, hw=hw: graph(x, torch.tensor(hw)), "onnxruntime": lambda x=x, hw=hw: ort(x, hw)},
                repeat=5,
            )
        times[f"{side}"] = {k: round(v * 1000, 1) for k, v in t.items()}
    print(
        json.dumps(
            {
                "steps": STEPS,
                "threads": torch.get_num_threads(),
                "max_abs_diff_probabilities": full,
                "max_abs_diff_graph_160": raw,
                "csv_byte_identical": identical,
                "csv_dice_per_class_min": float(per_class.min()),
                "csv_dice_mean": float(per_class.mean()),
                "forward_ms_batch1": times,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
