"""The per-image steps around the models, run by `boneseg.inference.pipeline.ImageStream` for every job that
predicts (predict, tta, fit_postprocess, oof), so all score the same thing: the FiLM metadata of the image's
patient (``--meta film`` models) and the wrist second stage."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import torch

from boneseg.data.layout import Sample
from boneseg.errors import BonesegWarning
from boneseg.inference.predictor import InputPlan, Item, Predictor, load_models


class ImageStages:
    """Set up once per run, used as a context (leaving it clears the FiLM metadata it set); call `before`
    an image's prediction and `after` it."""

    def __init__(
        self,
        predictor: Predictor,
        meta: str | os.PathLike | None = None,
        wrist_model: str | os.PathLike | None = None,
        trust_model: bool = False,
    ):
        """`meta`: a metadata file or a folder it is found from (`boneseg.modelling.heads.meta_table`), used only when
        a model (the wrist model included) has FiLM. `wrist_model`: a wrist checkpoint (`boneseg.data.wrist`) whose
        carpal predictions, on the crop around the first stage's carpals, replace the first stage's.

        Raises:
            UsageError: a `wrist_model` that is not a wrist second-stage model (``train --wrist``).
        """
        from boneseg.errors import UsageError
        from boneseg.modelling import heads

        self.wrist = None
        loaded = list(predictor.models)
        if wrist_model is not None:
            from boneseg.inference.wrist import WristStage

            lm = load_models([wrist_model], predictor.device, trust_model=trust_model)[0]
            if not lm.config.wrist:
                raise UsageError(
                    f"--wrist-model {wrist_model}: not a wrist second-stage model (train one with train --wrist)"
                )
            self.wrist = WristStage(lm, predictor.device)
            loaded.append(lm)
        models = [heads.unwrap(lm.model) for lm in loaded]  # under --compile too
        self.film: list[Any] = [m for m in models if getattr(m, "wants_meta", False)]
        self.table = heads.meta_table(meta) if self.film and meta is not None else {}
        if self.film and not self.table:
            warnings.warn(
                "a FiLM (--meta film) model runs without patient metadata (no meta_data.xlsx found; "
                "give --meta FILE): every image gets the no-metadata vector",
                BonesegWarning,
                stacklevel=2,
            )

    def __enter__(self) -> ImageStages:
        return self

    def __exit__(self, *exc) -> None:
        for model in self.film:
            model.default_meta = None

    def plan(self, plan: InputPlan) -> InputPlan:
        """The inputs the data loader must prepare: the wrist stage also needs the image at its own size."""
        return dataclasses.replace(plan, original=True) if self.wrist is not None else plan

    def before(self, sample: Sample) -> None:
        """Give FiLM models the metadata of `sample`'s patient (the no-metadata vector when unknown)."""
        vec = self.table.get(sample.patient)
        for model in self.film:
            model.default_meta = torch.from_numpy(vec)[None] if vec is not None else None

    def after(self, probs: torch.Tensor, item: Item, shared: bool = False) -> torch.Tensor:
        """The first stage's (29, H, W) probabilities refined by the wrist stage. `shared`: `probs` may be
        a cached view that other policies reuse, so it is copied before being changed."""
        if self.wrist is None:
            return probs
        return self.wrist.refine(probs.clone() if shared else probs, item.inputs[item.shape], item.side)
