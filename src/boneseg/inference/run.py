"""`boneseg predict` as a library call: images -> streaming submission CSV (and saved probabilities).

Per image of the `boneseg.inference.pipeline.ImageStream` (background workers read and resize it, the
device predicts it through the stages), the device quantises and thresholds it and computes the run
boundaries, and a writer thread formats the rows (and compresses the probabilities) while the device
moves on. At most two finished images wait for the writer, so memory stays flat
whatever the number of images. Under ``torchrun`` each rank predicts ``images[rank::world]`` into a
part file and rank 0 merges the parts in image order. The CSV and the probability folder appear whole
or not at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from boneseg import probs as probs_mod
from boneseg import uncertainty as uncertainty_mod
from boneseg.classes import NUM_CLASSES
from boneseg.data.layout import Sample, by_image_name, find_images
from boneseg.engine.distributed import as_rank_failure, cleanup, setup
from boneseg.errors import BonesegWarning, DataError, OutputExistsError, UsageError
from boneseg.inference.encode import binarize, format_rles, quantize, run_bounds
from boneseg.inference.exported import Exported, open_model
from boneseg.inference.pipeline import ImageStream, PredictOptions
from boneseg.inference.predictor import Predictor, Spread
from boneseg.inference.stages import ImageStages
from boneseg.inference.tta import DEFAULT_SCALES, Policy
from boneseg.io import (
    atomic_open,
    check_apart,
    check_not_over_inputs,
    check_output,
    is_stdout,
    publish_folder,
    read_json,
    staging_folder,
)
from boneseg.postprocess import postprocess, postprocess_per_class, rules_list
from boneseg.progress import SILENT, Reporter
from boneseg.runs.run import Run
from boneseg.submission import HEADER, SubmissionWriter, csv_rows, format_row


def check_probs_dir(folder: str | os.PathLike, force: bool, option: str = "--save-probs") -> Path:
    """Refuse a non-empty output folder (of `option`) unless `force`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{option} {folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise OutputExistsError(f"{folder} is not empty (use --force to overwrite)")
    return folder


def fixed_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Serve buffers above `nbytes` with mmap, released on free (glibc only; a no-op elsewhere).

    glibc otherwise raises its mmap threshold after large frees, so the per-image buffers (tens of MB)
    move onto the heap, whose fragmentation makes the resident size creep up image after image.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, int(nbytes))  # M_MMAP_THRESHOLD (also turns off the dynamic adjustment)
    except (OSError, AttributeError):
        pass


# -- distributed ----------------------------------------------------------------------------------


def gloo_group():
    """A gloo side group of every rank, for `gather_parts`: made while every rank is alive, so that a
    rank failing later breaks the others' gather (connection closed) instead of leaving them waiting."""
    import torch.distributed as dist

    group = dist.new_group(backend="gloo")
    assert isinstance(group, dist.ProcessGroup)  # every rank is a member
    return group


def gather_parts(part: Path, rank: int, world: int, group) -> list[Path] | None:
    """On rank 0, every rank's part CSV (rank r's copied beside rank 0's own), sent through the process
    group on the gloo side `group`, so that ranks on different nodes need no shared file system; None on
    the other ranks."""
    import torch.distributed as dist

    received: list[bytes] | None = [b""] * world if rank == 0 else None
    dist.gather_object(part.read_bytes() if rank else b"", received, dst=0, group=group)
    if received is None:  # not rank 0
        return None
    parts = [part]
    for r in range(1, world):
        parts.append(part.with_name(f"part-{r}.csv"))
        parts[-1].write_bytes(received[r])
    return parts


