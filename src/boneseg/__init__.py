"""boneseg: hand-bone X-ray segmentation, from raw radiographs to a competition submission."""
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


_fork_safe_opencv()
__all__ = ["CLASSES", "NUM_CLASSES", "__version__"]
