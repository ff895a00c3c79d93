"""`boneseg distill`: one student trained on a teacher ensemble's soft probabilities.

The teacher is given as probability folders of the train images (``oof --save-probs``: each image
predicted by the fold model that did not train on it), optionally with a ``select`` plan whose
per-class weights combine them (the soft vote's mean, `boneseg.probs.weighted_mean`), and optionally
the same models' folders over the test images (``predict --save-probs``) as soft pseudo-labels. The
resolved folders and weights go into the run's `TrainConfig` (``teacher``, ``teacher_test``,
``teacher_weights``), so the run records exactly what it learnt from and a resume reads the same;
training is `boneseg.engine.train.train` (every option of ``train``), and the student is a normal run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from boneseg.classes import NUM_CLASSES
from boneseg.engine.train import train
from boneseg.errors import DataError, UsageError
from boneseg.io import read_json
from boneseg.progress import SILENT, Reporter
from boneseg.runs.config import TrainConfig
from boneseg.workflows.ensemble import read_per_class


def _plan_inputs(plan: Path, doc: dict) -> list[str]:
    """A select plan's inputs: each as written, or relative to the plan's folder when only that exists."""
    out = []
    for p in doc["inputs"]:
        given = Path(str(p))
        beside = plan.parent / given
        out.append(str(given if given.exists() or given.is_absolute() or not beside.exists() else beside))
    return out


def resolve_teacher(
    teacher: Sequence[str | os.PathLike], teacher_test: Sequence[str | os.PathLike] = ()
) -> tuple[list[str], list[str], list[list[float]] | None]:
    """(train folders, test folders, per-class weights or None) of a teacher given as probability folders
    and at most one ``select`` plan (a JSON file): the plan alone names its folders, in its order; with
    folders beside it, those are its inputs (checked as ``ensemble --per-class`` checks them).

    Raises:
        UsageError: no teacher, two plans. DataError: a plan that is not a soft select plan of these inputs.
    """
    given = [str(t) for t in teacher]
    if not given:
        raise UsageError("--teacher: give the train images' probability folders (or a select plan of them)")
    plans = [t for t in given if Path(t).is_file()]
    folders = [t for t in given if t not in plans]
    if len(plans) > 1:
        raise UsageError(f"--teacher: one plan at most, got {plans[0]} and {plans[1]}")
    weights = None
    if plans:
        plan = Path(plans[0])
        doc = read_json(plan)
        if not isinstance(doc, dict) or not isinstance(doc.get("per_class"), dict):
            raise DataError(f"--teacher {plan}: not a select plan (a JSON file with 'per_class' weights)")
        if not folders:
            if not isinstance(doc.get("inputs"), list):
                raise DataError(f"--teacher {plan}: the plan names no inputs; give its folders too, in its order")
            folders = _plan_inputs(plan, doc)
        per = read_per_class(plan, folders, "soft")
        w = np.ones((NUM_CLASSES, len(folders)))
        for c, row in per.items():
            w[c] = row
        used = [bool(w[:, i].any()) for i in range(w.shape[1])]
        weights = w.tolist()
        if not all(used):  # folders no class uses are not needed at all
            folders = [f for f, u in zip(folders, used) if u]
            weights = w[:, used].tolist()
            teacher_test = (
                [t for t, u in zip(teacher_test, used) if u] if len(teacher_test) == len(used) else teacher_test
            )
    return folders, [str(t) for t in teacher_test], weights


def distill_config(
    config: TrainConfig | dict,
    teacher: Sequence[str | os.PathLike] = (),
    teacher_test: Sequence[str | os.PathLike] = (),
    teacher_weight: float | None = None,
) -> dict:
    """`config` (every `train` option) with the teacher resolved into its ``teacher`` fields (see `distill`)."""
    cfg = dict(config) if not isinstance(config, TrainConfig) else dict(vars(config))
    teacher, teacher_test = teacher or (), teacher_test or ()
    if teacher:
        folders, tests, weights = resolve_teacher(teacher, teacher_test)
        cfg.update(teacher=folders, teacher_test=tests, teacher_weights=weights)
    elif teacher_test:
        raise UsageError("--teacher-test needs --teacher (the same models' probabilities of the train images)")
    elif not cfg.get("resume") and not cfg.get("teacher"):
        resolve_teacher(teacher)  # the one "no teacher" message
    if teacher_weight is not None:
        cfg["teacher_weight"] = teacher_weight
    return cfg


def distill(
    config: TrainConfig | dict,
    teacher: Sequence[str | os.PathLike] = (),
    teacher_test: Sequence[str | os.PathLike] = (),
    teacher_weight: float | None = None,
    reporter: Reporter = SILENT,
) -> dict:
    """Train a student on a teacher's probabilities; returns `train`'s summary.

    Args:
        config: every `train` option (a `TrainConfig` or a dict of its fields); on ``resume`` (or with a
            config that holds a teacher) the run's teacher applies and `teacher` may be left out.
        teacher: probability folders of the train images and/or one ``select`` plan (see `resolve_teacher`).
        teacher_test: probability folders of the test images, one per teacher folder in the same order.
        teacher_weight: the teacher's share w of a labelled image's target, ``(1 - w) * label + w * teacher``
            (every term of the run's loss is computed against it; unlabelled test images use the teacher
            alone); None: the run's (`TrainConfig.teacher_weight`, 0.5, for a new one).
        reporter: progress, as for `train`.

    Raises:
        UsageError, DataError: no teacher, a bad plan, missing or mismatched probabilities.
    """
    return train(distill_config(config, teacher, teacher_test, teacher_weight), reporter)
