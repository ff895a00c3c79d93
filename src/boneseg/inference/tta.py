"""Test-time augmentation policies: which (scale, flip) views of an image are predicted and averaged.

A policy is a mode (resize or sliding window) and a set of views; the views' probabilities are
merged by their mean. Names: ``none``, ``hflip``, ``scale``, ``hflip+scale``, optionally prefixed by
``sliding:`` or ``resize:`` (e.g. ``sliding:hflip``). ``scale`` uses the configured scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import ttach

from boneseg.errors import UsageError, suggest
from boneseg.names import TTA_ALIASES, TTA_NAMES
from boneseg.names import TTA_MODES as MODES

DEFAULT_SCALES = (0.75, 1.0, 1.25)

_HFLIP = ttach.HorizontalFlip()


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror the width axis of a (N, C, H, W) or (C, H, W) tensor (ttach's horizontal flip)."""
    return _HFLIP.apply_aug_image(x, apply=True) if x.ndim == 4 else hflip(x[None])[0]


def unflip(x: torch.Tensor) -> torch.Tensor:
    """Undo `hflip` on a prediction ((N, K, H, W) or (K, H, W))."""
    return _HFLIP.apply_deaug_mask(x, apply=True) if x.ndim == 4 else unflip(x[None])[0]


def parse_scales(scales: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.75,1,1.25"`` or a sequence -> sorted unique positive floats."""
    given = scales
    if isinstance(scales, str):
        try:
            scales = [float(s) for s in scales.replace(" ", "").split(",") if s]
        except ValueError:
            raise UsageError(f"--scales must be comma-separated numbers, got {given!r}") from None
    out = tuple(sorted({float(s) for s in scales}))
    if not out or not all(0 < s < math.inf for s in out):  # also refuses nan
        raise UsageError(f"--scales must be positive finite numbers, got {given!r}")
    return out


def snap(size: float, divisor: int = 32) -> int:
    """`size` rounded to the nearest positive multiple of `divisor` (encoders need it)."""
    return max(divisor, int(round(size / divisor)) * divisor)


@dataclass(frozen=True)
class Policy:
    """How one image is predicted: mode, horizontal flip, scales."""

    sliding: bool = False
    hflip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @property
    def tta(self) -> str:
        """The TTA part of the name (``none``, ``hflip``, ``scale``, ``hflip+scale``)."""
        multi = self.scales != (1.0,)
        return {(False, False): "none", (True, False): "hflip", (False, True): "scale", (True, True): "hflip+scale"}[
            (self.hflip, multi)
        ]

    @property
    def name(self) -> str:
        return f"{'sliding' if self.sliding else 'resize'}:{self.tta}"

    def views(self) -> list[tuple[float, bool]]:
        """The (scale, flip) pairs whose probabilities are averaged."""
        return [(s, f) for s in self.scales for f in ((False, True) if self.hflip else (False,))]

    @classmethod
    def parse(cls, text: str, scales: str | Sequence[float] = DEFAULT_SCALES, sliding: bool = False) -> Policy:
        """A policy from its name; the mode prefix overrides `sliding`.

        Raises:
            UsageError: unknown mode or TTA name (with the closest valid names).
        """
        text = text.strip().lower()
        mode, _, tta = text.rpartition(":")
        if mode:
            if mode not in MODES:
                raise UsageError(f"unknown mode {mode!r} in policy {text!r}{suggest(mode, MODES)}")
            sliding = mode == "sliding"
        tta = TTA_ALIASES.get(tta, tta)
        if tta not in TTA_NAMES:
            raise UsageError(f"unknown TTA {tta!r}{suggest(tta, TTA_NAMES)}")
        use_scales = parse_scales(scales) if "scale" in tta else (1.0,)
        return cls(sliding=sliding, hflip="hflip" in tta, scales=use_scales)


def default_policies(scales: str | Sequence[float] = DEFAULT_SCALES, sliding: bool = False) -> list[Policy]:
    """Every TTA name in resize mode, plus the same in sliding mode when `sliding`."""
    modes = (False, True) if sliding else (False,)
    return [Policy.parse(t, scales, s) for s in modes for t in TTA_NAMES]
