"""GPU training speed: UNet++ / EfficientNet-B4, AMP + channels_last vs plain fp32, peak memory, largest batch.

Measures the real training step of the engine (normalise on device, forward, the default bce+dice loss,
backward, AdamW step) on random 8-bit inputs and masks already on the GPU, so the numbers are the model's,
not the disk's. Random weights (no download). Exits cleanly without a CUDA device.

    python benchmarks/bench_gpu_train.py [--size 1024] [--batch-size 4] [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402

ARCH, ENCODER = "unetplusplus", "efficientnet-b4"


def _setup(size: int, batch: int, amp: bool, channels_last: bool):
    import torch

    from boneseg.modelling.losses import build_loss
    from boneseg.modelling.models import build_model

    model = build_model({"arch": ARCH, "encoder": ENCODER, "encoder_weights": "none"}).cuda()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = build_loss("bce+dice")
    images = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8, device="cuda")
    masks = torch.rand(batch, 29, size, size, device="cuda") > 0.9
    return model, opt, loss_fn, images, masks.to(torch.uint8)


def _step(model, opt, loss_fn, images, masks, amp: bool, channels_last: bool):
    import torch

    from boneseg.data.transforms import normalize
    from boneseg.engine.train import TrainConfig

    x = normalize(images, TrainConfig())
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    loss = loss_fn(logits, masks)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(size: int, batch: int, amp: bool, channels_last: bool, steps: int) -> dict:
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    state = _setup(size, batch, amp, channels_last)
    for _ in range(3):
        _step(*state, amp, channels_last)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        _step(*state, amp, channels_last)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30
    del state
    return {"steps_per_s": steps / dt, "images_per_s": steps * batch / dt, "peak_gib": peak}


def fits(size: int, batch: int) -> bool:
    import torch

    try:
        measure(size, batch, True, True, steps=1)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        torch.cuda.empty_cache()


def largest_batch(size: int, limit: int = 256) -> int:
    """Largest batch (AMP + channels_last) that trains a step at `size`: doubling, then bisection."""
    lo, hi = 0, 1
    while hi <= limit and fits(size, hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(size, mid) else (lo, mid)
    return lo


def main(size: int = 1024, batch_size: int = 4, steps: int = 20, search: bool = True) -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: skipping the GPU training benchmark")
        return []
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name()
    rows = []
    base = None
    for label, amp, cl in (("fp32", False, False), ("AMP bf16 + channels_last", True, True)):
        r = measure(size, batch_size, amp, cl, steps)
        base = base or r["steps_per_s"]
        rows.append(
            {
                "case": f"{ARCH}/{ENCODER} {size}px b{batch_size} {label}",
                "device": name,
                "steps_per_s": r["steps_per_s"],
                "images_per_s": r["images_per_s"],
                "peak_gib": r["peak_gib"],
                "speedup": r["steps_per_s"] / base,
                "largest_batch": None,
            }
        )
    if search:
        for s in (1024, 2048):
            rows.append(
                {
                    "case": f"largest batch at {s}px (AMP + channels_last)",
                    "device": name,
                    "steps_per_s": None,
                    "images_per_s": None,
                    "peak_gib": None,
                    "speedup": None,
                    "largest_batch": largest_batch(s),
                }
            )
    print_table("GPU training step", rows)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-search", action="store_true", help="skip the largest-batch search")
    a = ap.parse_args()
    main(a.size, a.batch_size, a.steps, not a.no_search)
