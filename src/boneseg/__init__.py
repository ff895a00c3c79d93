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


def _short_openmp_spin() -> None:
    """Idle OpenMP threads spin briefly, then sleep (``GOMP_SPINCOUNT=1000``, what libgomp itself uses when it
    sees more threads than cores), unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set. libgomp cannot see
    other processes: with its default long spin, a thread waiting for its partner holds a core the partner
    needs on a CPU busy with other work (a 2-thread demo training epoch: 13.0 s vs 8.9 s beside one busy
    process on 2 cores, the same 4.2 s on a quiet machine; docs/demo.md). Takes effect only when boneseg is
    imported before torch loads OpenMP, as the ``boneseg`` command does; the numbers computed do not change."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")


_short_openmp_spin()
_fork_safe_opencv()
__all__ = ["CLASSES", "NUM_CLASSES", "__version__"]
