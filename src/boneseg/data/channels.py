"""Input-channel modes: what an 8-bit radiograph becomes before normalisation.

A mode is a base (``gray``, ``rgb``, ``clahe3``) optionally followed by edge channels (``+sobel``,
``+laplacian``), e.g. ``gray+sobel`` or ``clahe3+sobel+laplacian``:

=============  ============================================================================
``gray``       the image (1 channel)
``rgb``        the image repeated 3 times (ImageNet-shaped first layer, weights kept as is)
``clahe3``     the image, CLAHE clip 2.0 and CLAHE clip 4.0 (8x8 tiles), stacked (3 channels)
``+sobel``     Sobel gradient magnitude (3x3), scaled by 1/4 and clipped to 8 bits
``+laplacian`` absolute 3x3 Laplacian, scaled by 1/2 and clipped to 8 bits
=============  ============================================================================

`make_channels` is the one implementation, used by the training dataset (after augmentation, in the
data-loader workers) and by inference (through `boneseg.data.transforms.normalize`, which derives the
channels from the gray image when it is handed a 1-channel batch). CLAHE and the edge filters run on
uint8 images on the CPU with OpenCV, so training and prediction see bit-identical channels.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from boneseg.errors import UsageError, suggest

BASES: dict[str, int] = {"gray": 1, "rgb": 3, "clahe3": 3}
EDGES: tuple[str, ...] = ("sobel", "laplacian")
CLAHE_CLIPS = (2.0, 4.0)


def parse_mode(mode: str) -> tuple[str, tuple[str, ...]]:
    """``"clahe3+sobel"`` -> ``("clahe3", ("sobel",))``.

    Raises:
        UsageError: unknown base or edge name, or an edge given twice.
    """
    parts = [p.strip().lower() for p in str(mode).split("+")]
    base, edges = parts[0], tuple(parts[1:])
    examples = [*BASES, *(f"gray+{e}" for e in EDGES), "clahe3+sobel+laplacian"]
    if base not in BASES:
        raise UsageError(f"--channels {mode!r}: unknown mode{suggest(str(mode), examples)}")
    for e in edges:
        if e not in EDGES:
            raise UsageError(f"--channels {mode!r}: unknown edge channel {e!r}{suggest(e, EDGES)}")
    if len(set(edges)) != len(edges):
        raise UsageError(f"--channels {mode!r}: an edge channel is given twice")
    return base, edges


def n_channels(mode: str) -> int:
    """Model input channels of a mode."""
    base, edges = parse_mode(mode)
    return BASES[base] + len(edges)


def is_derived(mode: str) -> bool:
    """True when the mode needs more than repeating the gray image (CLAHE or edges)."""
    base, edges = parse_mode(mode)
    return base == "clahe3" or bool(edges)


def _clahe(image: np.ndarray, clip: float) -> np.ndarray:
    return cv2.createCLAHE(clipLimit=clip, tileGridSize=(8, 8)).apply(image)


def _sobel(image: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy)  # IEEE sqrt of exact integers: identical whatever the memory alignment
    return np.clip(mag * 0.25, 0, 255).astype(np.uint8)


def _laplacian(image: np.ndarray) -> np.ndarray:
    return cv2.convertScaleAbs(cv2.Laplacian(image, cv2.CV_16S, ksize=3), alpha=0.5)


_EDGE_FN = {"sobel": _sobel, "laplacian": _laplacian}


def make_channels(image: np.ndarray, mode: str) -> np.ndarray:
    """One uint8 image (H, W) -> (C, H, W) uint8 channels of `mode` (C = `n_channels(mode)`)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 2:
        raise ValueError(f"make_channels expects one (H, W) image, got shape {image.shape}")
    base, edges = parse_mode(mode)
    if base == "gray":
        planes = [image]
    elif base == "rgb":
        planes = [image, image, image]
    else:
        planes = [image, *(_clahe(image, c) for c in CLAHE_CLIPS)]
    planes += [_EDGE_FN[e](image) for e in edges]
    return np.stack(planes)


def batch_channels(images: torch.Tensor, mode: str) -> torch.Tensor:
    """A uint8 batch (N, 1, H, W) on any device -> (N, C, H, W) uint8 on the same device (computed on
    the CPU with `make_channels`)."""
    cpu = images[:, 0].to("cpu").numpy()
    out = torch.from_numpy(np.stack([make_channels(im, mode) for im in cpu]))
    return out.to(images.device, non_blocking=True)
