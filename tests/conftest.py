"""Shared fixtures: small synthetic datasets written once per test session."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# The shared helpers (tests/util.py) import as `util` from every test folder.
sys.path.insert(0, str(Path(__file__).parent))

# One intra-op thread everywhere (also for subprocesses): on a small shared machine OpenMP spin-waiting
# makes two threads far slower than one for the tiny models the tests use.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _module_folders_removed(request, tmp_path_factory):
    """A module's temporary folders go when the module ends, unless one of its tests failed.

    A training test leaves ~0.2 GB of checkpoints: kept for the whole session they add up to tens of GB.
    With `tmp_path_retention_policy = "failed"` (pyproject) a passing test's own folder goes at once; this
    removes the module-scoped fixtures' folders too, so the suite's disk use is that of one module.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        return
    for path in set(base.iterdir()) - before:
        if not path.name.startswith("session-"):  # session-scoped fixtures (synth_data)
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small synthetic dataset (4 train patients = 8 labelled images, 1 test patient) at 256²."""
    from boneseg.data.synth import synthesize

    root = tmp_path_factory.mktemp("session-synth") / "data"
    synthesize(root, patients=4, test_patients=1, size=256, seed=0)
    return root
