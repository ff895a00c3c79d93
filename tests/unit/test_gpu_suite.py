"""benchmarks/gpu_suite.py: `--tiny` runs every path of the GPU suite on the CPU and rewrites only the "## GPU"
section of the page it is given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_suite_writes_the_gpu_section(tmp_path):
    page = tmp_path / "benchmarks.md"
    original = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    page.write_text(original, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--tiny", "--out", str(page)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = page.read_text(encoding="utf-8")
    before, rest = original.split("\n## GPU\n")
    after = rest[rest.index("\n## ") :]
    assert text.startswith(before + "\n## GPU\n") and text.endswith(after)  # the other sections kept as they were
    gpu = text[len(before) : len(text) - len(after)]
    assert "Not measured yet" not in gpu and "Last run" in gpu
    for case in (
        "| fp32 |",
        "| bf16 autocast |",
        "| bf16 + channels_last |",
        "| bf16 + channels_last + torch.compile |",
    ):
        assert case in gpu
    for case in ("| resize 64 |", "| resize 64 + hflip |", "| sliding 64 windows, 0.5 overlap |", "+ hflip |"):
        assert case in gpu
    assert "samples/s" in gpu and "(not measured: no GPU)" in gpu
    assert gpu.count("**met**") + gpu.count("**not met**") + gpu.count("**not measured**") == 4
    assert "torch.compile failed" not in gpu  # the compiled case compiled (eager backend), no fallback note
    paths = gpu[gpu.index("### Other device paths") :]
    for case in (
        "predict, onnx export",
        "predict, torchscript export",
        "predict with --calibration",
        "train sam2unet/",
        "distill a student",
        "train, 2 ranks, gloo (CPU)",
    ):
        assert f"| {case}" in paths and "**failed**" not in paths, paths
    assert "CSV identical" in paths  # the exported graphs give the checkpoint's CSV


def test_section_is_appended_to_a_page_without_one(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_suite

    page = tmp_path / "b.md"
    page.write_text("# Benchmarks\n\n## CPU\n\nx\n", encoding="utf-8")
    gpu_suite.write_section(page, gpu_suite.render(gpu_suite.TINY, None))
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\n## CPU\n\nx\n\n## GPU\n") and "Not measured yet" in text
