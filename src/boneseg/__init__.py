"""boneseg: hand-bone X-ray segmentation, from raw radiographs to a competition submission."""
import os

from boneseg.classes import CLASSES, NUM_CLASSES

__version__ = "0.1.0"


def _fork_safe_opencv() -> None:
    """Run OpenCV single-threaded: its thread pool is not fork-safe, and a data-loader worker forked while
    the pool is alive can deadlock at its first OpenCV call. boneseg parallelises across images instead
    (cache building, data-loader workers)."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - a hard dependency
        return
    cv2.setNumThreads(0)


def _passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spinning (unless ``OMP_WAIT_POLICY`` is set): on a CPU shared
    with other work a spinning thread holds a core another thread of the same step waits for (a 2-thread
    training step ran 2x slower than with sleeping threads at load 7 on 2 cores; docs/demo.md). Takes effect
    only when boneseg is imported before torch loads OpenMP, as the ``boneseg`` command does; the numbers
    computed do not change."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_passive_openmp()
_fork_safe_opencv()
__all__ = ["CLASSES", "NUM_CLASSES", "__version__"]
