"""Shared fixtures: small synthetic datasets written once per test session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small synthetic dataset (4 train patients = 8 labelled images, 1 test patient) at 256²."""
    from boneseg.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "data"
    synthesize(root, patients=4, test_patients=1, size=256, seed=0)
    return root
