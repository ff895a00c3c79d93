import numpy as np
import pytest
import torch

from boneseg import CLASSES, metrics


def test_dice_rules():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert metrics.dice(a, b) == 1.0  # both empty
    b[0, 0] = True
    assert metrics.dice(a, b) == 0.0
    a[0, :2] = True
    assert metrics.dice(a, b) == pytest.approx(2 * 1 / 3)


def test_batched_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    p = rng.random((2, 29, 16, 16)) > 0.6
    g = rng.random((2, 29, 16, 16)) > 0.6
    p[0, 3] = g[0, 3] = False
    ref = np.array(
        [
            [2 * (pp & gg).sum() / (pp.sum() + gg.sum()) if pp.sum() + gg.sum() else 1.0 for pp, gg in zip(pi, gi)]
            for pi, gi in zip(p, g)
        ]
    )
    got = metrics.dice(p, g)
    assert got.shape == (2, 29) and np.allclose(got, ref) and got[0, 3] == 1.0
    tgot = metrics.dice(torch.from_numpy(p), torch.from_numpy(g))
    assert isinstance(tgot, torch.Tensor) and np.allclose(tgot.numpy(), ref)


def test_aggregation():
    scores = np.tile(np.linspace(0, 1, 29), (3, 1))
    pc = metrics.per_class(scores)
    assert list(pc) == list(CLASSES) and pc["finger-1"] == 0.0 and pc["Ulna"] == 1.0
    assert metrics.mean_dice(pc) == pytest.approx(0.5)


def test_shape_mismatch():
    with pytest.raises(ValueError):
        metrics.dice(np.zeros((2, 2)), np.zeros((3, 3)))
