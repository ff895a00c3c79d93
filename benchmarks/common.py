"""Shared helpers for the benchmark scripts: timing, real or synthetic masks, a table printer."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import numpy as np

REAL_MASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-masks"


def best_of(fn, repeat: int = 3) -> float:
    """The fastest of `repeat` wall-clock timings of fn(), in seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def race(fns: dict, repeat: int = 5) -> dict:
    """The fastest of `repeat` timings of each function (seconds), taken in alternating rounds so that a
    busy moment of the machine slows every contender, not just the one that happened to be running."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def real_mask_files() -> list[str]:
    """The real 29x2048x2048 masks when ../shared is present (sorted), else []."""
    return sorted(glob.glob(str(REAL_MASKS / "*" / "*.npz")))


def load_masks(limit: int | None = None) -> tuple[list[np.ndarray], str]:
    """Real bone masks when available, else synthetic ones rendered by boneseg's phantom."""
    files = real_mask_files()[:limit]
    if files:
        return [
            np.load(f)["mask"].astype(bool) for f in files
        ], f"real masks ({len(files)} images, {REAL_MASKS.parent.name})"
    from boneseg.data.masks import rasterize
    from boneseg.data.synth import render_hand

    rng = np.random.default_rng(0)
    out = []
    for _ in range(limit or 3):
        _, polygons, _ = render_hand(rng, 2048)
        out.append(rasterize({k: np.asarray(v) for k, v in polygons.items()}, (2048, 2048)))
    return out, f"synthetic phantom masks ({len(out)} images)"


# The straightforward notebook RLE functions every benchmark compares against (never used by boneseg).


def notebook_encode(mask):
    """The competition notebooks' encoder."""
    pixels = mask.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def notebook_decode(rle_text, height, width):
    """The competition notebooks' decoder."""
    s = rle_text.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(height * width, dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(height, width)


def print_table(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    width = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print(f"\n{title}")
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(width[c]) for c in cols))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def cpu_info() -> str:
    return f"{os.cpu_count()} CPU cores"
