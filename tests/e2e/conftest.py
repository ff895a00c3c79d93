"""End-to-end tests: the real command line, torchrun and the demo. All are marked `slow` (still part of the
default run; `pytest -m "not slow"` runs the unit tests alone)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
