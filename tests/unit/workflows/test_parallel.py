"""parallel_map: results in item order for any worker count; a negative count refused at the call."""

from __future__ import annotations

import time

import pytest

from boneseg.errors import UsageError
from boneseg.workflows.parallel import STATE, parallel_map


def _scaled(x: int) -> int:
    time.sleep(0.01 * (x % 3))  # finish out of order
    return x * STATE["k"]


@pytest.mark.parametrize("workers", [0, 1, 3, 50, None])
def test_results_in_item_order(workers):
    assert list(parallel_map(_scaled, list(range(7)), {"k": 2}, workers)) == [2 * x for x in range(7)]
    assert not STATE  # the state is not left behind in this process


def test_negative_workers_refused_before_any_item():
    with pytest.raises(UsageError, match="--workers must be 0 or more"):
        parallel_map(_scaled, [1], {"k": 1}, -1)  # not iterated: refused at the call
