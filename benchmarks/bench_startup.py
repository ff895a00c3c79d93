"""Start-up of the shell tool: each command line in a fresh process, vs what every command paid when the
command line imported torch (``python -c "import torch"``).

The check row validates a 288-image submission (29 classes at 2048², about 21 MB) built as the ensemble
benchmark builds its inputs (real masks when ``../shared`` is present, else phantom masks).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_info, print_table

NOTE = """\
Wall time is the fastest of 5 fresh processes, CPU the user+system time of that run, memory its peak
resident size. No command listed imports torch (`tests/unit/test_startup.py` asserts it for `--help` of
every command, completion, `check`, `ensemble --vote hard`, `analyze`, `report` and `models`)."""


# The child: `boneseg ARGS…` (or `import torch`), writing its peak resident memory (VmHWM: this program's
# own, not the forked benchmark's) to a file as it exits.
CHILD = """
import atexit, sys
def peak(path=sys.argv[1]):
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    with open(path, "w") as out:
        out.write(str(kb))
atexit.register(peak)
if sys.argv[2:3] == ["--import-torch"]:
    import torch
else:
    sys.argv = ["boneseg", *sys.argv[2:]]
    from boneseg.cli import main
    main()
"""


def run(args: list[str], env: dict, cwd: Path, repeat: int = 5) -> dict:
    """The fastest of `repeat` runs of ``boneseg ARGS``: wall seconds, its CPU seconds and peak memory (MB)."""
    best = None
    peak = cwd / "peak"
    for _ in range(repeat):
        t = time.perf_counter()
        argv = [sys.executable, "-c", CHILD, str(peak), *args]
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        assert os.waitstatus_to_exitcode(status) == 0, args
        if best is None or wall < best[0]:
            best = (wall, usage.ru_utime + usage.ru_stime, int(peak.read_text()) / 1024)
    assert best is not None
    return {"wall_s": best[0], "cpu_s": best[1], "peak_MB": best[2]}


def main() -> list[dict]:
    from bench_ensemble import build_inputs

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths, source, _ = build_inputs(tmp)
        csv = paths[0]
        size = csv.stat().st_size / 1e6
        print(f"check input: {size:.0f} MB from {source}; {cpu_info()}", file=sys.stderr)
        complete = {**env, "COMP_WORDS": "boneseg train --enc", "COMP_CWORD": "2", "_BONESEG_COMPLETE": "complete_bash"}
        cases = [
            ("import torch alone (for comparison)", ["--import-torch"], env),
            ("boneseg --version", ["--version"], env),
            ("boneseg --help", ["--help"], env),
            ("boneseg train --help", ["train", "--help"], env),
            ("tab completion (boneseg train --enc<TAB>)", [], complete),
            ("boneseg models", ["models"], env),
            (f"boneseg check ({size:.0f} MB, 288 images)", ["check", str(csv)], env),
        ]
        rows = [{"command": name, **run(argv, e, tmp)} for name, argv, e in cases]
    print_table("Start-up", rows)
    return rows


if __name__ == "__main__":
    main()
