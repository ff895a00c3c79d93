"""Fixtures shared by the tests of the data layer."""

from __future__ import annotations

import pytest
from util import write_dataset


@pytest.fixture()
def data(tmp_path):
    return write_dataset(tmp_path / "data")
