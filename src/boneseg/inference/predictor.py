"""The predictor: one or more models -> full-resolution probabilities of one image under a TTA policy.

Every job that predicts calls `Predictor.predict` through `boneseg.inference.pipeline.ImageStream`; scoring
several policies (`tta`) keeps the per-view results in a `ViewCache` so that policies sharing a view compute
it once.

Hand side: a model trained with hand-side unification (config ``unify_side`` "R" or "L") saw every hand
mirrored to that side. An image is mirrored before such a model (and its prediction mirrored back) when
its side differs. The side comes from the file name's ``_L``/``_R`` suffix; when there is none, the first
unified model predicts the image and its mirror (resize mode) and the view whose thumb (finger-1..3) and
little finger (finger-16..19) are arranged as in training wins (thumb left of the little finger for
"R"); when both or neither are, the more confident view wins (mean probability of its foreground
pixels). Horizontal-flip TTA is ignored for unified models (their mirror view is the other hand side).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from boneseg.calibration import Calibration
from boneseg.classes import CLASSES, NUM_CLASSES
from boneseg.data.layout import resize_image, side_from_masks
from boneseg.data.transforms import check_side
from boneseg.engine.distributed import resolve_device
from boneseg.errors import CheckpointError, UsageError
from boneseg.inference.exported import Exported, open_model
from boneseg.inference.sliding import alloc, check_window, sliding_window
from boneseg.inference.tta import Policy, hflip, snap, unflip
from boneseg.runs.config import TrainConfig
from boneseg.runs.run import Run


@dataclass
class LoadedModel:
    """A model in eval mode with its training config, ensemble weight and the `Run` (or `Exported`) it came
    from. `model` maps a normalised batch to logits, or when `probabilities` (an exported graph, which resizes
    and applies the sigmoid inside) ``(batch, (height, width))`` to probabilities at that size: the one
    difference between backends the predictor sees."""

    model: Any
    config: TrainConfig
    source: str = ""
    weight: float = 1.0
    run: Run | Exported | None = None
    probabilities: bool = False
    calibration: Calibration | None = None  # applied to this model's probabilities before the ensemble mean

    @property
    def unify(self) -> str | None:
        """The hand side every image was mirrored to in training, if any."""
        side = self.config.unify_side
        return side if side in ("L", "R") else None


def check_weights(weights: Sequence[float] | None, n_models: int) -> list[float]:
    """The per-model weights (default all 1.0), checked: one per model, finite, >= 0, positive sum.

    Raises:
        UsageError: no model, a count that differs from the model count, a negative or non-finite weight.
    """
    if n_models < 1:
        raise UsageError("give at least one model with -m CKPT")
    weights = [float(w) for w in weights] if weights else [1.0] * n_models
    if len(weights) != n_models:
        raise UsageError(f"--weights: {len(weights)} weight(s) for {n_models} model(s)")
    if not all(0 <= w < math.inf for w in weights) or sum(weights) <= 0:  # also refuses nan
        raise UsageError(f"--weights must be finite, non-negative with a positive sum, got {weights}")
    return weights


def load_models(
    checkpoints: Sequence[str | os.PathLike | Run | Exported],
    device: torch.device,
    weights: Sequence[float] | None = None,
    calibrated: bool = False,
    trust_model: bool = False,
) -> list[LoadedModel]:
    """Load each checkpoint (file, run folder, opened `Run`) or export (`boneseg.inference.exported`) with its
    own config; `calibrated`: each with its own calibration (a run folder's ``calibration.json``, an export's
    sidecar), if any; a TorchScript export, which runs its author's code, only with `trust_model`.

    Raises:
        UsageError: no checkpoint, or a weight count that differs from the checkpoint count / a negative weight.
        CheckpointError: a checkpoint that cannot be loaded, or whose classes are not the 29 bones.
    """
    weights = check_weights(weights, len(checkpoints))
    out = []
    for ckpt, w in zip(checkpoints, weights):
        run = open_model(ckpt, trust_model)
        if isinstance(run, Run) and run.classes != tuple(CLASSES):
            raise CheckpointError(
                f"{run.path}: its {len(run.classes)} classes ({', '.join(run.classes[:3])}, …) are not "
                f"the {NUM_CLASSES} competition classes in their order"
            )
        probabilities = isinstance(run, Exported) and run.probabilities
        own = run.calibration if calibrated else None
        out.append(LoadedModel(run.model(device), run.config, str(run.path), float(w), run, probabilities, own))
    return out


@dataclass
class Item:
    """One image ready for the device: uint8 inputs keyed by (height, width), plus what predict needs."""

    index: int
    name: str
    shape: tuple[int, int]
    side: str | None
    inputs: dict[tuple[int, int], torch.Tensor]
    masks: torch.Tensor | None = None  # (29, H, W) bool ground truth (a stream with labels)

    def pin_memory(self) -> Item:
        """Page-locked inputs, for asynchronous copies to the GPU (called by the DataLoader)."""
        self.inputs = {k: v.pin_memory() for k, v in self.inputs.items()}
        return self


@dataclass(frozen=True)
class InputPlan:
    """The resized copies of an image a set of policies needs (computed in data-loader workers)."""

    squares: frozenset[int] = frozenset()  # resize mode: square sides
    side_squares: frozenset[int] = frozenset()  # side pass (images without a side suffix)
    sliding_scales: frozenset[float] = frozenset()
    sliding_base: int | None = None  # None: the image's own size
    original: bool = False  # also the image at its own size (wrist second stage)

    def sizes(self, shape: tuple[int, int], side: str | None) -> set[tuple[int, int]]:
        out = {(s, s) for s in self.squares}
        if self.original:
            out.add((shape[0], shape[1]))
        if side is None:
            out |= {(s, s) for s in self.side_squares}
        base = (self.sliding_base, self.sliding_base) if self.sliding_base else shape
        out |= {(round(base[0] * s), round(base[1] * s)) for s in self.sliding_scales}
        return out

    def item(self, index: int, name: str, image: np.ndarray, side: str | None) -> Item:
        inputs = {
            hw: torch.from_numpy(np.ascontiguousarray(resize_image(image, hw)))
            for hw in sorted(self.sizes(image.shape, side))
        }
        return Item(index, name, tuple(image.shape), side, inputs)


class ViewCache:
    """Per-image results of single views ``(model, sliding, scale, flip)``; `keep` retains them for
    reuse by several policies, otherwise each is handed out once."""

    def __init__(self, keep: bool = False):
        self.keep = keep
        self.views: dict[tuple, torch.Tensor] = {}
        self.side: str | None = None
        self.seconds: dict[tuple, float] = {}  # compute time of each view (device-synchronised)
        self.side_seconds = 0.0  # time of the hand-side pass
        self.side_keys: set[tuple] = set()  # its views (reused by the main pass when they match)
        self.used: set[tuple] = set()  # views handed out (reset by the caller)

    def take(self, key):
        return self.views.get(key) if self.keep else self.views.pop(key, None)


def _other(side: str) -> str:
    return "L" if side == "R" else "R"


class Predictor:
    """Models + inference settings; `predict` gives (29, H, W) probabilities of one image.

    Args:
        models: loaded models (weights are normalised to sum to 1).
        device: where the models live.
        size: resize-mode side (default: each model's training ``size``); with sliding, the square
            resolution the window slides over (default: the image's own).
        window: sliding tile side (default: each model's training ``crop``, else its ``size``).
        overlap: sliding overlap fraction. batch_size: tiles (sliding) per forward.
        amp: fp16 autocast on CUDA.
        compile: run each torch model through ``torch.compile`` (`boneseg.modelling.compile`).
        calibration: applied to the final probabilities (after each model's own, `LoadedModel.calibration`).
    """

    def __init__(
        self,
        models: Sequence[LoadedModel],
        device: torch.device | str = "cpu",
        size: int | None = None,
        window: int | None = None,
        overlap: float = 0.5,
        batch_size: int = 4,
        amp: bool = True,
        compile: bool = False,
        calibration: Calibration | None = None,
    ):
        if not models:
            raise UsageError("give at least one model with -m CKPT")
        for lm in models:
            if lm.config.wrist:
                raise UsageError(
                    f"{lm.source}: a wrist second-stage model (train --wrist) predicts wrist crops, not whole "
                    "images; give it as --wrist-model, with a whole-image model as -m"
                )
        self.models = list(models)
        total = sum(m.weight for m in self.models)
        self.weights = [m.weight / total for m in self.models]
        self.device = torch.device(device)
        self.check_options(size, window, overlap, batch_size)
        self.size, self.window, self.overlap, self.batch_size = size, window, overlap, batch_size
        for lm in self.models:
            check_window(self.window_of(lm), overlap)
            if isinstance(lm.run, Run):  # an export's networks were checked when exported
                from boneseg.modelling.models import check_arch_side

                check_arch_side(lm.config.arch, self.size_of(lm), "--size")
                check_arch_side(lm.config.arch, self.window_of(lm), "--window")
        self.amp = amp and self.device.type == "cuda"
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            for lm in self.models:
                if isinstance(lm.model, torch.nn.Module):
                    lm.model.to(memory_format=torch.channels_last)
        if compile:
            from boneseg.modelling.compile import compile_model

            warned: set[str] = set()  # one warning for the ensemble, not one per model
            for lm in self.models:
                lm.model = compile_model(lm.model, warned)
        self.unified = [i for i, lm in enumerate(self.models) if lm.unify]
        self.calibration = calibration

    @property
    def calibrations(self) -> dict[str, Any] | None:
        """What `predict` records about the calibrations applied (None when none is)."""
        own = [lm.calibration.record() if lm.calibration is not None else None for lm in self.models]
        if self.calibration is None and not any(own):
            return None
        return {"models": own, "final": self.calibration.record() if self.calibration is not None else None}

    @staticmethod
    def check_options(
        size: int | None = None, window: int | None = None, overlap: float = 0.5, batch_size: int = 4
    ) -> None:
        """Raise `UsageError` for impossible sizes, window, overlap or batch size (before any model is loaded)."""
        if size is not None:
            check_side(size, "--size")
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        if window is not None:
            check_window(window, overlap)
        elif not 0.0 <= overlap < 1.0:
            raise UsageError(f"--overlap must be in [0, 1), got {overlap}")

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: Sequence[str | os.PathLike | Run | Exported],
        weights: Sequence[float] | None = None,
        device: str | torch.device = "auto",
        calibrated: bool = False,
        trust_model: bool = False,
        **kwargs,
    ) -> Predictor:
        """Load `checkpoints` (`load_models`; `calibrated`: each with its own calibration) on `device`."""
        dev = resolve_device(device)
        return cls(load_models(checkpoints, dev, weights, calibrated, trust_model), dev, **kwargs)

    # -- sizes ------------------------------------------------------------------------------------
    def size_of(self, lm: LoadedModel) -> int:
        return self.size or lm.config.size

    def window_of(self, lm: LoadedModel) -> int:
        return self.window or lm.config.crop or self.size_of(lm)

    def plan(self, policies: Sequence[Policy]) -> InputPlan:
        """The resized inputs `policies` need, for the data-loader workers.

        Raises:
            UsageError: a view smaller than a model's architecture runs at (`boneseg.modelling.models.MIN_SIDE`).
        """
        squares, scales = set(), set()
        for p in policies:
            for lm in self.models:
                if p.sliding:
                    scales |= set(p.scales)
                else:
                    squares |= {snap(self.size_of(lm) * s) for s in p.scales}
                    if isinstance(lm.run, Run):
                        from boneseg.modelling.models import check_arch_side

                        for s in p.scales:
                            check_arch_side(lm.config.arch, snap(self.size_of(lm) * s), f"the --scales {s:g} view")
        side = frozenset({snap(self.size_of(self.models[self.unified[0]]))}) if self.unified else frozenset()
        return InputPlan(frozenset(squares), side, frozenset(scales), self.size)

    # -- views ------------------------------------------------------------------------------------
    def _input(self, lm: LoadedModel, item: Item, hw: tuple[int, int]) -> torch.Tensor:
        from boneseg.data.transforms import normalize

        x = normalize(item.inputs[hw].to(self.device, non_blocking=True)[None], lm.config)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _probabilities(self, lm: LoadedModel, x: torch.Tensor, hw: tuple[int, int], flip: bool = False) -> torch.Tensor:
        """Probabilities at `hw` of the batch `x` (seen mirrored when `flip`, the result mirrored back): the
        logits resized bilinearly to `hw`, then the sigmoid (an exported graph does both inside, given `hw`)."""
        x = hflip(x) if flip else x
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            y = (lm.model(x, hw) if lm.probabilities else lm.model(x)).to(self.dtype)
        y = unflip(y) if flip else y
        if lm.probabilities:
            return y
        if y.shape[-2:] != hw:
            y = F.interpolate(y, hw, mode="bilinear", align_corners=False)
        return y.sigmoid_()

    def view_size(self, m: int, item: Item, sliding: bool, scale: float) -> tuple[int, int]:
        """The input size of a view: the model's square (snapped) or the sliding base, times `scale`."""
        if sliding:
            base = (self.size, self.size) if self.size else item.shape
            return round(base[0] * scale), round(base[1] * scale)
        s = snap(self.size_of(self.models[m]) * scale)
        return s, s

    def _compute(
        self, m: int, item: Item, sliding: bool, hw: tuple[int, int], flips: Sequence[bool]
    ) -> list[torch.Tensor]:
        lm, (h, w) = self.models[m], item.shape
        if sliding:
            out = []
            for f in flips:
                x = self._input(lm, item, hw)[0]
                p = sliding_window(
                    lambda b: self._probabilities(lm, b, (b.shape[-2], b.shape[-1])),
                    hflip(x) if f else x,
                    self.window_of(lm),
                    self.overlap,
                    self.batch_size,
                    self.dtype,
                )
                p = unflip(p) if f else p
                if p.shape[-2:] != (h, w):
                    p = F.interpolate(p[None], (h, w), mode="bilinear", align_corners=False)[0]
                out.append(p)
            return out
        x = self._input(lm, item, hw)
        out = []
        # one forward per view: results do not depend on which views are asked together
        return [self._probabilities(lm, x, (h, w), f)[0] for f in flips]

    def views(
        self, m: int, item: Item, sliding: bool, scale: float, flips: Sequence[bool], cache: ViewCache | None = None
    ) -> list[torch.Tensor]:
        """Image-frame probabilities (29, H, W) of model `m` for each flip at one scale."""
        cache = cache or ViewCache()
        hw = self.view_size(m, item, sliding, scale)
        keys = {f: (m, sliding, hw, f) for f in flips}
        found = {f: cache.take(keys[f]) for f in flips}
        todo = [f for f in flips if found[f] is None]
        if todo:
            t0 = time.perf_counter()
            found.update(zip(todo, self._compute(m, item, sliding, hw, todo)))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            for f in todo:
                cache.seconds[keys[f]] = (time.perf_counter() - t0) / len(todo)
            if cache.keep:
                cache.views.update({keys[f]: found[f] for f in todo})
        cache.used.update(keys.values())
        return [found[f] for f in flips]

    # -- hand side --------------------------------------------------------------------------------
    def image_side(self, item: Item, cache: ViewCache) -> str | None:
        """The hand side used for unified models (see the module notes); None without unified models."""
        if item.side in ("L", "R") or not self.unified:
            return item.side
        if cache.side is None:
            m = self.unified[0]
            unify = self.models[m].unify
            assert unify is not None  # self.unified lists the unified models
            used = set(cache.used)
            plain, mirrored = self.views(m, item, False, 1.0, (False, True), cache)
            cache.used = used
            hw = self.view_size(m, item, False, 1.0)
            cache.side_keys = {(m, False, hw, f) for f in (False, True)}
            cache.side_seconds = sum(cache.seconds[k] for k in cache.side_keys)

            def score(p, flipped):
                seen = side_from_masks(p)
                model_side = (_other(seen) if flipped else seen) if seen else None
                fg = p[p > 0.5]
                return (model_side == unify, float(fg.float().mean()) if fg.numel() else 0.0)

            cache.side = _other(unify) if score(mirrored, True) > score(plain, False) else unify
            if not cache.keep:  # keep both for the main pass, which takes the one it needs
                cache.views.update(zip(sorted(cache.side_keys, key=lambda k: k[-1]), (plain, mirrored)))
        return cache.side

    def applied(self, policy: Policy) -> Policy:
        """`policy` as these models run it: without the flip when every model is hand-side unified (their
        mirror view is the other hand, see `flips`)."""
        if policy.hflip and len(self.unified) == len(self.models):
            return Policy(policy.sliding, False, policy.scales)
        return policy

    def flips(self, m: int, item: Item, policy: Policy, cache: ViewCache) -> tuple[bool, ...]:
        unify = self.models[m].unify
        if unify:
            return (self.image_side(item, cache) not in (None, unify),)
        return (False, True) if policy.hflip else (False,)

    # -- the prediction ---------------------------------------------------------------------------
    def predict(
        self, item: Item, policy: Policy, cache: ViewCache | None = None, spread: Spread | None = None
    ) -> torch.Tensor:
        """(29, H, W) probabilities: per model the mean over its views (calibrated with the model's own
        calibration), then the weighted mean over models (calibrated with `calibration`). `spread`, when given,
        collects the views' and the models' disagreement (`Spread`).

        The result may be a cached view: treat it as read-only."""
        cache = cache or ViewCache()
        total = None
        for m, weight in enumerate(self.weights):
            lm = self.models[m]
            flips = self.flips(m, item, policy, cache)
            mean = None
            scales = list({self.view_size(m, item, policy.sliding, sc): sc for sc in policy.scales}.values())
            if len(scales) * len(flips) == 1 and len(self.weights) == 1 and spread is None:  # one view: no copy
                out = self.views(m, item, policy.sliding, scales[0], flips, cache)[0]
                return self._calibrated(self._calibrated(out, lm.calibration), self.calibration)
            views = 0
            for scale in scales:  # scales that snap to the same input size count once
                for v in self.views(m, item, policy.sliding, scale, flips, cache):
                    if mean is None:
                        mean = alloc((NUM_CLASSES, *item.shape), v.device, v.dtype)
                    mean.add_(v.to(mean.device))
                    if spread is not None:
                        spread.add_view(v)
                    views += 1
            n = len(scales) * len(flips)
            assert mean is not None  # a policy has at least one scale
            if n > 1:
                mean.div_(n)
            mean = self._calibrated(mean, lm.calibration)
            if spread is not None:
                spread.end_model(mean, weight)
            if len(self.weights) == 1:
                return self._calibrated(mean, self.calibration)
            if total is None:
                total = alloc(mean.shape, mean.device, mean.dtype)
            total.add_(mean.to(total.device), alpha=weight)
        assert total is not None  # more than one model
        return self._calibrated(total, self.calibration)

    @staticmethod
    def _calibrated(p: torch.Tensor, calibration: Calibration | None) -> torch.Tensor:
        """`p` calibrated (a new tensor of `p`'s dtype), or `p` itself without a calibration."""
        return p if calibration is None else calibration.apply(p).to(p.dtype)


class Spread:
    """Disagreement of one image's prediction, accumulated by `Predictor.predict`: the standard deviation of
    the probabilities across each model's TTA views (the models' weighted mean of it) and across the
    ensemble's models (weighted), each (29, H, W) in [0, 0.5]; None where there was one view or one model."""

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None
        self._sq: torch.Tensor | None = None
        self._n = 0
        self._tta: torch.Tensor | None = None
        self._models: list[tuple[torch.Tensor, float]] = []
        self.max_views = 0

    def add_view(self, v: torch.Tensor) -> None:
        v = v.float()
        if self._sum is None or self._sq is None:
            self._sum, self._sq = v.clone(), v * v
        else:
            self._sum.add_(v)
            self._sq.addcmul_(v, v)
        self._n += 1

    def end_model(self, mean: torch.Tensor, weight: float) -> None:
        if self._n > 1 and self._sum is not None and self._sq is not None:
            var = (self._sq / self._n - (self._sum / self._n) ** 2).clamp_min_(0)
            std = var.sqrt_().mul_(weight)
            self._tta = std if self._tta is None else self._tta.add_(std)
        self.max_views = max(self.max_views, self._n)
        self._sum = self._sq = None
        self._n = 0
        self._models.append((mean.float(), weight))

    @property
    def tta(self) -> torch.Tensor | None:
        return self._tta

    @property
    def ensemble(self) -> torch.Tensor | None:
        if len(self._models) < 2:
            return None
        mu = sum(w * m for m, w in self._models)
        var = sum(w * (m - mu) ** 2 for m, w in self._models)
        assert isinstance(var, torch.Tensor)  # two or more models
        return var.clamp_min_(0).sqrt_()
