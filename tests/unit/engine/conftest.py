"""Fixtures shared by the tests of the training engine."""

from __future__ import annotations

import pytest
from util import write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("trainx") / "data", patients=3, size=64)
