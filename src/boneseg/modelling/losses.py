"""Multilabel segmentation losses by name and weight: ``bce``, ``dice``, ``bce+dice``, ``0.3*bce+0.7*dice``.

Every term treats the 29 classes as independent sigmoid channels (overlapping bones stay overlapping):

=============  =================================================================================
``bce``        binary cross-entropy on logits, mean over pixels and classes
``dice``       soft Dice per class over the batch, averaged over all 29 classes
``jaccard``    soft IoU per class over the batch
``tversky``    Tversky per class, alpha=0.3 (FP) / beta=0.7 (FN): recall-leaning
``focal``      sigmoid focal loss, gamma=2 (smp's vectorised focal on logits)
``lovasz``     Lovasz hinge per class over the batch, averaged over classes
``boundary``   boundary-weighted BCE: pixels within a thin band around each class's boundary weigh
               ``1 + 4`` times more (band from max-pool dilation minus erosion of the mask, on device)
``dtbce``      distance-weighted BCE: each pixel's BCE weighs ``1 + 2 |d| / clip``, with d its signed
               distance to the class boundary from the cached distance maps (`boneseg.data.masks.
               distance_maps`, clipped at ``--distance-clip``, 16 px by default): mistakes far from
               the true edge (islands, bleeding into a neighbour) cost up to 3x, the opposite emphasis
               of ``boundary``
=============  =================================================================================

Terms are computed in float32 whatever the autocast dtype. Terms that need the distance maps (``dtbce``)
take them as ``dist`` (uint8 codes, as the training dataset delivers them from the cache when the loss
asks); without ``dist`` they compute them from the target on the CPU.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from boneseg.errors import UsageError, suggest


class BCE(nn.Module):
    def forward(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits, target)


class Focal(nn.Module):
    def __init__(self, gamma: float = 2.0, alpha: float | None = None):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits, target):
        from segmentation_models_pytorch.losses._functional import focal_loss_with_logits

        return focal_loss_with_logits(logits, target, gamma=self.gamma, alpha=self.alpha, reduction="mean")


class Lovasz(nn.Module):
    """Lovasz hinge computed separately per class (over all pixels of the batch), then averaged."""

    def forward(self, logits, target):
        from segmentation_models_pytorch.losses.lovasz import _lovasz_hinge

        c = logits.shape[1]
        per_class_logits = logits.transpose(0, 1).reshape(c, -1)
        per_class_target = target.transpose(0, 1).reshape(c, -1)
        return _lovasz_hinge(per_class_logits, per_class_target, per_image=True)


class BoundaryBCE(nn.Module):
    """BCE with pixels near a class boundary weighted ``1 + weight`` (band half-width ~ H/256, >= 1 px)."""

    def __init__(self, weight: float = 4.0, width: int | None = None):
        super().__init__()
        self.weight, self.width = weight, width

    def forward(self, logits, target):
        half = self.width or max(1, round(target.shape[-2] / 256))
        k = 2 * half + 1
        dilated = F.max_pool2d(target, k, stride=1, padding=half)
        eroded = -F.max_pool2d(-target, k, stride=1, padding=half)
        w = 1.0 + self.weight * (dilated - eroded)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (w * bce).sum() / w.sum()


class DistanceBCE(nn.Module):
    """BCE weighted by ``1 + weight * |d| / clip`` (d: signed distance to the true boundary)."""

    needs_distance = True

    def __init__(self, weight: float = 2.0, clip: int | None = None):
        super().__init__()
        self.weight, self.clip = weight, clip

    def forward(self, logits, target, dist=None):
        from boneseg.data.masks import DIST_CLIP, decode_distance, distance_maps

        clip = self.clip or DIST_CLIP
        if dist is None:  # not from the cache: computed here from the target (CPU, OpenCV)
            import numpy as np

            maps = np.stack([distance_maps(t, clip) for t in target.detach().bool().cpu().numpy()])
            dist = torch.from_numpy(maps).to(target.device)
        w = 1.0 + self.weight * decode_distance(dist, clip).abs_() / clip
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (w * bce).sum() / w.sum()


class SoftOverlap(nn.Module):
    """``1 - score`` per class over the whole batch, averaged over all classes.

    ``dice``: (2TP + s) / (2TP + FP + FN + s); ``jaccard``: (TP + s) / (TP + FP + FN + s); ``tversky``:
    (TP + s) / (TP + a FP + b FN + s) -- soft counts from sigmoid probabilities, smoothing s = 1. A class
    absent from the batch scores ~1 only when it is also predicted absent (the competition rule), so false
    positives on absent classes are penalised too.
    """

    def __init__(self, kind: str, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0):
        super().__init__()
        self.kind, self.alpha, self.beta, self.smooth = kind, alpha, beta, smooth

    def forward(self, logits, target):
        p = torch.sigmoid(logits)
        dims = (0, 2, 3)
        tp = (p * target).sum(dims)
        fp = (p * (1 - target)).sum(dims)
        fn = ((1 - p) * target).sum(dims)
        s = self.smooth
        if self.kind == "dice":
            score = (2 * tp + s) / (2 * tp + fp + fn + s)
        elif self.kind == "jaccard":
            score = (tp + s) / (tp + fp + fn + s)
        else:
            score = (tp + s) / (tp + self.alpha * fp + self.beta * fn + s)
        return (1 - score).mean()


def _overlap(kind: str):
    return lambda: SoftOverlap(kind)


LOSSES = {
    "bce": BCE,
    "dice": _overlap("dice"),
    "jaccard": _overlap("jaccard"),
    "tversky": _overlap("tversky"),
    "focal": Focal,
    "lovasz": Lovasz,
    "boundary": BoundaryBCE,
    "dtbce": DistanceBCE,
}
"""Loss term name -> factory, in the order of `boneseg.names.LOSS_NAMES` (the names the CLI lists)."""

_TERM = re.compile(r"^\s*(?:((?:\d+(?:\.\d*)?|\.\d+)(?:e-?\d+)?)\s*\*\s*)?([A-Za-z_-]+)\s*$", re.IGNORECASE)


def parse_loss(spec: str) -> list[tuple[float, str]]:
    """``"0.3*bce+0.7*dice"`` -> ``[(0.3, "bce"), (0.7, "dice")]`` (weight 1 when omitted, ``1e-2`` allowed).

    Raises:
        UsageError: malformed spec, unknown term (closest names suggested), or a weight that is not a
            positive finite number (a 0 weight would train on nothing of that term).
    """
    terms = []
    for part in str(spec).split("+"):
        m = _TERM.match(part)
        if not m:
            raise UsageError(f"--loss {spec!r}: cannot read term {part.strip()!r} (write e.g. 0.3*bce+0.7*dice)")
        weight, name = float(m.group(1)) if m.group(1) else 1.0, m.group(2).lower()
        if name not in LOSSES:
            raise UsageError(f"--loss {spec!r}: unknown loss {name!r}{suggest(name, LOSSES)}")
        if not 0 < weight < math.inf:
            raise UsageError(
                f"--loss {spec!r}: term {part.strip()!r} weighs {weight:g}: a weight must be a positive "
                "finite number (leave out a term you do not want)"
            )
        terms.append((weight, name))
    return terms


class CombinedLoss(nn.Module):
    """A weighted sum of named terms; `forward(logits, target)` with target in {0, 1} of any dtype."""

    def __init__(self, terms: list[tuple[float, str]], distance_clip: int | None = None):
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.names = [n for _, n in terms]
        self.terms = nn.ModuleList(DistanceBCE(clip=distance_clip) if n == "dtbce" else LOSSES[n]() for n in self.names)

    @property
    def needs_distance(self) -> bool:
        """Whether a term needs the distance maps (``dist`` in `forward`)."""
        return any(getattr(t, "needs_distance", False) for t in self.terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, dist: torch.Tensor | None = None) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        total = logits.new_zeros(())
        for w, term in zip(self.weights, self.terms):
            extra = {"dist": dist} if getattr(term, "needs_distance", False) else {}
            total = total + w * term(logits, target, **extra)
        return total

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}*{n}" for w, n in zip(self.weights, self.names))


def build_loss(spec: str, distance_clip: int | None = None) -> CombinedLoss:
    """The loss for a ``--loss`` spec (see `parse_loss`); `distance_clip` is the clip (px) of the distance
    maps ``dtbce`` receives (``--distance-clip``; default `boneseg.data.masks.DIST_CLIP`)."""
    return CombinedLoss(parse_loss(spec), distance_clip)
