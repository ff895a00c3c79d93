"""The files of a run folder and their management: the one place that names them.

A run folder (``train --out RUN``) holds `CONFIG` (the run's config), `METRICS` (one JSON line per epoch),
`LAST` (the checkpoint a resume continues from), `BEST` (the best validation epoch's model), the trackers'
folders, and what later jobs fit on it: `POSTPROCESS` (``fit_postprocess``) and `CALIBRATION` (``calibrate``).
A ``--force`` run keeps the run it replaces in `PREVIOUS` until its own first checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from boneseg.errors import CheckpointError, OutputExistsError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
POSTPROCESS = "postprocess.json"
CALIBRATION = "calibration.json"
TRACKERS = ("tensorboard", "wandb")
"""The folders `--log` writes inside RUN (one per tracker)."""
PREVIOUS = ".previous-run"
"""Inside RUN: the old run's files while a ``--force`` run has no checkpoint of its own yet."""
RUN_FILES = (CONFIG, METRICS, LAST, BEST, *TRACKERS, POSTPROCESS)
"""boneseg's own files of a run (what ``--force`` moves aside and a failed new run takes back)."""


def checkpoint_in(folder: str | os.PathLike) -> Path | None:
    """A run folder's checkpoint for inference: its `BEST`, else its `LAST` (None: neither)."""
    for name in (BEST, LAST):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def checkpoint_names(path: str | os.PathLike) -> set[str]:
    """`path` and the checkpoints it names when it is a run folder, as absolute paths (a run folder given where a
    run saved the checkpoint file it took from there)."""
    return {os.path.abspath(p) for p in (path, Path(path, BEST), Path(path, LAST))}


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """The per-epoch lines of a run's `METRICS` (none when the run has no such file yet)."""
    import json

    path = Path(run) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _stale_temps(out: Path) -> list[Path]:
    """Temp files of run files that a killed atomic write left behind (``.last.pt.*.tmp`` …)."""
    return [p for name in RUN_FILES for p in out.glob(f".{name}.*.tmp")] if out.is_dir() else []


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def has_checkpoint(out: Path) -> bool:
    """Whether RUN holds a checkpoint (`LAST` or `BEST`)."""
    return any((out / name).is_file() for name in (LAST, BEST))


def restore_previous(out: Path) -> bool:
    """Put back the run that a ``--force`` run replaced, if that run died before its first checkpoint (its
    own files are removed); drop it once the new run has one. Returns whether the old run came back."""
    previous = out / PREVIOUS
    if not previous.is_dir():
        return False
    if has_checkpoint(out):
        _remove([previous])
        return False
    _remove([out / name for name in RUN_FILES] + _stale_temps(out))
    for p in sorted(previous.iterdir()):
        p.rename(out / p.name)
    previous.rmdir()
    return True


def drop_previous(out: Path) -> None:
    """The new run has its first checkpoint: the run it replaced is removed."""
    if (out / PREVIOUS).exists() and has_checkpoint(out):
        _remove([out / PREVIOUS])


def check_run_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse a RUN that is not a folder, a non-empty one unless resuming or forced, and a resume without
    `LAST`; reads only (stale temp files of an interrupted save do not make RUN "not empty")."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out}: exists and is not a folder")
    if resume:
        if not (out / LAST).is_file():
            raise CheckpointError(f"--resume: {out / LAST} not found (nothing to resume; drop --resume)")
        return
    stale = _stale_temps(out)
    if out.is_dir() and any(p not in stale for p in out.iterdir()) and not force:
        raise OutputExistsError(
            f"--out {out}: folder exists and is not empty (use --resume to continue that run or --force to start over)"
        )


def prepare_run_dir(out: Path, resume: bool, force: bool) -> bool:
    """`check_run_dir`, then make RUN; with `force` boneseg's own files of the old run are moved aside into
    `PREVIOUS` (other files stay), to be removed only once the new run has written its first checkpoint
    (`drop_previous`); stale temp files of an interrupted save are removed. Returns whether it made the
    folder. Call it holding RUN (`boneseg.io.hold`), after every check of the run has passed."""
    check_run_dir(out, resume, force)
    _remove(_stale_temps(out))
    if resume:
        return False
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    own = [out / name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink()]
    if own:
        (out / PREVIOUS).mkdir()
        for p in own:
            p.rename(out / PREVIOUS / p.name)
    return made


@contextlib.contextmanager
def run_folder(
    out: Path, resume: bool, force: bool, main: bool = True, barrier: Callable[[], None] = lambda: None
) -> Iterator[None]:
    """`prepare_run_dir` (by the `main` process; every process then meets at `barrier`), then the body; a new
    run that fails before saving a checkpoint takes back what it wrote (and the folder, if it made it) and
    puts back the run it replaced, so the plain retry just works and a failed ``--force`` loses nothing."""
    made = prepare_run_dir(out, resume, force) if main else False
    barrier()
    try:
        yield
    except BaseException:
        if main and not resume and not has_checkpoint(out):
            _remove([out / name for name in RUN_FILES] + _stale_temps(out))
            restore_previous(out)
            if made and not any(out.iterdir()):
                out.rmdir()
        raise
