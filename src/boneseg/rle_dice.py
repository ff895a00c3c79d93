"""Dice in run-length space: the overlap of masks counted from their pixel runs, no mask decoded.

Every mask is a list of runs ``[start, end)`` of its row-major pixels (`boneseg.rle.parse`,
`boneseg.rle.runs_from_mask`). The runs of many (image, class) masks go into one sorted `RunTable`, each
mask shifted into its own block of ``block`` pixels, so the overlap of two tables is one vectorised pass:
with ``F(x)`` the number of pixels of one table covered below ``x`` (a ``searchsorted`` over its run starts
plus a cumulative sum of run lengths), a run ``[s, e)`` of the other overlaps it by ``F(e) - F(s)``. The cost
follows the number of runs (about one per bone row of a 2048² image). Used by ``analyze``, ``select`` and
``postprocess``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from boneseg.metrics import dice_from_counts

__all__ = ["RunTable", "runs_table", "intersections", "overlap", "run_dice", "iou_from_counts"]


@dataclass
class RunTable:
    """The runs of ``n_keys`` masks (key = image * 29 + class) in one sorted array.

    Key ``k``'s runs are shifted by ``k * block``, so runs of different masks never meet.
    """

    starts: np.ndarray  # (R,) int64, global
    ends: np.ndarray  # (R,) int64, exclusive
    owner: np.ndarray  # (R,) int64 key of each run
    areas: np.ndarray  # (n_keys,) int64 pixel count of each mask
    block: int

    @property
    def n_keys(self) -> int:
        return len(self.areas)


def runs_table(runs: Sequence[tuple[np.ndarray, np.ndarray]], block: int) -> RunTable:
    """A `RunTable` from per-key (0-based starts, exclusive ends), in key order."""
    counts = np.fromiter((len(s) for s, _ in runs), np.int64, len(runs))
    owner = np.repeat(np.arange(len(runs), dtype=np.int64), counts)
    if counts.sum():
        offset = owner * np.int64(block)
        starts = np.concatenate([s for s, _ in runs]).astype(np.int64) + offset
        ends = np.concatenate([e for _, e in runs]).astype(np.int64) + offset
    else:
        starts = ends = np.empty(0, np.int64)
    areas = np.bincount(owner, weights=ends - starts, minlength=len(runs)).astype(np.int64)
    return RunTable(starts, ends, owner, areas, int(block))


def _coverage(starts: np.ndarray, ends: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``F``: the pixels of the sorted, non-overlapping runs ``[starts, ends)`` below each x."""
    covered_before = np.concatenate(([0], np.cumsum(ends - starts)))

    def covered(x: np.ndarray) -> np.ndarray:
        """Whole runs starting before x, minus the part of the last one at or past x."""
        k = np.searchsorted(starts, x, side="left")
        past = np.maximum(ends[np.maximum(k - 1, 0)] - x, 0)
        return covered_before[k] - np.where(k > 0, past, 0)

    return covered


def intersections(a: RunTable, b: RunTable) -> np.ndarray:
    """|A ∩ B| of every key: (n_keys,) int64, by a sorted sweep over the runs (no masks decoded)."""
    if a.n_keys != b.n_keys or a.block != b.block:
        raise ValueError(f"run tables differ in layout: {a.n_keys} vs {b.n_keys} keys, block {a.block} vs {b.block}")
    if a.starts.size == 0 or b.starts.size == 0:
        return np.zeros(a.n_keys, np.int64)
    if a.starts.size > b.starts.size:  # search the longer list, iterate the shorter
        a, b = b, a
    covered = _coverage(b.starts, b.ends)
    per_run = covered(a.ends) - covered(a.starts)
    return np.bincount(a.owner, weights=per_run, minlength=a.n_keys).astype(np.int64)


def overlap(a_starts: np.ndarray, a_ends: np.ndarray, b_starts: np.ndarray, b_ends: np.ndarray) -> int:
    """|A ∩ B| of two masks given as sorted, non-overlapping runs: the sweep of `intersections` for one pair."""
    if not len(a_starts) or not len(b_starts):
        return 0
    covered = _coverage(b_starts, b_ends)
    return int((covered(a_ends) - covered(a_starts)).sum())


def run_dice(a: RunTable, b: RunTable) -> np.ndarray:
    """Competition Dice of every key (both empty -> 1.0): (n_keys,) float64."""
    return dice_from_counts(intersections(a, b), a.areas, b.areas)


def iou_from_counts(intersection, a_area, b_area) -> np.ndarray:
    """IoU ``|A∩B| / |A∪B|`` from pixel counts (numpy, broadcasting); both empty gives 1.0, as Dice does."""
    inter = np.asarray(intersection, np.float64)
    union = np.asarray(a_area, np.float64) + np.asarray(b_area, np.float64) - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
