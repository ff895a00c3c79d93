"""parallel_map: results in item order for any worker count; a failure or Ctrl-C stops the workers at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from boneseg.errors import DataError, UsageError
from boneseg.workflows.parallel import STATE, parallel_map


def _scaled(x: int) -> int:
    time.sleep(0.01 * (x % 3))  # finish out of order
    return x * STATE["k"]


def _fails_fast_others_slow(x: int) -> int:
    (Path(STATE["pids"]) / str(os.getpid())).touch()
    if x == 0:
        time.sleep(0.5)  # the other worker has started its item
        raise DataError("image 0: unreadable")
    time.sleep(30)
    return x


def _alive(pids) -> list[int]:
    """The processes among `pids` still running (a zombie has stopped)."""
    stats = {p: Path(f"/proc/{p}/stat") for p in pids}
    return [p for p, s in stats.items() if s.exists() and s.read_text().split()[2] != "Z"]


@pytest.mark.parametrize("workers", [0, 1, 3, 50, None])
def test_results_in_item_order(workers):
    assert list(parallel_map(_scaled, list(range(7)), {"k": 2}, workers)) == [2 * x for x in range(7)]
    assert not STATE  # the state is not left behind in this process


def test_negative_workers_refused_before_any_item():
    with pytest.raises(UsageError, match="--workers must be 0 or more"):
        parallel_map(_scaled, [1], {"k": 1}, -1)  # not iterated: refused at the call


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to see the workers gone")
def test_a_failing_item_stops_the_others_at_once(tmp_path):
    def like_the_cli(signum, frame):  # the CLI's SIGTERM handler, which forked workers inherit
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, like_the_cli)
    t = time.monotonic()
    try:
        with pytest.raises(DataError, match="image 0: unreadable"):
            list(parallel_map(_fails_fast_others_slow, list(range(4)), {"pids": str(tmp_path)}, 2))
    finally:
        signal.signal(signal.SIGTERM, old)
    time.sleep(0.5)
    assert time.monotonic() - t < 15 and not _alive(int(f.name) for f in tmp_path.iterdir())  # none left running


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to see the workers gone")
def test_ctrl_c_stops_the_workers_and_leaves_none(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from boneseg.workflows.parallel import parallel_map

            def slow(x):
                os.write(1, f"{os.getpid()}\\n".encode())  # one write: two workers' lines never interleave
                time.sleep(30)

            try:
                list(parallel_map(slow, list(range(4)), {}, 2))
            except KeyboardInterrupt:
                sys.exit(130)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    pids = {int(proc.stdout.readline()) for _ in range(2)}
    t = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - t < 15 and "Traceback" not in err, err
    time.sleep(0.5)
    assert not _alive(pids)