def shared_staging(folder: Path, rank: int, world: int) -> Path:
    """The folder every rank writes the probabilities into: made beside `folder` by rank 0, which tells
    the other ranks its name (`boneseg.io.publish_folder` moves it into place at the end)."""
    path = [staging_folder(folder) if rank == 0 else None]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(path, src=0)
    assert path[0] is not None  # rank 0's, now on every rank
    return path[0]


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def merge_parts(parts: Sequence[Path], n_images: int, output: str | os.PathLike | None, force: bool) -> None:
    """Interleave per-rank CSVs (rank r holds images r, r+world, …) back into image order, streaming."""
    world = len(parts)
    readers = [csv_rows(p) for p in parts]
    try:
        with atomic_open(output, "w", force=force) as out:
            out.write(format_row(*HEADER))
            for i in range(n_images):
                for _ in range(NUM_CLASSES):
                    row = next(readers[i % world], None)
                    if row is None:
                        raise DataError(f"{parts[i % world]}: ends early (image {i})")
                    out.write(format_row(*row[1]))
    finally:
        for r in readers:
            r.close()


# -- predict --------------------------------------------------------------------------------------


@dataclass
class PredictSummary:
    """What a `predict` call did (on this rank, plus the totals)."""

    images: int
    seconds: float
    output: str
    probs_dir: str | None = None
    rank: int = 0
    world: int = 1
    policy: str = "resize:none"
    total: int | None = None  # images over all ranks (``images`` is this rank's share)
    uncertainty_dir: str | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


class _Writer:
    """Formats rows and saves probabilities on one background thread, in submission order; at most
    `depth` images wait, so memory stays bounded."""

    def __init__(self, depth: int = 2):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="boneseg-writer")
        self.pending: list[Future[None]] = []
        self.depth = depth

    def submit(self, fn: Callable[[], None]) -> None:
        while len(self.pending) >= self.depth:
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(fn))

    def drain(self) -> None:
        while self.pending:
            self.pending.pop(0).result()

    def close(self) -> None:
        for f in self.pending:
            f.cancel()
        self.pool.shutdown(wait=True)


@dataclass(frozen=True)
class _Rows:
    """How one image's probabilities become its rows: thresholds (uint8 cuts), post-processing, and
    where the probabilities are saved."""

    cuts: np.ndarray
    keep_largest: bool = False
    min_area: int = 0
    rules: list | None = None
    probs_dir: Path | None = None
    uncertainty_dir: Path | None = None
    table: list | None = None  # (image, region means) of the uncertainty maps, in image order

    @property
    def postprocessed(self) -> bool:
        return self.keep_largest or self.min_area > 1 or self.rules is not None

    def task(
        self,
        writer: SubmissionWriter,
        name: str,
        bounds: tuple | None,
        masks: np.ndarray | None,
        q: np.ndarray | None,
        maps: dict[str, np.ndarray] | None = None,
        predicted: np.ndarray | None = None,
    ) -> Callable[[], None]:
        """The writer thread's job for one image: save `q` (and the uncertainty `maps`, with their region
        means over the `predicted` masks), post-process `masks` (or format `bounds`), write."""

        def task() -> None:
            if self.probs_dir is not None:
                assert q is not None  # read back whenever probabilities are saved
                probs_mod.save(self.probs_dir, name, q)
            if self.uncertainty_dir is not None and self.table is not None:
                assert maps is not None and predicted is not None  # made whenever uncertainty is saved
                uncertainty_mod.save(self.uncertainty_dir, name, maps)
                self.table.append((name, uncertainty_mod.region_means(maps, predicted)))
            if masks is not None:
                writer.write_masks(
                    name,
                    postprocess_per_class(masks, self.rules)
                    if self.rules
                    else postprocess(masks, self.keep_largest, self.min_area),
                )
            else:
                assert bounds is not None  # given when masks are not
                writer.write_rles(name, format_rles(*bounds))

        return task


