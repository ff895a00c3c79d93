"""The GPU suite: training step, data loader vs GPU, end-to-end predict and the other device paths, measured in
one run (sized to finish well inside 15 minutes on one large GPU), written as the "## GPU" section of a
benchmarks page.

    python benchmarks/gpu_suite.py --out docs/benchmarks.md     # on the GPU machine
    python benchmarks/gpu_suite.py --tiny --out /tmp/bench.md   # every code path on the CPU, tiny, in seconds

(a) the engine's training step (normalise on the device, forward, bce+dice, backward, AdamW) of
UNet++/EfficientNet-B4 at 1024, batch 8, on random inputs already on the device: fp32, bf16 autocast,
bf16 + channels_last, and that + `torch.compile` (boneseg's `--compile`, compile time reported apart);
(b) the real training loader (`boneseg.engine.data.make_loader`, --aug default, 1024 from synthetic 2048²)
with 1 and N workers against the GPU's step rate, and the GPU's busy share during a real `train` run;
(c) `boneseg.inference.predict` on 288 synthetic 2048² PNGs to an RLE CSV: resize 1024 and sliding 1024
windows (Gaussian blend), each with and without hflip TTA; (d) every other path that differs on a GPU, run as a
user runs it (`boneseg …` commands on the device): the exported ONNX and TorchScript graphs against the
checkpoint (max |Δp|, same CSV), predict with a calibration, a SAM2-UNet run with bf16, a distilled student,
and a 2-rank NCCL run when the machine has two GPUs. Random weights throughout (no download).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from boneseg.errors import BonesegWarning

HERE = Path(__file__).resolve().parent
HEADING = "## GPU"
COMMAND = "python benchmarks/gpu_suite.py --out docs/benchmarks.md"


@dataclasses.dataclass
class Settings:
    """What the suite runs; `TINY` runs every path on the CPU in seconds."""

    device: str = "cuda"
    arch: str = "unetplusplus"
    encoder: str = "efficientnet-b4"
    size: int = 1024  # training size, predict's resize side and sliding window
    batch: int = 8
    steps: int = 10  # timed training steps per case (after 3 warm-up steps)
    image_size: int = 2048
    images: int = 288  # predict
    patients: int = 24  # training data: two images each
    workers: int = min(8, os.cpu_count() or 1)
    train_steps: int = 40  # the real training run sampled for GPU utilisation
    compile_backend: str = "inductor"
    trunk: str = "sam2_hiera_small"  # (d) the SAM2-UNet training run
    path_images: int = 16  # (d) images predicted through each exported backend


TINY = Settings(
    device="cpu", arch="unet", encoder="resnet18", size=64, batch=2, steps=1, image_size=128, images=3,
    patients=3, workers=1, train_steps=2, compile_backend="eager", trunk="sam2_hiera_tiny", path_images=2,
)  # fmt: skip


# -- (a) training step ------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_step_case(s: Settings, amp: bool, channels_last: bool, compile: bool) -> dict:
    """Seconds per training step, peak memory, and (with `compile`) the seconds of the first (compiling) step."""
    from boneseg.data.transforms import normalize
    from boneseg.modelling.compile import compile_model
    from boneseg.modelling.losses import build_loss
    from boneseg.modelling.models import build_model
    from boneseg.runs.config import TrainConfig

    device = torch.device(s.device)
    _reset_peak(device)
    model = build_model({"arch": s.arch, "encoder": s.encoder, "encoder_weights": "none"}).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = compile_model(model, backend=s.compile_backend) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = build_loss("bce+dice")
    images = torch.randint(0, 256, (s.batch, 1, s.size, s.size), dtype=torch.uint8, device=device)
    masks = (torch.rand(s.batch, 29, s.size, s.size, device=device) > 0.9).to(torch.uint8)
    cfg = TrainConfig()

    def step() -> None:
        x = normalize(images, cfg)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x)
        loss_fn(logits, masks).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t
    for _ in range(2):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(s.steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - t) / s.steps
    return {"step_s": seconds, "peak_gib": _peak_gib(device), "first_step_s": first}


TRAIN_CASES = [
    ("fp32", False, False, False),
    ("bf16 autocast", True, False, False),
    ("bf16 + channels_last", True, True, False),
    ("bf16 + channels_last + torch.compile", True, True, True),
]


def train_steps(s: Settings) -> list[dict]:
    """One row per `TRAIN_CASES` entry; a case that runs out of memory or falls back from compiling says so."""
    rows = []
    for name, amp, cl, comp in TRAIN_CASES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BonesegWarning)
            try:
                r = train_step_case(s, amp, cl, comp)
                r["note"] = " ".join(str(w.message) for w in caught if issubclass(w.category, BonesegWarning))
            except torch.cuda.OutOfMemoryError:
                r = {"step_s": None, "peak_gib": None, "first_step_s": None, "note": "out of memory"}
        rows.append({"case": name, **r, "images_per_s": s.batch / r["step_s"] if r["step_s"] else None})
        print(rows[-1], flush=True)
    for r in rows:
        fp32, own = rows[0]["step_s"], r["step_s"]
        r["speedup"] = fp32 / own if fp32 and own else None
    return rows


# -- (b) loader vs GPU, GPU utilisation -------------------------------------------------------------


def _config(s: Settings, data: Path, tmp: Path, workers: int, **extra):
    from boneseg.runs.config import TrainConfig

    return TrainConfig(
        data=str(data), out=str(tmp / "run"), arch=s.arch, encoder=s.encoder, size=s.size, batch_size=s.batch,
        encoder_weights="none", device=s.device, workers=workers, cache_dir=str(tmp / "cache"), **extra,
    )  # fmt: skip


def loader_rate(s: Settings, data: Path, tmp: Path, workers: int) -> float:
    """Samples/s of the training loader (--aug default) after its workers started (one epoch, mask cache built)."""
    from boneseg.engine.data import build_data, make_loader
    from boneseg.engine.distributed import DistInfo
    from boneseg.progress import SILENT

    info = DistInfo(device=torch.device(s.device))
    cfg = _config(s, data, tmp, workers)
    items, _ = build_data(cfg, info, reporter=SILENT)
    loader, sampler = make_loader(items, cfg, info, train=True)
    next(iter(loader))  # workers started
    t, n = time.perf_counter(), 0
    for epoch in range(1, 4):
        sampler.set_epoch(epoch, 0)
        n += sum(len(batch["image"]) for batch in loader)
    return n / (time.perf_counter() - t)


class BusySampler:
    """The GPU's busy percentage sampled every 0.2 s in a thread: `torch.cuda.utilization` (pynvml) if it works,
    else ``nvidia-smi``; `method` says which (or why none)."""

    def __init__(self, device: torch.device):
        self.samples: list[float] = []
        self.read = None
        self.method = "not measured: no GPU"
        if device.type != "cuda":
            return
        try:
            torch.cuda.utilization(device)
            self.read, self.method = lambda: float(torch.cuda.utilization(device)), "torch.cuda.utilization (pynvml)"
        except Exception:  # noqa: BLE001 - no pynvml / NVML: fall back to nvidia-smi
            if shutil.which("nvidia-smi"):
                index = str(device.index or 0)
                query = ["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
                self.read = lambda: float(subprocess.run(query, capture_output=True, text=True).stdout.split()[0])
                self.method = "nvidia-smi, sampled"
            else:
                self.method = "not measured: neither pynvml nor nvidia-smi"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(self.read())

    def __enter__(self) -> BusySampler:
        if self.read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.read is not None:
            self._stop.set()
            self._thread.join()

    def busy(self) -> float | None:
        """Mean busy % from the first busy sample to the last (start-up and teardown left out)."""
        on = [i for i, v in enumerate(self.samples) if v > 0]
        return float(np.mean(self.samples[on[0] : on[-1] + 1])) if on else None


def loader_vs_gpu(s: Settings, data: Path, tmp: Path) -> dict:
    from boneseg.engine.train import train

    rates = {w: loader_rate(s, data, tmp, w) for w in sorted({1, s.workers})}
    print({"loader samples/s": rates}, flush=True)
    cfg = _config(s, data, tmp, s.workers, epochs=1000, max_steps=s.train_steps, val_every=1000, force=True)
    with BusySampler(torch.device(s.device)) as sampler:
        t = time.perf_counter()
        summary = train(cfg)
        seconds = time.perf_counter() - t
    out = {"loader": rates, "busy": sampler.busy(), "method": sampler.method, "steps": summary["steps"]}
    out["train_s"] = seconds
    print(out, flush=True)
    return out


# -- (c) predict ------------------------------------------------------------------------------------


def predict_cases(s: Settings) -> list:
    """(name, `PredictOptions` fields, predict's policy keywords) of each measured case."""
    sliding = {"window": s.size, "overlap": 0.5}
    return [
        (f"resize {s.size}", {"size": s.size}, {"tta": "none"}),
        (f"resize {s.size} + hflip", {"size": s.size}, {"tta": "hflip"}),
        (f"sliding {s.size} windows, 0.5 overlap", sliding, {"tta": "none", "sliding": True}),
        (f"sliding {s.size} windows, 0.5 overlap + hflip", sliding, {"tta": "hflip", "sliding": True}),
    ]


def predict_throughput(s: Settings, tmp: Path) -> list[dict]:
    import cv2

    from boneseg.data.synth import render_hand
    from boneseg.inference import PredictOptions, predict
    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import save_checkpoint

    device = torch.device(s.device)
    images, warm = tmp / "images", tmp / "warm"
    images.mkdir()
    warm.mkdir()
    rng = np.random.default_rng(0)
    base = [render_hand(rng, s.image_size)[0] for _ in range(4)]
    with ThreadPoolExecutor(8) as pool:  # cv2 releases the GIL while encoding
        list(
            pool.map(lambda i: cv2.imwrite(str(images / f"image{1661000000000 + i}.png"), base[i % 4]), range(s.images))
        )
    cv2.imwrite(str(warm / "w.png"), base[0])
    config = {"arch": s.arch, "encoder": s.encoder, "size": s.size, "in_channels": 1, "channels": "gray"}
    model = build_model(config)
    with torch.no_grad():
        model.segmentation_head[0].bias.fill_(-2.0)  # sparse masks, as a trained model's
    ckpt = tmp / "model.pt"
    save_checkpoint(ckpt, {"config": config, "model": model.state_dict(), "epoch": 0, "step": 0, "metrics": {}})
    rows = []
    for name, fields, policy in predict_cases(s):
        on = PredictOptions(device=s.device, workers=s.workers, batch_size=4, **fields)
        options = dict(options=on, force=True, **policy)
        predict(warm, [ckpt], tmp / "w.csv", **options)  # cudnn autotune, allocator
        _sync(device)
        _reset_peak(device)
        t = time.perf_counter()
        predict(images, [ckpt], tmp / "sub.csv", **options)
        _sync(device)
        seconds = time.perf_counter() - t
        rows.append(
            {"case": name, "seconds": seconds, "images_per_s": s.images / seconds, "peak_gib": _peak_gib(device)}
        )
        print(rows[-1], flush=True)
    return rows


# -- (d) the other device paths, as commands ------------------------------------------------------------


def _boneseg(*args, launcher: Sequence[str] = ()) -> tuple[bool, float, str]:
    """Run ``boneseg ARGS`` (optionally under `launcher`, e.g. torchrun): (ok, seconds, last stderr line)."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "PYTHONUNBUFFERED": "1"}
    command = [*(launcher or [sys.executable]), "-m", "boneseg", *map(str, args)]
    t = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return done.returncode == 0, time.perf_counter() - t, (lines[-1] if lines else "")[:160]


def device_paths(s: Settings, data: Path, run: Path, tmp: Path) -> list[dict]:
    """(d): one row per path: whether it ran, its seconds, and what it measured (or why it failed)."""
    from boneseg import probs
    from boneseg.calibration import Calibration

    dev, rows = ["--device", s.device], []
    images = tmp / "paths"
    images.mkdir()
    for png in sorted((data / "train" / "DCM").rglob("*.png"))[: s.path_images]:
        shutil.copy(png, images / png.name)

    def row(case: str, result: tuple[bool, float, str], note: str = "") -> bool:
        ok, seconds, last = result
        rows.append({"case": case, "ok": ok, "seconds": seconds, "note": note if ok else last})
        print(rows[-1], flush=True)
        return ok

    predict = ["predict", images, "--size", s.size, "--force", *dev]
    row("predict, checkpoint", _boneseg(*predict, "-m", run, "-o", tmp / "ckpt.csv", "--save-probs", tmp / "p-ckpt"))
    for fmt, out, extra in (("onnx", tmp / "m.onnx", []), ("torchscript", tmp / "m.ts", ["--trust-model"])):
        if not row(f"export {fmt}", _boneseg("export", run, "-f", fmt, "-o", out)):
            continue
        ok = _boneseg(*predict, "-m", out, "-o", tmp / f"{fmt}.csv", "--save-probs", tmp / f"p-{fmt}", *extra)
        note = ""
        if ok[0]:
            diff = max(
                int(np.abs(probs.load(tmp / f"p-{fmt}", p.name).astype(int) - probs.load(tmp / "p-ckpt", p.name)).max())
                for p in sorted(images.iterdir())
            )
            same = (tmp / f"{fmt}.csv").read_bytes() == (tmp / "ckpt.csv").read_bytes()
            note = f"max abs Δp vs checkpoint {diff}/255, CSV {'identical' if same else 'differs'}"
            if fmt == "onnx":
                import onnxruntime

                note += f"; onnxruntime providers {','.join(onnxruntime.get_available_providers())}"
        row(f"predict, {fmt} export", ok, note)
    calibration = tmp / "calibration.json"
    Calibration(np.full(29, 1.5), np.zeros(29)).write(calibration)
    row(
        "predict with --calibration",
        _boneseg(*predict, "-m", run, "-o", tmp / "cal.csv", "--calibration", calibration),
    )
    common = ["--size", s.size, "--batch-size", s.batch, "--epochs", 1, "--max-steps", 2, "--folds", 2]
    common += ["--encoder-weights", "none"]
    sam2 = ["--arch", "sam2unet", "--encoder", s.trunk, *common, *dev]
    amp = ["--amp"] if s.device == "cuda" else []
    row(f"train sam2unet/{s.trunk}", _boneseg("train", data, *sam2, *amp, "--out", tmp / "sam2"))
    if row(
        "teacher probabilities (predict train images)",
        _boneseg("predict", data / "train" / "DCM", "-m", run, "-o", tmp / "t.csv", "--save-probs", tmp / "teacher",
                 "--size", s.size, "--force", *dev),
    ):  # fmt: skip
        student = ["--arch", "unet", "--encoder", "resnet18", *common, *dev, *amp]
        row("distill a student", _boneseg("distill", data, "--teacher", tmp / "teacher", *student, "--out", tmp / "st"))
    gpus = torch.cuda.device_count() if s.device == "cuda" else 0
    if gpus >= 2 or s.device == "cpu":
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        backend = "NCCL" if gpus >= 2 else "gloo (CPU)"
        plain = ["--arch", "unet", "--encoder", "resnet18", *common, *dev]
        row(f"train, 2 ranks, {backend}", _boneseg("train", data, *plain, "--out", tmp / "ddp", launcher=torchrun))
    else:
        rows.append({"case": "train, 2 ranks, NCCL", "ok": None, "seconds": None, "note": "not measured: one GPU"})
    return rows


# -- the section ------------------------------------------------------------------------------------

ABOUT = f"""`{COMMAND}` measures boneseg on one GPU (sized to finish well inside 15 minutes) and rewrites this \
section; \
`--tiny` runs every code path on the CPU at a tiny size (the tests do). It measures: (a) the engine's training \
step of UNet++/EfficientNet-B4 at 1024, batch 8 (fp32, bf16 autocast, bf16 + channels_last, and that + \
`--compile`), time and peak memory; (b) the training loader's samples/s with 1 and N workers against the \
GPU's step rate, and the GPU's busy share during a real `train` run; (c) `predict` end to end on 288 synthetic \
2048² images (PNG decode to RLE CSV): resize to 1024 and sliding 1024 windows with Gaussian blending, with and \
without hflip TTA, images/s and peak memory; (d) every other path that differs on a GPU, as `boneseg` commands: \
the exported ONNX and TorchScript graphs against the checkpoint (max |Δp|, same CSV), predict with a \
calibration, a SAM2-UNet run with bf16, a distilled student, and a 2-rank NCCL run when there are two GPUs. \
Goals: bf16 + channels_last ≥ 2× the fp32 step; predict of 288 × 2048² with hflip at 1024 in under 60 s; \
the GPU busy ≥ 85% of a training epoch."""


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(_f(v) for v in r) + " |" for r in rows])


def _goal(met: bool | None, text: str) -> str:
    return f"- {text}: **{'met' if met else 'not met' if met is not None else 'not measured'}**"


def render(s: Settings, results: dict | None) -> str:
    """The GPU section: what the suite measures and how to run it, then its figures (or "not measured yet")."""
    if results is None:
        return f"{HEADING}\n\n{ABOUT}\n\nNot measured yet: no GPU was at hand. Run `{COMMAND}` on one.\n"
    train, feed, pred, machine = results["train"], results["feed"], results["predict"], results["machine"]
    compiled = train[-1]
    body = [
        f"{HEADING}\n\n{ABOUT}\n\nLast run {datetime.date.today().isoformat()} on {machine} "
        f"({results['seconds']:.0f} s in all).",
        f"### Training step: {s.arch}/{s.encoder} at {s.size}, batch {s.batch}\n\n"
        + _table(
            ["case", "ms/step", "images/s", "peak GiB", "speed vs fp32", "note"],
            [
                [
                    r["case"],
                    r["step_s"] and r["step_s"] * 1000,
                    r["images_per_s"],
                    r["peak_gib"],
                    r["speedup"],
                    r["note"],
                ]
                for r in train
            ],
        )
        + f"\n\nThe compiled case's first step (compiling, {s.compile_backend}) took {_f(compiled['first_step_s'])} s.",
        "### Does the loader keep the GPU fed?\n\n"
        + _table(
            ["measure", "value"],
            [
                [f"loader, {w} worker(s), --aug default, {s.size} from {s.image_size}²", f"{r:.3g} samples/s"]
                for w, r in feed["loader"].items()
            ]
            + [
                ["GPU step rate, bf16 + channels_last", f"{_f(train[2]['images_per_s'])} images/s"],
                [
                    f"GPU busy during `train` ({feed['steps']} steps, {s.workers} loader workers)",
                    f"{_f(feed['busy'])} % ({feed['method']})",
                ],
            ],
        ),  # fmt: skip
        f"### predict: {s.images} synthetic {s.image_size}² images, PNG to RLE CSV\n\n"
        + _table(
            ["case", "seconds", "images/s", "peak GiB"],
            [[r["case"], r["seconds"], r["images_per_s"], r["peak_gib"]] for r in pred],
        ),
        "### Other device paths, as commands\n\n"
        + _table(
            ["path", "ran", "seconds", "measured / why not"],
            [
                [r["case"], {True: "yes", False: "**failed**", None: "–"}[r["ok"]], r["seconds"], r["note"]]
                for r in results.get("paths", [])
            ],
        ),
    ]
    hflip = pred[1]["seconds"] * 288 / s.images
    busy, speedup, gpu_rate = feed["busy"], train[2]["speedup"], train[2]["images_per_s"]
    body.append(
        "Goals:\n\n"
        + "\n".join(
            [
                _goal(speedup and speedup >= 2, f"bf16 + channels_last ≥ 2× fp32 ({_f(speedup)}×)"),
                _goal(
                    hflip < 60,
                    f"predict 288 × {s.image_size}² with hflip at {s.size} < 60 s ({hflip:.1f} s"
                    + (f", scaled from {s.images} images" if s.images != 288 else "")
                    + ")",
                ),
                _goal(None if busy is None else busy >= 85, f"GPU busy ≥ 85% of training ({_f(busy)} %)"),
                _goal(
                    None if gpu_rate is None else max(feed["loader"].values()) >= gpu_rate,
                    "loader at least as fast as the GPU step",
                ),
            ]
        )  # fmt: skip
    )
    return "\n\n".join(body) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the "## GPU" section of `path` (up to the next "## " heading) with `section`, or append it."""
    from boneseg.io import atomic_open

    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = text.find(f"\n{HEADING}\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    with atomic_open(path, "w", force=True) as fh:
        fh.write(text)


def run(s: Settings) -> dict:
    """Every measurement of the suite (a, b, c)."""
    from boneseg.data.synth import synthesize

    device = torch.device(s.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        machine = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    else:
        machine = f"{platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}"
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = {"machine": machine, "train": train_steps(s)}
        synthesize(tmp / "data", patients=s.patients, test_patients=0, size=s.image_size, seed=0)
        results["feed"] = loader_vs_gpu(s, tmp / "data", tmp)
        results["predict"] = predict_throughput(s, tmp)
        results["paths"] = device_paths(s, tmp / "data", tmp / "run", tmp)
    results["seconds"] = time.perf_counter() - t
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the benchmarks page whose GPU section is rewritten")
    ap.add_argument("--tiny", action="store_true", help="every code path on the CPU at a tiny size")
    ap.add_argument("--images", type=int, help="predict images (default 288)")
    a = ap.parse_args(argv)
    s = TINY if a.tiny else Settings()
    if a.images:
        s = dataclasses.replace(s, images=a.images)
    if s.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing measured (--tiny runs the suite on the CPU)", file=sys.stderr)
        return 1
    write_section(a.out, render(s, run(s)))
    print(f"wrote the GPU section of {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
