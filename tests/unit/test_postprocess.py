"""Mask post-processing: keep-largest, small islands, the per-class rules file, the run-length rule."""

from __future__ import annotations

import numpy as np
import pytest

from boneseg import rle
from boneseg.errors import DataError, UsageError
from boneseg.postprocess import close_mask, postprocess, rules_list


def test_postprocess_keeps_largest_and_drops_islands():
    m = np.zeros((2, 20, 20), bool)
    m[0, 2:10, 2:10] = True
    m[0, 15:17, 15:17] = True
    m[1, 0:3, 0:3] = True
    largest = postprocess(m, keep_largest=True)
    assert largest[0].sum() == 64 and largest[1].sum() == 9
    small = postprocess(m, min_area=5)
    assert small[0].sum() == 64 and small[1].sum() == 9
    assert postprocess(m, min_area=10)[1].sum() == 0
    assert postprocess(m) is m
    with pytest.raises(UsageError):
        postprocess(m, min_area=-1)


def test_clean_runs_matches_the_mask_rule():
    from boneseg.postprocess import clean_mask, clean_runs

    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((37, 53)) > 0.8
        starts, ends = rle.runs_from_mask(mask)
        for keep, area, close in ((True, 0, 0), (False, 3, 0), (False, 0, 3), (True, 2, 5)):
            s, e = clean_runs(starts, ends, mask.shape, keep, area, close)
            expected = clean_mask(close_mask(mask, close), keep, area)
            assert rle.runs_to_rle(s, e) == rle.encode(expected)


def test_rules_file_is_checked():
    with pytest.raises(DataError, match="classes"):
        rules_list({"nope": 1})
    with pytest.raises(DataError, match="did you mean 'Pisiform'"):
        rules_list({"classes": {"Pisifrom": {"keep_largest": True}}})
    assert rules_list({"classes": {}}, keep_largest=True, min_area=5)[3] == (True, 5)
