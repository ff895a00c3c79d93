"""Time `boneseg synth`: 8 images at 2048² (render only, and the whole dataset writer with PNG/JSON/xlsx).

python benchmarks/bench_synth.py [--size 2048] [--images 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from boneseg.cli.output import console, table
from boneseg.data.synth import render_hand, synthesize


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--images", type=int, default=8, help="an even number (two hands per patient)")
    args = parser.parse_args([] if argv is None and __name__ != "__main__" else argv)
    n = max(args.images // 2 * 2, 2)

    t0 = time.perf_counter()
    for i in range(n):
        render_hand(np.random.default_rng([0, i]), args.size)
    render_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = synthesize(Path(tmp) / "data", patients=n // 2, test_patients=0, size=args.size, seed=0)
        write_s = time.perf_counter() - t0
        mb = sum(p.stat().st_size for p in (Path(tmp) / "data").rglob("*") if p.is_file()) / 2**20

    rows = [
        ["render_hand (image + polygons)", n, render_s, render_s / n],
        ["synthesize (+ PNG, JSON, xlsx)", summary.train_images, write_s, write_s / summary.train_images],
    ]
    console.print(
        table(
            f"boneseg synth at {args.size}² ({mb:.1f} MiB written)", ["stage", "images", "total s", "s / image"], rows
        )
    )
    return [{"stage": r[0], "images": r[1], "seconds": r[2], "s/image": r[3]} for r in rows]


if __name__ == "__main__":
    main()
