"""`boneseg oof`: out-of-fold predictions from the runs of a K-fold cross-validation.

Each run predicts the validation images of its own saved fold (`Run.validation`); together the runs must
cover every train image exactly once. The result is one submission CSV over all train images (sorted
image order, as `predict` writes) and, optionally, one probability folder in `predict --save-probs`'s
layout: what `analyze --gt`, `ensemble`, `audit` and `calibrate` read. The runs' own post-processing rules
and calibrations are not applied (they were fitted on the very images predicted here).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from boneseg import probs as probs_mod
from boneseg.data.layout import Sample, by_image_name, discover
from boneseg.errors import DataError, UsageError
from boneseg.inference.pipeline import PredictOptions
from boneseg.inference.run import check_probs_dir, predict
from boneseg.inference.tta import DEFAULT_SCALES, Policy
from boneseg.io import (
    atomic_open,
    check_apart,
    check_not_over_inputs,
    check_output,
    is_stdout,
    publish_folder,
    staging_folder,
)
from boneseg.progress import SILENT, Reporter
from boneseg.runs.run import Run
from boneseg.submission import HEADER, csv_rows, format_row


@dataclass
class OofSummary:
    """What `oof` wrote: the image count per run (in the runs' order) and the outputs."""

    images: int
    output: str
    folds: list[dict] = field(default_factory=list)
    probs_dir: str | None = None


def assign_folds(runs: Sequence[Run], samples: Sequence[Sample]) -> list[list[Sample]]:
    """Each run's validation images among `samples`, checked to cover every sample exactly once.

    Raises:
        DataError: a run whose fold holds none of the images, two runs claiming the same image, or
            images no run validates (a fold run missing).
    """
    owner: dict[str, Run] = {}
    parts = []
    for run in runs:
        part = run.validation(samples)
        if not part:
            raise DataError(
                f"{run.path}: its fold {run.fold} holds none of the {len(samples)} train images "
                "(a run of another dataset?)"
            )
        for s in part:
            if s.name in owner:
                raise DataError(
                    f"{owner[s.name].path} and {run.path} both validate {s.name} "
                    f"(folds {owner[s.name].fold} and {run.fold}: the same fold twice, or other splits)"
                )
            owner[s.name] = run
        parts.append(part)
    missing = [s.name for s in samples if s.name not in owner]
    if missing:
        folds = sorted({r.fold for r in runs})
        k = fold_count(runs[0], samples)
        reason = (
            "images added to the dataset since training? (every fold is given)"
            if folds == list(range(k))
            else f"a fold is missing (runs given for fold {', '.join(map(str, folds))} of {k})"
        )
        raise DataError(
            f"no run validates {len(missing)} of the {len(samples)} train images (e.g. {missing[0]}): {reason}"
        )
    return parts


def fold_count(run: Run, samples: Sequence[Sample]) -> int:
    """How many folds `run`'s cross-validation has: its splits file's, else the ``--folds`` it trained with
    (at most one per patient, as training makes them)."""
    if run.splits:
        from boneseg.data.split import load_splits
        from boneseg.errors import BonesegError

        try:
            return int(load_splits(run.splits)["folds"])
        except (BonesegError, OSError):  # the file moved since training: its fold count as trained is unknown
            pass
    return min(run.config.folds, len({s.patient for s in samples}))


def _same_folder(a: str, b: str) -> bool:
    """The same path, or two paths of one existing folder."""
    return a == b or (Path(a).is_dir() and Path(b).is_dir() and os.path.samefile(a, b))


def oof(
    runs: Sequence[str | os.PathLike],
    output: str | os.PathLike | None,
    *,
    data: str | os.PathLike | None = None,
    options: PredictOptions = PredictOptions(workers=0),
    tta: str = "none",
    scales: Sequence[float] | str = DEFAULT_SCALES,
    sliding: bool = False,
    threshold: float | str | os.PathLike = 0.5,
    save_probs: str | os.PathLike | None = None,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> OofSummary:
    """Out-of-fold predictions of the fold runs `runs` over every train image of `data`.

    Args:
        runs: one run folder or checkpoint per fold, as `boneseg train --fold k` wrote them.
        output: the CSV (``-``/None: standard output), one block per image in sorted image order.
        data: the dataset (default: the one the first run was trained on).
        options: how each run predicts (`boneseg.inference.PredictOptions`; by default in this process). No
            calibration is applied (``auto`` and ``none`` alike) and no ``weights`` are taken: each image has
            one model, uncalibrated.
        tta, scales, sliding, threshold: as for `boneseg.inference.run.predict`.
        save_probs: also write the probabilities there (`boneseg.probs`; the manifest adds ``folds``,
            image name -> fold).
        force: overwrite existing outputs. reporter: progress, one task per fold.

    Raises:
        UsageError: no runs, a calibration file or weights in `options`. DataError: runs trained on different
        datasets, the folds do not cover the images once (`assign_folds`), unreadable data.
        OutputExistsError: an existing output without `force`. CheckpointError: a broken run.
    """
    if not runs:
        raise UsageError("give one run per fold")
    options = options.uncalibrated("oof predicts raw probabilities: the runs' calibrations were fitted on these images")
    if options.weights is not None:
        raise UsageError("oof takes no ensemble weights: each image is predicted by its own fold's run")
    options.check(runs[:1])
    policy = Policy.parse(tta, scales, sliding)
    if save_probs is not None and not is_stdout(output):
        assert output is not None  # is_stdout took None
        check_apart(output, save_probs, "--out", "--save-probs")
    opened = [Run.open(r) for r in runs]
    for run in opened[1:]:
        if not _same_folder(run.config.data, opened[0].config.data):
            raise DataError(
                f"{opened[0].path} and {run.path} were trained on different datasets "
                f"({opened[0].config.data} and {run.config.data}): the runs of one cross-validation share one"
            )
    data = data if data is not None else opened[0].config.data
    samples = discover(data)
    by_image_name(samples)
    parts = assign_folds(opened, samples)
    if output is not None and not is_stdout(output):
        check_output(output, force)
    probs_dir = check_probs_dir(save_probs, force) if save_probs is not None else None
    if probs_dir is not None:
        check_not_over_inputs(probs_dir, [data, *(r.path for r in opened)], "--save-probs")
    work = Path(tempfile.mkdtemp(prefix="boneseg-oof-"))
    staging = staging_folder(probs_dir) if probs_dir is not None else None
    rows: dict[str, list[list[str]]] = {}
    try:
        for i, (run, part) in enumerate(zip(opened, parts)):
            reporter.message(f"fold {run.fold}: {run.path} predicts its {len(part)} validation images")
            fold_probs = staging / f".fold-{i}" if staging is not None else None
            predict(
                part,
                [str(run.checkpoint)],
                work / f"fold-{i}.csv",
                options=options,
                tta=policy,
                threshold=threshold,
                postprocess_rules="none",
                save_probs=fold_probs,
                reporter=reporter,
            )
            for _, row in csv_rows(work / f"fold-{i}.csv"):
                rows.setdefault(row[0], []).append(row)
            if fold_probs is not None and staging is not None:
                for f in fold_probs.glob("*.npz"):
                    os.replace(f, staging / f.name)
                shutil.rmtree(fold_probs)
        with atomic_open(output, "w", force=force) as out:
            out.write(format_row(*HEADER))
            for s in samples:
                for row in rows[s.image_name]:
                    out.write(format_row(*row))
        if staging is not None and probs_dir is not None:
            fold_of = {s.image_name: r.fold for r, part in zip(opened, parts) for s in part}
            probs_mod.write_manifest(
                staging,
                [s.image_name for s in samples],
                [str(r.checkpoint) for r in opened],
                {
                    "policy": policy.name if sliding else tta,
                    "threshold": [float(t) for t in probs_mod.read_thresholds(threshold)],
                    "folds": fold_of,
                },
            )
            publish_folder(staging, probs_dir, force)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return OofSummary(
        len(samples),
        "-" if is_stdout(output) else str(output),
        [{"run": str(r.path), "fold": r.fold, "images": len(p)} for r, p in zip(opened, parts)],
        str(probs_dir) if probs_dir is not None else None,
    )
