"""Input normalisation (shared by training and inference) and the albumentations presets.

The one rule that turns an 8-bit radiograph into model input lives here: `normalize` (a batch of uint8
tensors, on any device) and `to_input` (one numpy image). They read the typed ``channels``, ``mean`` and
``std`` of a run's config (`boneseg.runs.config.TrainConfig`, or a `boneseg.runs.run.Run`), so
inference never repeats training flags nor their defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from boneseg.errors import UsageError, suggest
from boneseg.names import AUGMENTATIONS

DEFAULT_MEAN = (0.449,)
DEFAULT_STD = (0.226,)
"""ImageNet's mean/std averaged over RGB: a 1-channel model built from ImageNet weights (first convolution
summed over its input channels) sees inputs on the scale it was trained on."""

MAX_SIDE = 8192
"""The largest side a model input may have (training ``--size``/``--crop``, predict ``--size``/``--window``, an
export's sidecar): four times the competition's 2048² images. One 8192² image's 29 probabilities already take
7.8 GB; a larger side only runs out of memory after a long wait."""


def check_side(value: object, option: str, divisor: int = 32) -> int:
    """`value` as a model-input side: a whole multiple of `divisor` from `divisor` to `MAX_SIDE`, the one rule
    for every size the user gives.

    Raises:
        UsageError: anything else, naming `option`.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < divisor or value % divisor:
        raise UsageError(
            f"{option} {value}: must be a multiple of {divisor} from {divisor} to {MAX_SIDE} "
            f"(encoders downsample {divisor}x)"
        )
    if value > MAX_SIDE:
        raise UsageError(
            f"{option} {value}: at most {MAX_SIDE} (a larger side only runs out of memory; the images are 2048²)"
        )
    return value


class InputConfig(Protocol):
    """What the input rule reads from a run's config (a `TrainConfig` or a `Run` has these)."""

    @property
    def channels(self) -> str: ...
    @property
    def mean(self) -> Sequence[float]: ...
    @property
    def std(self) -> Sequence[float]: ...


def in_channels(config: InputConfig) -> int:
    """Number of model input channels for a config (its ``channels`` mode)."""
    from boneseg.data.channels import n_channels

    return n_channels(config.channels)


def _stats(config: InputConfig, n: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.as_tensor(config.mean, dtype=dtype, device=device)
    std = torch.as_tensor(config.std, dtype=dtype, device=device)
    if mean.numel() == 1:
        mean = mean.expand(n)
    if std.numel() == 1:
        std = std.expand(n)
    return mean.reshape(1, n, 1, 1), std.reshape(1, n, 1, 1)


def normalize(images: torch.Tensor, config: InputConfig, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, 1, H, W), on any device -> model input (N, C, H, W) of `dtype`.

    ``x = (image / 255 - mean) / std`` per channel, channels made by the config's ``channels`` mode: a
    1-channel batch of a CLAHE/edge mode gets its channels from `boneseg.data.channels.make_channels` (on the
    CPU); a batch that already has them (the training dataset makes them) is only scaled.
    """
    from boneseg.data.channels import batch_channels, is_derived

    if images.ndim == 3:
        images = images[:, None]
    n = in_channels(config)
    mode = config.channels
    if images.shape[1] == 1 and n > 1 and is_derived(mode):
        images = batch_channels(images, mode)
    x = images.to(dtype=dtype, copy=True).div_(255.0)
    mean, std = _stats(config, n, x.device, dtype)
    if x.shape[1] == n:
        return x.sub_(mean).div_(std)
    return (x.expand(-1, n, -1, -1) - mean) / std


def to_input(image: np.ndarray, config: InputConfig) -> torch.Tensor:
    """One 8-bit grayscale image (H, W) -> float tensor (C, H, W) exactly as the model saw it in training."""
    image = np.asarray(image)
    if image.ndim == 3:  # an RGB/BGR file read in colour: use its first channel
        image = image[..., 0]
    return normalize(torch.from_numpy(np.ascontiguousarray(image))[None], config)[0]


# -- augmentation ----------------------------------------------------------------------------------


def _presets(flip: bool) -> dict[str, Callable[[], list]]:
    import albumentations as A
    import cv2

    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
    hflip = [A.HorizontalFlip(p=0.5)] if flip else []

    def light():
        return [
            *hflip,
            A.Affine(translate_percent=(-0.03, 0.03), scale=(0.95, 1.05), rotate=(-10, 10), p=0.5, **border),
            A.RandomBrightnessContrast(0.1, 0.1, p=0.5),
        ]

    def default():
        return [
            *hflip,
            A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), rotate=(-30, 30), p=0.7, **border),
            A.CLAHE(clip_limit=2.0, p=0.2),
            A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
            A.RandomGamma((80, 120), p=0.3),
        ]

    def strong():
        return [
            *hflip,
            A.Affine(translate_percent=(-0.1, 0.1), scale=(0.8, 1.2), rotate=(-30, 30), shear=(-5, 5), p=0.8, **border),
            A.OneOf(
                [
                    A.ElasticTransform(alpha=40, sigma=8, **border),
                    A.GridDistortion(num_steps=5, distort_limit=0.2, **border),
                ],
                p=0.3,
            ),
            A.CLAHE(clip_limit=3.0, p=0.3),
            A.RandomBrightnessContrast(0.25, 0.25, p=0.6),
            A.RandomGamma((70, 130), p=0.4),
            A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
        ]

    return {"none": list, "light": light, "default": default, "strong": strong}


def build_augmentation(name: str, crop: int | None = None, flip: bool = True):
    """An albumentations ``Compose`` for preset `name` (None for ``none`` without a crop).

    Args:
        name: ``none``, ``light``, ``default`` or ``strong``.
        crop: random crop side applied first (training on patches of a larger image).
        flip: include horizontal flips (off when hands are unified to one side).

    Raises:
        UsageError: unknown preset name.
    """
    presets = _presets(flip)
    if name not in presets:
        raise UsageError(f"--aug {name!r}: unknown preset{suggest(str(name), AUGMENTATIONS)}")
    import albumentations as A

    steps = ([A.RandomCrop(crop, crop)] if crop else []) + presets[name]()
    if not steps:
        return None
    return A.Compose(steps)


def augment(transform, image: np.ndarray, masks: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply `transform` to an image (H, W) uint8 and masks (C, H, W) uint8/bool with randomness fixed by `seed`.

    The same (transform, inputs, seed) always gives the same output, whatever process runs it; this is
    what makes resumed training bit-exact.
    """
    if transform is None:
        return image, masks
    transform.set_random_seed(int(seed) % (2**32))
    if masks is None:
        return transform(image=image)["image"], None
    out = transform(image=image, masks=masks.view(np.uint8))
    return out["image"], np.asarray(out["masks"])
