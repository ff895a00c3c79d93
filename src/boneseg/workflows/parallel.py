"""Process-parallel map over images with read-only shared state (fork where available)."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from boneseg.errors import check_workers
from boneseg.progress import Task

STATE: dict[str, Any] = {}
"""The shared state inside a worker (what `parallel_map` was given); read it, never write it."""


def default_workers() -> int:
    """Worker processes: the usable CPU cores (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _init_worker(state: dict[str, Any]) -> None:
    STATE.clear()
    STATE.update(state)


def parallel_map(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    state: dict[str, Any],
    workers: int | None = None,
    task: Task | None = None,
) -> Iterator[Any]:
    """``fn(item)`` for each item, in order, in `workers` processes that share `state` (read-only).

    `state` reaches the workers through ``fork`` where available (no copy until written), else by
    pickling. With one worker (or one item) everything runs in this process. `fn` reads it via
    ``STATE``. Results are yielded in item order as they complete; `task` advances by one per result.
    `workers` 0 means 1 (as for a data loader: this process); None: `default_workers`. A failure or Ctrl-C
    cancels the items not started; items in flight finish first.

    Raises:
        UsageError: a negative `workers` (checked before the first item).
    """
    check_workers(workers)
    return _map(fn, items, state, default_workers() if workers is None else max(1, int(workers)), task or Task())


def _map(
    fn: Callable[[Any], Any], items: Sequence[Any], state: dict[str, Any], workers: int, task: Task
) -> Iterator[Any]:
    total = len(items)
    if workers == 1 or total <= 1:
        _init_worker(state)
        try:
            for item in items:
                yield fn(item)
                task.advance()
        finally:
            STATE.clear()
        return
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else None)
    chunk = max(1, min(8, total // (workers * 8)))
    with cf.ProcessPoolExecutor(
        min(workers, total), mp_context=ctx, initializer=_init_worker, initargs=(state,)
    ) as pool:
        try:
            for result in pool.map(fn, items, chunksize=chunk):
                yield result
                task.advance()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
