"""Fixtures shared by unit tests of several layers (each module-scoped: built once per test module)."""

from __future__ import annotations

import pytest
from util import _write_probs, write_dataset

from boneseg.data.layout import discover


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny labelled dataset (3 patients at 64²) for training tests (engine, runs)."""
    return write_dataset(tmp_path_factory.mktemp("trainx") / "data", patients=3, size=64)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """The same phantom twice at 256 px: clean, and with one injected label error in 40% of the images."""
    from boneseg.data.synth import synthesize

    root = tmp_path_factory.mktemp("audit")
    synthesize(root / "clean", patients=6, test_patients=0, size=256, seed=3)
    synthesize(root / "noisy", patients=6, test_patients=0, size=256, seed=3, label_errors=0.4)
    return root


@pytest.fixture(scope="module")
def teacher(synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    train, test = discover(synth_data), discover(synth_data, "test")
    return {
        "oof": [str(_write_probs(root / f"oof_{b}", train, b)) for b in (3, 9)],
        "test": [str(_write_probs(root / f"test_{b}", test, b)) for b in (3, 9)],
    }
