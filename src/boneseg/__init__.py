"""boneseg: hand-bone X-ray segmentation, from raw radiographs to a competition submission."""

import importlib.util
import os
import sys

from boneseg.classes import CLASSES, NUM_CLASSES

__version__ = "0.1.0"


def _fork_safe_opencv() -> None:
    """Run OpenCV single-threaded: its thread pool is not fork-safe, and a data-loader worker forked while
    the pool is alive can deadlock at its first OpenCV call. boneseg parallelises across images instead
    (cache building, data-loader workers). Done when cv2 is first imported (a one-shot import hook), so a
    command that never reads an image does not pay for loading OpenCV."""
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(0)
    elif not any(isinstance(f, _SingleThreadedOpenCV) for f in sys.meta_path):
        sys.meta_path.insert(0, _SingleThreadedOpenCV())


class _SingleThreadedOpenCV:
    """A `sys.meta_path` finder: finds ``cv2`` as the other finders do, then calls ``cv2.setNumThreads(0)``
    once it has loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != "cv2":
            return None
        sys.meta_path.remove(self)  # one shot; cv2's own loader imports its binary as "cv2" again
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.setNumThreads(0)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


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
