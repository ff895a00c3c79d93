"""`boneseg.rle_dice`: the run-length overlap sweep against direct mask counts, the competition's empty rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boneseg import metrics, rle
from boneseg.rle_dice import intersections, iou_from_counts, overlap, run_dice, runs_table


def table_of(masks_per_key, block):
    return runs_table([rle.runs_from_mask(m) for m in masks_per_key], block)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_intersections_equal_mask_counts(seed, keys, pa, pb):
    rng = np.random.default_rng(seed)
    a = rng.random((keys, 7, 9)) < pa
    b = rng.random((keys, 7, 9)) < pb
    ta, tb = table_of(a, 63), table_of(b, 63)
    inter, pred, gt = metrics.dice_counts(a, b)
    assert intersections(ta, tb).tolist() == inter.tolist()
    assert intersections(tb, ta).tolist() == inter.tolist()
    assert ta.areas.tolist() == pred.tolist() and tb.areas.tolist() == gt.tolist()
    np.testing.assert_array_equal(run_dice(ta, tb), metrics.dice(a, b))
    for k in range(keys):  # the one-pair sweep (postprocess) counts alike
        assert overlap(*rle.runs_from_mask(a[k]), *rle.runs_from_mask(b[k])) == inter[k]


def test_empty_masks_follow_the_competition_rule():
    empty, full = np.zeros((2, 4, 4), bool), np.ones((2, 4, 4), bool)
    te, tf = table_of(empty, 16), table_of(full, 16)
    assert run_dice(te, te).tolist() == [1.0, 1.0]  # both empty -> 1
    assert run_dice(te, tf).tolist() == [0.0, 0.0]
    assert run_dice(tf, tf).tolist() == [1.0, 1.0]
    assert iou_from_counts([0, 2], [0, 4], [0, 2]).tolist() == [1.0, 0.5]
    assert overlap(*rle.runs_from_mask(empty[0]), *rle.runs_from_mask(full[0])) == 0
    with pytest.raises(ValueError):
        intersections(te, table_of(empty[:1], 16))
