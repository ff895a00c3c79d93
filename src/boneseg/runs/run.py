"""A trained run, resolved once: `Run.open` takes a run folder or a checkpoint file, loads it
(``weights_only``) and exposes what every reader needs as typed fields, so that no reader keeps its own
copy of a default: the run's `TrainConfig`, classes, input channels and statistics, training size, its
validation fold, the post-processing rules fitted on it (``postprocess.json`` beside the checkpoint) and its
probability calibration (``calibration.json`` beside the checkpoint, `boneseg.calibration`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from boneseg import calibration as calibration_mod
from boneseg.classes import CLASSES
from boneseg.errors import DataError
from boneseg.io import read_json
from boneseg.runs.checkpoint import load_checkpoint, model_from_state, resolve_checkpoint
from boneseg.runs.config import TrainConfig
from boneseg.runs.files import CALIBRATION, POSTPROCESS


class Run:
    """A run folder or checkpoint file, resolved and loaded once (see the module notes)."""

    def __init__(self, path: str | os.PathLike, checkpoint: Path, state: dict[str, Any]):
        self.path, self.checkpoint = Path(path), checkpoint
        self.saved: dict = dict(state["config"])
        self.config = TrainConfig.from_saved(self.saved)
        self.metrics: dict = dict(state.get("metrics") or {})  # the validation metrics of the saved epoch
        val = state.get("val_images")  # recorded by training (absent in checkpoints of older versions)
        self.val_images: list[str] | None = [str(n) for n in val] if val is not None else None
        self._state: dict[str, Any] | None = state

    @classmethod
    def open(cls, path: str | os.PathLike | Run) -> Run:
        """The run at `path` (a `Run` is returned as is).

        Raises:
            CheckpointError: nothing loadable there.
        """
        if isinstance(path, Run):
            return path
        checkpoint = resolve_checkpoint(path)
        return cls(path, checkpoint, load_checkpoint(checkpoint))

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.saved.get("classes") or CLASSES)

    @property
    def channels(self) -> str:
        return self.config.channels

    @property
    def mean(self) -> list[float]:
        return self.config.mean

    @property
    def std(self) -> list[float]:
        return self.config.std

    @property
    def size(self) -> int:
        return self.config.size

    @property
    def fold(self) -> int:
        return self.config.fold

    @property
    def splits(self) -> str | None:
        return self.config.splits

    def validation(self, samples: Sequence) -> list:
        """This run's validation samples among `samples`: the images its checkpoint records it validated on
        (a checkpoint without the record: its fold of its splits, made again as training made it).

        Raises:
            DataError: a recorded validation image that `samples` lacks (the dataset changed since training).
        """
        if self.val_images is None:
            from boneseg.data.split import run_fold

            return run_fold(samples, self.splits, self.config.folds, self.config.seed, self.fold)[1]
        names = {s.name for s in samples}
        missing = [n for n in self.val_images if n not in names]
        if missing:
            raise DataError(
                f"{self.path}: {len(missing)} of its {len(self.val_images)} validation images are not in the "
                f"dataset, e.g. {missing[0]} (the dataset changed since training)"
            )
        wanted = set(self.val_images)
        return [s for s in samples if s.name in wanted]

    @cached_property
    def postprocess_rules(self) -> dict | None:
        """The ``postprocess.json`` document beside the checkpoint (`boneseg.workflows.validation.fit_postprocess`),
        None when there is none."""
        path = self.rules_path
        return read_json(path) if path.is_file() else None

    @property
    def rules_path(self) -> Path:
        return self.checkpoint.parent / POSTPROCESS

    @cached_property
    def calibration(self) -> calibration_mod.Calibration | None:
        """The ``calibration.json`` beside the checkpoint (`boneseg.calibration`), None when there is none.

        Raises:
            DataError: a file that is not a valid calibration.
        """
        path = self.checkpoint.parent / CALIBRATION
        return calibration_mod.read(path) if path.is_file() else None

    def model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The model in eval mode on `device`, weights loaded (the run then lets go of its copy of them)."""
        state = self._state if self._state is not None else load_checkpoint(self.checkpoint)
        self._state = None
        return model_from_state(state, device)
