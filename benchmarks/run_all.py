"""Run every CPU benchmark in one go and write docs/benchmarks.md (GPU results are kept as they are).

python benchmarks/run_all.py            # a few minutes on a 2-core machine
"""

from __future__ import annotations

import datetime
import importlib
import io
import platform
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
GPU_MARK = "<!-- gpu-results -->"

CPU_BENCHMARKS = [
    ("bench_rle", "RLE encode/decode"),
    ("bench_masks", "Loading a training sample: mask cache vs notebook"),
    ("bench_loader", "Training data loader at --size 1024 from 2048² images"),
    ("bench_synth", "Synthetic dataset generation"),
    ("bench_predict", "Prediction: time and peak memory vs the notebook way"),
    ("bench_ensemble", "Hard voting of 5 submissions (288 images)"),
    ("bench_analyze", "Analysis: Dice and model similarity on RLE"),
    ("bench_startup", "Start-up of the command line"),
    ("bench_postprocess", "Post-processing a CSV: keep the largest component of every mask"),
]


def _markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    sys.path.insert(0, str(HERE))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )
    sections = []
    for name, title in CPU_BENCHMARKS:
        if not (HERE / f"{name}.py").exists():
            continue
        print(f"== {name}", flush=True)
        buf = io.StringIO()
        with redirect_stdout(buf):
            rows = importlib.import_module(name).main()
        print(buf.getvalue())
        module = importlib.import_module(name)
        body = _markdown(rows) if rows else "(no rows)"
        note = f"\n{module.NOTE}\n" if getattr(module, "NOTE", None) else ""
        sections.append(f"### {title}\n\n`python benchmarks/{name}.py`\n\n{body}\n{note}")
    previous = DOC.read_text() if DOC.exists() else ""
    gpu = (
        previous.split(GPU_MARK, 1)[1]
        if GPU_MARK in previous
        else "\n## GPU\n\nNot measured yet: run `python benchmarks/gpu_suite.py --out docs/benchmarks.md` on a GPU.\n"
    )
    today = datetime.date.today().isoformat()
    text = (
        f"# Benchmarks\n\nEach script compares boneseg with the straightforward notebook way, written inside the "
        f"benchmark, in one run; speedups are ratios from that run. Regenerate with "
        f"`python benchmarks/run_all.py`.\n\n## CPU\n\nLast run {today} on {machine}.\n\n"
        + "\n".join(sections)
        + f"\n{GPU_MARK}"
        + gpu
    )
    DOC.write_text(re.sub(r"\n{3,}", "\n\n", text))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
