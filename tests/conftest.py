"""Shared fixtures: small synthetic datasets written once per test session."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small synthetic dataset (4 train patients = 8 labelled images, 1 test patient) at 256²."""
    from boneseg.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "data"
    synthesize(root, patients=4, test_patients=1, size=256, seed=0)
    return root
