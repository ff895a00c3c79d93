"""The one image stream every prediction goes through: images (+ labels) -> predictor -> stages -> probabilities.

`PredictOptions` is how the models run (device, sizes, sliding window, batch, precision, ensemble weights,
calibration, the per-image stages, loader processes): the one source of those defaults for `predict`, `tta`
(`boneseg.workflows.validation.evaluate_policies`), `fit_postprocess` and `oof`. `ImageStream` reads the
images in background processes (pinned memory for the GPU), runs each through the `Predictor` and the
`ImageStages` (FiLM metadata before, the wrist second stage after) and hands out one image at a time, so
memory stays flat; what becomes of the probabilities (a CSV, Dice curves, masks) is the caller's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from boneseg import calibration as calibration_mod
from boneseg.calibration import Calibration
from boneseg.data.dataset import Loader
from boneseg.data.layout import Sample, read_image
from boneseg.errors import UsageError, check_workers
from boneseg.inference.exported import Exported
from boneseg.inference.predictor import InputPlan, Item, Predictor, Spread, ViewCache, check_weights
from boneseg.inference.stages import ImageStages
from boneseg.inference.tta import Policy
from boneseg.progress import SILENT, Reporter, Task
from boneseg.runs.run import Run

Models = Predictor | Sequence[str | os.PathLike | Run | Exported]


@dataclass(frozen=True)
class PredictOptions:
    """How the models run, whatever is done with their probabilities.

    Args:
        weights: ensemble weights, one per model (default equal). device: ``auto``, ``cpu``, ``cuda[:N]``.
        size: resize-mode side (default: each model's training size); with sliding, the square resolution the
            window slides over. window: sliding tile side (default: the model's training crop, else its size).
        overlap: sliding overlap fraction. batch_size: tiles per forward pass (sliding).
        amp: fp16 autocast (CUDA only). compile: ``torch.compile`` each model (`boneseg.modelling.compile`).
        workers: background image-loading processes (0: in this process).
        calibration: ``auto`` (each model's own: a run folder's ``calibration.json``, an export's sidecar),
            ``none``, or a calibration file (`boneseg.calibration`) applied to the final probabilities.
        wrist_model: a wrist second-stage checkpoint (`boneseg.inference.stages`).
        meta: metadata file for FiLM models (default: the caller's, e.g. ``meta_data.xlsx`` found from the data).
        trust_model: load TorchScript exports, which run code of their author's choosing (refused otherwise).
    """

    weights: Sequence[float] | None = None
    device: str = "auto"
    size: int | None = None
    window: int | None = None
    overlap: float = 0.5
    batch_size: int = 4
    amp: bool = True
    compile: bool = False
    workers: int = 2
    calibration: str | os.PathLike | None = "auto"
    wrist_model: str | os.PathLike | None = None
    meta: str | os.PathLike | None = None
    trust_model: bool = False

    def replace(self, **changes: Any) -> PredictOptions:
        """A copy with `changes`."""
        return dataclasses.replace(self, **changes)

    def check(self, models: Models) -> None:
        """Raise `UsageError` for an impossible value (before any model or image is read)."""
        Predictor.check_options(self.size, self.window, self.overlap, self.batch_size)
        check_workers(self.workers)
        if not isinstance(models, Predictor):
            check_weights(self.weights, len(models))

    def uncalibrated(self, why: str) -> PredictOptions:
        """A copy that applies no calibration, for a job that predicts raw probabilities (`why` says why):
        ``auto`` and ``none`` both mean none there.

        Raises:
            UsageError: a calibration file (it would not be applied).
        """
        if str(self.calibration).lower() not in ("auto", "none"):
            raise UsageError(f"--calibration {self.calibration}: not applied here ({why})")
        return self.replace(calibration="none")

    @property
    def own_calibration(self) -> bool:
        """Whether each model applies its own calibration (``calibration="auto"``)."""
        return str(self.calibration).lower() == "auto"

    def final_calibration(self) -> Calibration | None:
        """The calibration file's contents (applied to the final probabilities), None for ``auto``/``none``.

        Raises:
            DataError: an unreadable or invalid calibration file.
        """
        return calibration_mod.resolve(self.calibration)

    def predictor(
        self, models: Models, device: str | torch.device | None = None, final: Calibration | None = None
    ) -> Predictor:
        """The `Predictor` of `models` (checkpoints, run folders, exports, or a ready one, given `final`) on
        `device` (default: `self.device`); `final`: `final_calibration()` when already read."""
        final = final if final is not None else self.final_calibration()
        if isinstance(models, Predictor):
            if final is not None:
                models.calibration = final
            return models
        return Predictor.from_checkpoints(
            models,
            self.weights,
            self.device if device is None else device,
            calibrated=self.own_calibration,
            trust_model=self.trust_model,
            size=self.size,
            window=self.window,
            overlap=self.overlap,
            batch_size=self.batch_size,
            amp=self.amp,
            compile=self.compile,
            calibration=final,
        )

    def stages(self, predictor: Predictor, meta: str | os.PathLike | None = None) -> ImageStages:
        """The per-image stages around `predictor`; `meta`: where metadata is found when `self.meta` is None."""
        return ImageStages(predictor, self.meta or meta, self.wrist_model, self.trust_model)


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> `Item` (image resized to what the policies need; ground truth with `labels`)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        plan: InputPlan,
        labels: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ):
        self.samples, self.plan, self.labels, self.cache_dir = list(samples), plan, labels, cache_dir

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Item:
        s = self.samples[i]
        if self.labels:
            from boneseg.data.masks import MaskCache, build_sample

            cached = MaskCache(self.cache_dir).get(s) if self.cache_dir else build_sample(s)
            item = self.plan.item(i, s.image_name, cached.image, s.suffix_side)
            item.masks = torch.from_numpy(cached.masks)
            return item
        return self.plan.item(i, s.image_name, read_image(s.image), s.suffix_side)


def make_loader(dataset: ImageDataset, workers: int, device: torch.device) -> Loader:
    """One item at a time, read `workers`-wide ahead in background processes (0: in this process)."""
    check_workers(workers)
    return Loader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )


class PredictedImage:
    """One image of an `ImageStream`: its `item` (inputs, ground truth with labels) and `sample`; each
    `probabilities` call predicts it under a policy (views shared between policies are computed once when
    the stream keeps them)."""

    def __init__(self, item: Item, sample: Sample, predictor: Predictor, stages: ImageStages, keep_views: bool):
        self.item, self.sample = item, sample
        self._predictor, self._stages = predictor, stages
        self._cache = ViewCache(keep=keep_views)

    def probabilities(self, policy: Policy, spread: Spread | None = None) -> torch.Tensor:
        """(29, H, W) probabilities under `policy`: the predictor's, refined by the stages. `spread` collects
        the views' and models' disagreement (`Spread`). Read-only when the stream keeps views."""
        self._cache.used = set()
        probs = self._predictor.predict(self.item, policy, self._cache, spread=spread)
        return self._stages.after(probs, self.item, shared=self._cache.keep)

    @property
    def seconds(self) -> float:
        """Device seconds of the views the last `probabilities` call used (the hand-side pass included)."""
        c = self._cache
        return c.side_seconds + sum(c.seconds[k] for k in c.used - c.side_keys)


class ImageStream:
    """Images (+ labels) -> predictor -> stages, one image at a time, as a context::

        with ImageStream(samples, predictor, stages, [policy]) as stream:
            for image in stream:
                probs = image.probabilities(policy)

    Args:
        samples: the images, in the order they are handed out.
        predictor: the models. stages: the per-image steps around them (FiLM metadata, wrist second stage);
            leaving the context leaves them.
        policies: every policy the caller will ask for (the loader prepares their inputs).
        workers: background image-loading processes. labels: also read each image's ground truth
            (``image.item.masks``, from the mask cache `cache_dir` when given).
        keep_views: keep each view for the image's other policies (scoring several policies).
        reporter, label: a progress task titled `label`, one step per image handed out.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        predictor: Predictor,
        stages: ImageStages,
        policies: Sequence[Policy],
        *,
        workers: int = 2,
        labels: bool = False,
        cache_dir: str | os.PathLike | None = None,
        keep_views: bool = False,
        reporter: Reporter = SILENT,
        label: str = "predict",
    ):
        self.samples, self.predictor, self.stages = list(samples), predictor, stages
        self.keep_views = keep_views
        plan = stages.plan(predictor.plan(policies))
        self.loader = make_loader(ImageDataset(self.samples, plan, labels, cache_dir), workers, predictor.device)
        self._reporter, self._label = reporter, label
        self._task: Task | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __enter__(self) -> ImageStream:
        self._task = self._reporter.task(self._label, len(self.samples), "img")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stages.__exit__(*exc)
        finally:
            if self._task is not None:
                self._task.close()

    def __iter__(self) -> Iterator[PredictedImage]:
        for item in self.loader:
            sample = self.samples[item.index]
            self.stages.before(sample)
            yield PredictedImage(item, sample, self.predictor, self.stages, self.keep_views)
            if self._task is not None:
                self._task.advance()
