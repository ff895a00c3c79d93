"""The sliding window: one tile equals resizing, tiles blend to the forward output."""

from __future__ import annotations

import torch

from boneseg.inference import (
    PredictOptions,
    gaussian_weights,
    predict,
    sliding_window,
    tile_starts,
)


def test_sliding_with_one_tile_equals_resize(one_image, ckpt, tmp_path):
    a, b = tmp_path / "resize.csv", tmp_path / "sliding.csv"
    predict(one_image, [ckpt], a, tta="hflip", options=PredictOptions(size=256, workers=0))
    predict(one_image, [ckpt], b, sliding=True, tta="hflip", options=PredictOptions(window=256, workers=0))
    assert a.read_bytes() == b.read_bytes()


def test_sliding_window_blends_to_the_forward_output():
    x = torch.rand(1, 200, 150)

    def forward(b):  # a pointwise "model"
        return torch.sigmoid(b.repeat(1, 3, 1, 1) * 4 - 2)

    want = forward(x[None])[0]
    got = sliding_window(forward, x, window=64, overlap=0.5, batch_size=5)
    assert got.shape == (3, 200, 150)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    small = sliding_window(forward, x[:, :40, :50], window=64)  # padded to one tile, cropped back
    torch.testing.assert_close(small, want[:, :40, :50])
    assert tile_starts(200, 64, 0.5) == [0, 27, 54, 82, 109, 136] and tile_starts(64, 64, 0.5) == [0]
    g = gaussian_weights(64)
    assert g.max() == 1 and g.min() >= 1e-3 and torch.equal(g, g.flip(0))
