"""Sliding-window inference at full resolution with Gaussian-weighted blending.

Tiles of ``window``² are taken with a stride of ``window * (1 - overlap)`` (the last tile of each axis
ends at the border), run through the model in batches, and blended with a Gaussian importance map
(sigma = window / 8, floored at 1e-3 so that border pixels covered by one tile keep their value).
The blended sum lives on the model's device (fp16 on CUDA) and moves to the CPU when the device runs
out of memory.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F

from boneseg.data.transforms import check_side
from boneseg.errors import BonesegWarning, UsageError

MIN_WEIGHT = 1e-3


def tile_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one axis: evenly spread, first at 0, last at ``length - window``."""
    if length <= window:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    n = math.ceil((length - window) / stride) + 1
    return [round(i * (length - window) / (n - 1)) for i in range(n)]


@lru_cache(maxsize=8)
def _gaussian(window: int) -> torch.Tensor:
    sigma = window / 8.0
    ax = torch.arange(window, dtype=torch.float64) - (window - 1) / 2.0
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g2 = torch.outer(g, g)
    return (g2 / g2.max()).clamp_min(MIN_WEIGHT).float()


def gaussian_weights(window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (window, window) float32 importance map: 1 at the centre, at least 1e-3 at the corners."""
    return _gaussian(int(window)).to(device)


def check_window(window: int, overlap: float, divisor: int = 32) -> None:
    """Raise `UsageError` for a window that is not a positive multiple of `divisor` or an overlap outside [0, 1)."""
    check_side(window, "--window", divisor)
    if not 0.0 <= overlap < 1.0:
        raise UsageError(f"--overlap must be in [0, 1), got {overlap}")


def alloc(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Zeros on `device`, or float32 zeros on the CPU when the device is out of memory."""
    try:
        return torch.zeros(shape, device=device, dtype=dtype)
    except torch.OutOfMemoryError:
        if device.type == "cpu":
            raise
        torch.cuda.empty_cache()
        warnings.warn(f"out of device memory for a {tuple(shape)} buffer; using the CPU", BonesegWarning, stacklevel=2)
        return torch.zeros(shape, dtype=torch.float32)


def sliding_window(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    window: int,
    overlap: float = 0.5,
    batch_size: int = 4,
    acc_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Blend `forward` over the tiles of one image.

    Args:
        forward: maps a (B, C, window, window) batch to (B, K, window, window) probabilities.
        x: the image, (C, H, W), on the model's device. Images smaller than the window are zero-padded.
        window: tile side. overlap: fraction of a tile shared with its neighbour.
        batch_size: tiles per forward call (halved automatically on out-of-memory).
        acc_dtype: accumulator dtype; default fp16 on CUDA, float32 elsewhere.

    Returns:
        (K, H, W) blended probabilities (on the device, or the CPU after an out-of-memory fallback).
        With a single tile the forward output is returned as is (no weighting).
    """
    _, h, w = x.shape
    ph, pw = max(h, window), max(w, window)
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h))
    ys, xs = tile_starts(ph, window, overlap), tile_starts(pw, window, overlap)
    boxes = [(y, xx) for y in ys for xx in xs]
    if len(boxes) == 1:
        return forward(x[None])[0][:, :h, :w]
    if acc_dtype is None:
        acc_dtype = torch.float16 if x.device.type == "cuda" else torch.float32
    g = gaussian_weights(window, x.device)
    acc = wsum = None
    i, bs = 0, max(1, int(batch_size))
    while i < len(boxes):
        chunk = boxes[i : i + bs]
        batch = torch.stack([x[:, y : y + window, xx : xx + window] for y, xx in chunk])
        try:
            out = forward(batch)
        except torch.OutOfMemoryError:
            if bs == 1:
                raise
            torch.cuda.empty_cache()
            bs = max(1, bs // 2)
            continue
        if acc is None or wsum is None:
            acc = alloc((out.shape[1], ph, pw), x.device, acc_dtype)
            wsum = torch.zeros((ph, pw), device=acc.device, dtype=torch.float32)
            gw = g.to(acc.device)
        out = out.to(acc.device)
        for (y, xx), tile in zip(chunk, out):
            acc[:, y : y + window, xx : xx + window] += (tile * gw).to(acc.dtype)
            wsum[y : y + window, xx : xx + window] += gw
        i += len(chunk)
    assert acc is not None and wsum is not None  # more than one tile: the loop ran
    return acc[:, :h, :w].div_(wsum[:h, :w])