def predict(
    source: str | os.PathLike | Sequence[Sample],
    models: Predictor | Sequence[str | os.PathLike],
    output: str | os.PathLike | None = "-",
    *,
    options: PredictOptions = PredictOptions(),
    tta: str | Policy = "none",
    scales: Sequence[float] | str = DEFAULT_SCALES,
    sliding: bool = False,
    threshold: float | str | os.PathLike | dict | None = None,
    keep_largest: bool = False,
    min_area: int = 0,
    postprocess_rules: str | os.PathLike | None = "auto",
    save_probs: str | os.PathLike | None = None,
    save_uncertainty: str | os.PathLike | None = None,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> PredictSummary:
    """Predict images into a submission CSV, streaming one image at a time.

    Args:
        source: a dataset root (its ``test/DCM``), a folder of PNGs (recursive), one PNG, or samples.
        models: checkpoints/run folders (each rebuilt from its own config), exports (`boneseg export`), or a
            ready `Predictor`.
        output: CSV path, or ``-``/None for standard output.
        options: how the models run (`PredictOptions`: device, sizes, window, batch, weights, calibration,
            wrist model, metadata, loader processes). Its ``calibration`` file's searched thresholds apply when
            `threshold` is None; the probability manifest records the calibrations applied. Its ``meta``
            defaults to the ``meta_data.xlsx`` found from `source`.
        tta: ``none``, ``hflip``, ``scale``, ``hflip+scale`` (or a `Policy`); views are merged by the mean
            of their probabilities. scales: the scales of ``scale``. sliding: sliding-window mode.
        threshold: a number, a {class: t} mapping, or a JSON file of per-class thresholds; None: those of a
            single exported model, else 0.5.
        keep_largest / min_area: post-processing per class (off by default).
        postprocess_rules: ``auto`` (the ``postprocess.json`` of a single model's run folder, see
            `boneseg.workflows.validation.fit_postprocess`), ``none``, or a rules file.
        save_probs: folder for uint8 probabilities (`boneseg.probs`), for soft voting and pseudo-labels.
        save_uncertainty: folder for uncertainty maps and their per-class table (`boneseg.uncertainty`).
        force: overwrite existing outputs. reporter: where the progress goes (`boneseg.progress`; rank 0 only).

    Raises:
        UsageError: bad options. DataError: unreadable images or thresholds. OutputExistsError: an
        existing output without `force`. CheckpointError: a checkpoint that cannot be loaded, or a TorchScript
        export without ``options.trust_model``.
    """
    # every option first: a bad value is reported before any input is read or output checked
    options.check(models)
    if save_probs is not None and not is_stdout(output):
        assert output is not None  # is_stdout took None
        check_apart(output, save_probs, "--out", "--save-probs")
    policy = tta if isinstance(tta, Policy) else Policy.parse(tta, scales, sliding)
    thresholds = probs_mod.read_thresholds(threshold)
    cuts = probs_mod.cutoffs(thresholds)
    own_calibration = options.own_calibration
    final_calibration = options.final_calibration()
    postprocess(np.zeros((0, 1, 1), np.bool_), keep_largest, min_area)  # validates the options
    run_rules = str(postprocess_rules).lower() == "auto"
    found = (None, None) if run_rules else find_rules([], postprocess_rules)  # a file is an option
    rules = rules_list(found[0], keep_largest, min_area, found[1]) if found[0] is not None else None
    samples = list(source) if not isinstance(source, (str, os.PathLike)) else find_images(source)
    if not samples:
        raise DataError("no images to predict")
    by_image_name(samples)
    runs = [] if isinstance(models, Predictor) else [open_model(m, options.trust_model) for m in models]
    searched = (
        final_calibration.thresholds
        if final_calibration is not None
        else runs[0].calibration.thresholds
        if own_calibration and len(runs) == 1 and runs[0].calibration is not None
        else None
    )
    if threshold is None and searched is not None:
        thresholds = searched
        cuts = probs_mod.cutoffs(thresholds)
    elif threshold is None and len(runs) == 1 and isinstance(runs[0], Exported) and runs[0].thresholds is not None:
        thresholds = probs_mod.read_thresholds(runs[0].thresholds)
        cuts = probs_mod.cutoffs(thresholds)
    applied = (
        final_calibration is not None
        or (isinstance(models, Predictor) and models.calibrations is not None)
        or (own_calibration and any(r.calibration is not None for r in runs))
    )
    probs_mod.check_thresholds_calibration(threshold, applied)
    if own_calibration:
        for run in runs:
            if run.calibration is not None:
                warnings.warn(
                    f"{run.path}: applying its calibration (--calibration none to skip)", BonesegWarning, stacklevel=2
                )
    if run_rules:
        found = find_rules(runs, postprocess_rules)
        if found[0] is not None:
            warnings.warn(
                f"applying the run's post-processing rules {found[1]} (--postprocess none to skip)",
                BonesegWarning,
                stacklevel=2,
            )
            rules = rules_list(found[0], keep_largest, min_area, found[1])
    if output is not None and not is_stdout(output):
        check_output(output, force)
    probs_dir = check_probs_dir(save_probs, force) if save_probs is not None else None
    unc_dir = check_probs_dir(save_uncertainty, force, "--save-uncertainty") if save_uncertainty is not None else None
    read = [source, *(getattr(r, "path", None) for r in runs)]
    for folder, option in ((probs_dir, "--save-probs"), (unc_dir, "--save-uncertainty")):
        if folder is not None:
            check_not_over_inputs(folder, read, option)
    if probs_dir is not None and unc_dir is not None and probs_dir.resolve() == unc_dir.resolve():
        raise UsageError("--save-uncertainty: give another folder than --save-probs")
    if probs_dir is not None or unc_dir is not None:
        probs_mod.check_names([s.image_name for s in samples])

    info = setup(models.device if isinstance(models, Predictor) else options.device)
    rank, world = info.rank, info.world_size
    if unc_dir is not None and world > 1:
        raise UsageError("--save-uncertainty runs in one process, not under torchrun")
    fixed_mmap_threshold()
    predictor = options.predictor(models if isinstance(models, Predictor) else runs, info.device, final_calibration)
    if policy.hflip and predictor.unified:
        used = predictor.applied(policy)
        whom = (
            f"models trained with hand-side unification (their mirror view is the other hand): running {used.name}"
            if used != policy
            else f"the {len(predictor.unified)} of {len(predictor.models)} models trained with "
            "hand-side unification (their mirror view is the other hand); the others use it"
        )
        warnings.warn(f"--tta {policy.tta}: the flip is dropped for {whom}", BonesegWarning, stacklevel=2)
        policy = used
    stages = options.stages(predictor, source if isinstance(source, (str, os.PathLike)) else None)
    shard = samples[rank::world]
    parts_dir = Path(tempfile.mkdtemp(prefix="boneseg-predict-")) if world > 1 else None  # on each rank's node
    target = parts_dir / "part-0.csv" if parts_dir is not None else output
    group = gloo_group() if world > 1 else None
    staging = shared_staging(probs_dir, rank, world) if probs_dir is not None else None
    unc_staging = staging_folder(unc_dir) if unc_dir is not None else None
    rows = _Rows(cuts, keep_largest, min_area, rules, staging, unc_staging, [] if unc_staging is not None else None)
    label = "predict" + (f" [rank 0 of {world}]" if world > 1 else "")
    try:
        seconds = _predict_shard(
            shard,
            predictor,
            policy,
            stages,
            rows,
            target,
            force or world > 1,
            options.workers,
            reporter if rank == 0 else SILENT,
            label,
        )
        if world > 1:
            assert isinstance(target, Path)  # this rank's part in parts_dir
            parts = gather_parts(target, rank, world, group)  # returns once every rank has written its share
            if parts is not None:  # rank 0
                merge_parts(parts, len(samples), output, force)
        if staging is not None and rank == 0:
            probs_mod.write_manifest(
                staging,
                [s.image_name for s in samples],
                [lm.source for lm in predictor.models],
                {
                    "policy": policy.name,
                    "scales": list(policy.scales),
                    "weights": predictor.weights,
                    "threshold": [float(t) for t in thresholds],
                    "calibration": predictor.calibrations,
                },
            )
            assert probs_dir is not None  # staging is made only for it
            publish_folder(staging, probs_dir, force)
        if unc_staging is not None and unc_dir is not None:
            assert rows.table is not None  # made with the staging folder
            uncertainty_mod.write_table(unc_staging, rows.table)
            maps = ["entropy"] + [m for m in ("tta", "ensemble") if rows.table and _has(rows.table, m)]
            uncertainty_mod.write_manifest(unc_staging, [s.image_name for s in samples], maps)
            publish_folder(unc_staging, unc_dir, force)
        if world > 1:
            _barrier()
    except BaseException as exc:  # Ctrl-C included: no partial probability folder is left behind
        for folder in (staging, unc_staging):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        failure = as_rank_failure(exc, info, "rerun the same command")
        if failure is not None:
            raise failure from exc
        raise
    finally:
        if parts_dir is not None:
            shutil.rmtree(parts_dir, ignore_errors=True)
    cleanup(info)
    return PredictSummary(
        len(shard),
        seconds,
        "-" if is_stdout(output) else str(output),
        str(probs_dir) if probs_dir else None,
        rank,
        world,
        policy.name,
        len(samples),
        str(unc_dir) if unc_dir else None,
    )


def _predict_shard(
    shard: Sequence[Sample],
    predictor: Predictor,
    policy: Policy,
    stages: ImageStages,
    rows: _Rows,
    target: str | os.PathLike | None,
    force: bool,
    workers: int,
    reporter: Reporter,
    label: str,
) -> float:
    """Predict `shard` into the CSV `target`, streaming (a `reporter` task titled `label`);
    returns the seconds it took."""
    start = time.perf_counter()
    bg = _Writer()
    try:
        with (
            SubmissionWriter(target, force=force) as writer,
            ImageStream(shard, predictor, stages, [policy], workers=workers, reporter=reporter, label=label) as stream,
        ):
            for image in stream:
                spread = Spread() if rows.uncertainty_dir is not None else None
                p = image.probabilities(policy, spread)
                maps = _maps(p, spread) if spread is not None else None
                q = quantize(p)
                del p
                masks = binarize(q, rows.cuts)
                predicted = masks.cpu().numpy() if maps is not None else None
                q_np = q.cpu().numpy() if rows.probs_dir is not None else None
                del q
                if (
                    rows.postprocessed or masks.device.type == "cpu"
                ):  # CPU: the writer thread's bounding-box RLE is faster
                    m_np, bounds = masks.cpu().numpy(), None
                else:
                    m_np, bounds = None, run_bounds(masks)
                del masks
                bg.submit(rows.task(writer, image.item.name, bounds, m_np, q_np, maps, predicted))
            bg.drain()
    finally:
        bg.close()
    return time.perf_counter() - start


def _maps(p: torch.Tensor, spread: Spread) -> dict[str, np.ndarray]:
    """One image's uint8 uncertainty maps (`boneseg.uncertainty`) from its final probabilities and spread."""
    maps = {"entropy": uncertainty_mod.quantize(uncertainty_mod.entropy(p))}
    if spread.tta is not None:
        maps["tta"] = uncertainty_mod.quantize(spread.tta * 2)
    if spread.ensemble is not None:
        maps["ensemble"] = uncertainty_mod.quantize(spread.ensemble * 2)
    return maps


def _has(table: list, name: str) -> bool:
    """Whether the saved maps include `name` (every image has the same maps)."""
    return table[0][1][name][0] is not None


def find_rules(
    runs: Sequence[Run | Exported], setting: str | os.PathLike | None = "auto"
) -> tuple[dict, str] | tuple[None, None]:
    """The post-processing rules `predict` applies: ``auto`` = those of a single run or export
    (`Run.postprocess_rules`, `Exported.postprocess_rules`;
    ensembles get none: the rules were validated for one model), ``none`` = none, else a file. Returns
    (document, its path)."""
    if setting is None or str(setting).lower() == "none":
        return None, None
    if str(setting).lower() == "auto":
        if len(runs) != 1 or runs[0].postprocess_rules is None:
            return None, None
        return runs[0].postprocess_rules, str(runs[0].rules_path)
    else:
        path = Path(setting)
        if not path.is_file():
            raise DataError(f"--postprocess {path}: file not found (or use auto / none)")
    return read_json(path), str(path)
