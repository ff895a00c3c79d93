"""Multilabel segmentation losses by name and weight: ``bce``, ``dice``, ``bce+dice``, ``0.3*bce+0.7*dice``.

Every term treats the 29 classes as independent sigmoid channels (overlapping bones stay overlapping):

=============  =================================================================================
``bce``        binary cross-entropy on logits, mean over pixels and classes
``dice``       soft Dice per class over the batch, averaged over all 29 classes
``jaccard``    soft IoU per class over the batch
``tversky``    Tversky per class, alpha=0.3 (FP) / beta=0.7 (FN): recall-leaning
``focal_tversky`` ``(1 - Tversky)^gamma`` per class, alpha=0.3 (FP) / beta=0.7 (FN), gamma=0.75 (Abraham &
               Khan's focal Tversky: gamma < 1 keeps pushing classes that are already good)
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

A term may carry its own parameters and a class restriction: ``tversky(alpha=0.2,beta=0.8)``,
``focal(gamma=3)``, ``focal_tversky(gamma=0.5)@wrist``. ``@`` takes a comma-separated list of class names
(``@Scaphoid,Lunate``) and groups (`boneseg.classes.CLASS_GROUPS`: ``fingers``, ``carpals``, ``forearm``,
``wrist`` = carpals + radius + ulna, and the digits ``thumb`` … ``little``); the term then sees those
channels only. The seed team's loss: ``0.4*bce+0.4*dice+0.2*focal_tversky@wrist``.

Terms are computed in float32 whatever the autocast dtype. Terms that need the distance maps (``dtbce``)
take them as ``dist`` (uint8 codes, as the training dataset delivers them from the cache when the loss
asks); without ``dist`` they compute them from the target on the CPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from boneseg.classes import CLASS_GROUPS, CLASS_INDEX, CLASSES
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

    def __init__(self, kind: str, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0, gamma: float = 1.0):
        super().__init__()
        self.kind, self.alpha, self.beta, self.smooth, self.gamma = kind, alpha, beta, smooth, gamma

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
        if self.gamma != 1.0:  # focal Tversky; the floor keeps the gradient of x**gamma (gamma < 1) finite
            return (1 - score).clamp_min(1e-6).pow(self.gamma).mean()
        return (1 - score).mean()


def _overlap(kind: str, **fixed):
    return lambda **params: SoftOverlap(kind, **{**fixed, **params})


LOSSES = {
    "bce": BCE,
    "dice": _overlap("dice"),
    "jaccard": _overlap("jaccard"),
    "tversky": _overlap("tversky"),
    "focal_tversky": _overlap("tversky", gamma=0.75),
    "focal": Focal,
    "lovasz": Lovasz,
    "boundary": BoundaryBCE,
    "dtbce": DistanceBCE,
}
"""Loss term name -> factory, in the order of `boneseg.names.LOSS_NAMES` (the names the CLI lists)."""

PARAMS: dict[str, dict[str, float]] = {
    "tversky": {"alpha": 0.3, "beta": 0.7},
    "focal_tversky": {"alpha": 0.3, "beta": 0.7, "gamma": 0.75},
    "focal": {"gamma": 2.0},
}
"""The parameters a term takes in parentheses, with their defaults."""

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e-?\d+)?"
_TERM = re.compile(
    rf"^\s*(?:({_NUMBER})\s*\*\s*)?([A-Za-z_-]+)\s*(?:\(([^()]*)\))?\s*(?:@\s*([^@]+?))?\s*$", re.IGNORECASE
)


class LossTerm(NamedTuple):
    """One term of a `--loss` spec: weight, name, the classes it sees (None: all, else class names in class
    order) and its parameters (sorted ``(name, value)`` pairs; defaults left out)."""

    weight: float
    name: str
    classes: tuple[str, ...] | None = None
    params: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        params = f"({','.join(f'{k}={v:g}' for k, v in self.params)})" if self.params else ""
        where = f"@{','.join(self.classes)}" if self.classes is not None else ""
        return f"{self.weight:g}*{self.name}{params}{where}"


def select_classes(selection: str, where: str = "--loss") -> tuple[str, ...]:
    """The class names of a comma-separated list of class names and groups (`CLASS_GROUPS`), any case, in
    class order.

    Raises:
        UsageError: an unknown name (closest class or group names first) or an empty list.
    """
    by_lower = {c.lower(): (c,) for c in CLASSES} | {g.lower(): cs for g, cs in CLASS_GROUPS.items()}
    chosen: set[str] = set()
    for raw in str(selection).split(","):
        name = raw.strip()
        if not name:
            raise UsageError(f"{where}: empty class name in @{selection} (write e.g. @wrist or @Scaphoid,Lunate)")
        if name.lower() not in by_lower:
            raise UsageError(
                f"{where}: @{name} is neither a class nor a group{suggest(name, [*CLASS_GROUPS, *CLASSES])}"
            )
        chosen.update(by_lower[name.lower()])
    return tuple(c for c in CLASSES if c in chosen)


def _params(spec: str, part: str, name: str, text: str | None) -> tuple[tuple[str, float], ...]:
    if text is None:
        return ()
    allowed = PARAMS.get(name, {})
    if not allowed:
        raise UsageError(f"--loss {spec!r}: {name} takes no parameters (terms with parameters: {', '.join(PARAMS)})")
    values = dict(allowed)
    given = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or key not in allowed:
            raise UsageError(
                f"--loss {spec!r}: {item.strip()!r} in {part.strip()!r}: expected name=value with a name of "
                f"{', '.join(allowed)}{suggest(key, allowed) if key else ''}"
            )
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < 0 or (key == "gamma" and number == 0):
            raise UsageError(
                f"--loss {spec!r}: {key}={value.strip()} in {part.strip()!r}: must be a finite number "
                f"{'> 0' if key == 'gamma' else '>= 0'}"
            )
        given[key] = values[key] = number
    if "alpha" in values and values["alpha"] + values["beta"] == 0:
        raise UsageError(f"--loss {spec!r}: alpha and beta of {part.strip()!r} are both 0 (nothing to weigh)")
    return tuple(sorted((k, v) for k, v in given.items() if v != allowed[k]))


def parse_loss(spec: str) -> list[LossTerm]:
    """``"0.3*bce+0.7*dice"`` -> ``[LossTerm(0.3, "bce"), LossTerm(0.7, "dice")]`` (weight 1 when omitted,
    ``1e-2`` allowed); ``"0.2*focal_tversky(gamma=0.5)@wrist"`` adds parameters and a class restriction.

    Raises:
        UsageError: malformed spec, unknown term or class (closest names suggested), a parameter the term
            does not take or out of range, or a weight that is not a positive finite number (a 0 weight would
            train on nothing of that term).
    """
    terms = []
    for part in str(spec).split("+"):
        m = _TERM.match(part)
        if not m:
            raise UsageError(
                f"--loss {spec!r}: cannot read term {part.strip()!r} (write e.g. 0.3*bce+0.7*dice or "
                "0.2*focal_tversky@wrist)"
            )
        weight, name = float(m.group(1)) if m.group(1) else 1.0, m.group(2).lower()
        if name not in LOSSES:
            raise UsageError(f"--loss {spec!r}: unknown loss {name!r}{suggest(name, LOSSES)}")
        if not 0 < weight < math.inf:
            raise UsageError(
                f"--loss {spec!r}: term {part.strip()!r} weighs {weight:g}: a weight must be a positive "
                "finite number (leave out a term you do not want)"
            )
        params = _params(spec, part, name, m.group(3))
        classes = select_classes(m.group(4), f"--loss {spec!r}") if m.group(4) else None
        if classes is not None and len(classes) == len(CLASSES):
            classes = None  # every class: the same as no restriction
        terms.append(LossTerm(weight, name, classes, params))
    return terms


class CombinedLoss(nn.Module):
    """A weighted sum of named terms; `forward(logits, target)` with target in {0, 1} of any dtype."""

    def __init__(self, terms: list[LossTerm], distance_clip: int | None = None):
        super().__init__()
        terms = [t if isinstance(t, LossTerm) else LossTerm(*t) for t in terms]
        self.spec = terms
        self.weights = [t.weight for t in terms]
        self.names = [t.name for t in terms]
        self.classes = [None if t.classes is None else [CLASS_INDEX[c] for c in t.classes] for t in terms]
        self.terms = nn.ModuleList(
            DistanceBCE(clip=distance_clip) if t.name == "dtbce" else LOSSES[t.name](**dict(t.params)) for t in terms
        )

    @property
    def needs_distance(self) -> bool:
        """Whether a term needs the distance maps (``dist`` in `forward`)."""
        return any(getattr(t, "needs_distance", False) for t in self.terms)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        dist: torch.Tensor | None = None,
        channels: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """The weighted sum; `channels` are the class indices of the channels given (default all classes in
        order; a wrist model's carpals), so a term restricted to classes sees those among them."""
        logits, target = logits.float(), target.float()
        total = logits.new_zeros(())
        for w, term, classes in zip(self.weights, self.terms, self.classes):
            x, y, d = logits, target, dist
            if classes is not None:
                at = list(classes) if channels is None else [i for i, c in enumerate(channels) if c in classes]
                x, y, d = x[:, at], y[:, at], (d[:, at] if d is not None else None)
            extra = {"dist": d} if getattr(term, "needs_distance", False) else {}
            total = total + w * term(x, y, **extra)
        return total

    def extra_repr(self) -> str:
        return " + ".join(str(t) for t in self.spec)


def build_loss(spec: str, distance_clip: int | None = None) -> CombinedLoss:
    """The loss for a ``--loss`` spec (see `parse_loss`); `distance_clip` is the clip (px) of the distance
    maps ``dtbce`` receives (``--distance-clip``; default `boneseg.data.masks.DIST_CLIP`)."""
    return CombinedLoss(parse_loss(spec), distance_clip)
