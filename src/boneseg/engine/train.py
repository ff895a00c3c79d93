"""The training loop behind ``boneseg train``: plain functions, one job each.

``train(config)`` prepares a run folder, the data (mask cache, folds, pseudo labels), the model,
optimiser, schedule, AMP scaler and EMA, then loops over epochs: `train_epoch` (optimizer steps with
gradient accumulation, clipping, stop requests) and `evaluate` (competition Dice per class on the device,
at the training size). Every epoch it writes ``metrics.jsonl``, ``best.pt`` on a new best mean Dice, and
``last.pt`` (every ``--save-every`` epochs, and always at the end). A run stopped anywhere (``--max-steps``,
Ctrl-C, SIGTERM) writes a ``last.pt`` from which ``--resume`` finishes bit for bit like an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from boneseg.classes import CLASSES
from boneseg.data.transforms import AUGMENTATIONS, DEFAULT_MEAN, DEFAULT_STD, check_side, in_channels, normalize
from boneseg.data.wrist import DEFAULT_MARGIN
from boneseg.engine import distributed as D
from boneseg.engine.checkpoint import BEST, FORMAT, LAST, load_checkpoint, save_checkpoints
from boneseg.errors import (
    BonesegError,
    BonesegWarning,
    CheckpointError,
    DataError,
    OutputExistsError,
    UsageError,
    suggest,
)
from boneseg.io import atomic_open, write_json
from boneseg.modelling import heads
from boneseg.progress import SILENT, Reporter, Task

CONFIG, METRICS = "config.json", "metrics.jsonl"


LEFT_ON_INTERRUPT = "the previous last.pt (if any) is kept: continue with the same command plus --resume"
"""What a second Ctrl-C (the step in flight lost) leaves of a run folder: `boneseg.errors.Interrupted`."""


class TrainingInterrupted(BonesegError):
    """Ctrl-C/SIGTERM: the current step finished, ``last.pt`` was saved; exit code 130."""

    exit_code = 130


class NonFiniteLoss(BonesegError):
    """The loss or the weights became NaN/inf; nothing of that state was saved."""


@dataclass
class TrainConfig:
    """The options of a run: those that define it (saved as ``RUN/config.json`` and in every checkpoint)
    and those of one invocation (`RUNTIME`, never saved)."""

    data: str = ""
    out: str = ""
    arch: str = "unet"
    encoder: str = "resnet34"
    size: int = 512
    crop: int | None = None
    fold: int = 0
    splits: str | None = None
    folds: int = 5
    epochs: int = 30
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "bce+dice"
    encoder_weights: str | None = "imagenet"
    device: str = "auto"
    amp: bool | None = None
    amp_dtype: str = "bf16"
    channels_last: bool | None = None
    compile: bool = False
    workers: int = 2
    seed: int = 0
    max_steps: int | None = None
    pseudo: list[str] = field(default_factory=list)
    exclude: str | None = None
    resume: bool = False
    force: bool = False
    aug: str = "default"
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup: float = 0.0
    accumulate: int = 1
    clip: float | None = None
    ema: float = 0.0
    val_every: int = 1
    save_every: int = 1
    unify_side: str | None = None
    tensorboard: bool = False
    cache_dir: str | None = None
    channels: str = "gray"
    mean: list[float] = field(default_factory=lambda: list(DEFAULT_MEAN))
    std: list[float] = field(default_factory=lambda: list(DEFAULT_STD))
    model_kwargs: dict = field(default_factory=dict)
    dist_timeout: float = 30.0
    meta: str = "none"
    meta_weight: float = 0.1
    boundary_head: float = 0.0
    boundary_sharpen: float = 0.0
    distance_clip: int = 16
    wrist: bool = False
    wrist_margin: float = DEFAULT_MARGIN
    log: str = "none"
    log_images: int = 4
    skip_bad: bool = False
    init_from: str | None = None
    patience: int | None = None
    # distillation (`boneseg distill`): probability folders of the train images (and of the test images,
    # as soft pseudo-labels), their per-class weights (29 rows, one weight per folder; None: equal) and the
    # teacher's share of the target
    teacher: list[str] = field(default_factory=list)
    teacher_test: list[str] = field(default_factory=list)
    teacher_weights: list[list[float]] | None = None
    teacher_weight: float = 0.5
    norm: str = "batch"
    adapter_dim: int | None = None
    unfreeze: int | None = None
    deep_supervision: list[float] | None = None

    @classmethod
    def from_any(cls, config: TrainConfig | dict) -> TrainConfig:
        """A config from a dataclass or a dict; unknown keys raise `UsageError` with suggestions."""
        if isinstance(config, TrainConfig):
            return dataclasses.replace(config)
        names = {f.name for f in dataclasses.fields(cls)}
        derived = {"in_channels", "classes", "unify_hands"}
        unknown = [k for k in config if k not in names and k not in derived]
        if unknown:
            raise UsageError(f"unknown training option {unknown[0]!r}{suggest(unknown[0], names)}")
        kw = {k: v for k, v in config.items() if k in names}
        if "unify_hands" in config and "unify_side" not in config:
            kw["unify_side"] = config["unify_hands"]
        return cls(**kw)

    @classmethod
    def from_saved(cls, saved: dict) -> TrainConfig:
        """The config of a saved run (a checkpoint's or ``RUN/config.json``): keys this version does not
        know (derived ones, those of other versions) and runtime options are ignored, missing ones (or a
        null where the option takes none) take the defaults above."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in RUNTIME}
        kw = {k: v for k, v in saved.items() if k in fields and (v is not None or fields[k].default is None)}
        if "unify_hands" in saved and "unify_side" not in saved:
            kw["unify_side"] = saved["unify_hands"]
        return cls(**kw)

    def to_dict(self) -> dict:
        """The run's JSON-able dict stored in checkpoints: no `RUNTIME` option, with the derived
        ``in_channels`` and ``classes``."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME}
        d["in_channels"] = in_channels(self)
        d["classes"] = list(CLASSES)
        return d


# Options that define the trajectory of a run: a resume must not change them.
FIXED_ON_RESUME = (
    "arch",
    "encoder",
    "size",
    "crop",
    "fold",
    "splits",
    "folds",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "loss",
    "aug",
    "optimizer",
    "scheduler",
    "warmup",
    "accumulate",
    "clip",
    "ema",
    "seed",
    "unify_side",
    "channels",
    "mean",
    "std",
    "pseudo",
    "exclude",
    "amp",
    "amp_dtype",
    "val_every",
    "meta",
    "meta_weight",
    "boundary_head",
    "distance_clip",
    "wrist",
    "wrist_margin",
    "init_from",
    "patience",
    "teacher",
    "teacher_test",
    "teacher_weights",
    "teacher_weight",
    "norm",
    "adapter_dim",
    "unfreeze",
    "deep_supervision",
)
# Options of one invocation: never saved with the run, so a resume takes them from its own command
# (or their defaults), never from an earlier invocation.
RUNTIME = (
    "out",
    "resume",
    "force",
    "device",
    "workers",
    "max_steps",
    "save_every",
    "cache_dir",
    "dist_timeout",
    "skip_bad",
    "channels_last",
    "compile",
    "tensorboard",
    "log",
    "log_images",
)
# Saved with the run, but a resume may change them: where the data lives, the inference-time sharpening.
CHANGEABLE_ON_RESUME = ("data", "boundary_sharpen")
# Of those, the ones inference reads from a checkpoint: a resume that changes one rewrites the checkpoints too.
INFERENCE_ON_RESUME = ("boundary_sharpen",)


# -- validation of options -----------------------------------------------------------------------


def check_input(cfg: TrainConfig) -> None:
    """Reject impossible input settings (what an image needs before the model sees it: size, crop, channels,
    mean and std, hand side), normalising the hand side to ``"L"``, ``"R"`` or None."""
    check_side(cfg.size, "--size")
    if cfg.crop is not None and (check_side(cfg.crop, "--crop") > cfg.size):
        raise UsageError(f"--crop {cfg.crop}: must be a multiple of 32 and at most --size {cfg.size}")
    n = in_channels(cfg)
    for name, values in (("mean", cfg.mean), ("std", cfg.std)):
        numbers = values if isinstance(values, (list, tuple)) else [values]
        if len(numbers) not in (1, n) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers
        ):
            count = "1 finite number" if n == 1 else f"1 or {n} finite numbers (one per input channel)"
            raise UsageError(f"{name} {values}: expected {count}")
        if name == "std" and not all(v > 0 for v in numbers):
            raise UsageError(f"std {values}: must be positive (the input is divided by it)")
    if cfg.unify_side in ("none", "None", ""):
        cfg.unify_side = None
    if cfg.unify_side is not None:
        cfg.unify_side = str(cfg.unify_side).upper()[:1]
        if cfg.unify_side not in ("L", "R"):
            raise UsageError("--unify-hands: expected R, L or none")


def check_config(cfg: TrainConfig) -> None:
    """Reject impossible option values with one clear line each (no training started)."""
    from boneseg.data.split import check_split_options
    from boneseg.engine.optim import check_optimizer, check_scheduler
    from boneseg.modelling.losses import parse_loss
    from boneseg.modelling.models import check_arch_side, check_model_options, resolve_arch, resolve_encoder

    if not cfg.data:
        raise UsageError("no DATA folder given")
    if not cfg.out:
        raise UsageError("--out RUN is required")
    cfg.arch = resolve_arch(cfg.arch)
    cfg.encoder = resolve_encoder(cfg.encoder, cfg.arch)
    terms = parse_loss(cfg.loss)
    options = check_model_options(cfg.arch, cfg.encoder, cfg.norm, cfg.adapter_dim, cfg.unfreeze, cfg.deep_supervision)
    cfg.norm, cfg.adapter_dim, cfg.unfreeze, cfg.deep_supervision = options
    check_input(cfg)
    check_arch_side(cfg.arch, cfg.crop or cfg.size, "--crop" if cfg.crop else "--size")
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.type.startswith("float") and v is not None and not math.isfinite(v):
            raise UsageError(f"--{f.name.replace('_', '-')} {v}: must be a finite number")
    positive = {
        "--epochs": cfg.epochs,
        "--batch-size": cfg.batch_size,
        "--accumulate": cfg.accumulate,
        "--val-every": cfg.val_every,
        "--save-every": cfg.save_every,
    }
    for opt, v in positive.items():
        if not isinstance(v, int) or v < 1:
            raise UsageError(f"{opt} {v}: must be a positive integer")
    for opt, v in {"--lr": cfg.lr, "--dist-timeout": cfg.dist_timeout}.items():
        if v <= 0:
            raise UsageError(f"{opt} {v}: must be positive")
    for opt, v in {"--weight-decay": cfg.weight_decay, "--warmup": cfg.warmup}.items():
        if v < 0:
            raise UsageError(f"{opt} {v}: must be >= 0")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UsageError(f"--max-steps {cfg.max_steps}: must be at least 1")
    if cfg.patience is not None and (not isinstance(cfg.patience, int) or cfg.patience < 1):
        raise UsageError(f"--patience {cfg.patience}: must be a positive integer")
    if cfg.init_from is not None:
        if cfg.encoder_weights not in (None, "none", "imagenet"):
            raise UsageError(
                f"--encoder-weights {cfg.encoder_weights} and --init-from {cfg.init_from} both set "
                "the weights: give one"
            )
        cfg.encoder_weights = None  # every weight comes from --init-from
    if cfg.workers < 0:
        raise UsageError(f"--workers {cfg.workers}: must be >= 0")
    if cfg.fold < 0:
        raise UsageError(f"--fold {cfg.fold}: must be >= 0")
    check_split_options(cfg.folds, seed=cfg.seed)
    cfg.optimizer, cfg.scheduler = check_optimizer(cfg.optimizer), check_scheduler(cfg.scheduler)
    if cfg.warmup and cfg.warmup >= cfg.epochs:
        raise UsageError(
            f"--warmup {cfg.warmup:g}: must be shorter than --epochs {cfg.epochs} (warm-up is in epochs; "
            "the schedule starts after it)"
        )
    if cfg.aug not in AUGMENTATIONS:
        raise UsageError(f"--aug {cfg.aug!r}: unknown preset{suggest(cfg.aug, AUGMENTATIONS)}")
    if cfg.amp_dtype not in ("bf16", "fp16"):
        raise UsageError(f"--amp-dtype {cfg.amp_dtype!r}: expected bf16 or fp16")
    if not 0.0 <= cfg.ema < 1.0:
        raise UsageError(f"--ema {cfg.ema}: decay must be in [0, 1) (0 disables it)")
    if cfg.clip is not None and cfg.clip <= 0:
        raise UsageError(f"--clip {cfg.clip}: must be positive")
    from boneseg.engine.tracking import check_logger, check_tracker
    from boneseg.modelling.heads import check_meta_mode

    cfg.meta = check_meta_mode(cfg.meta)
    if cfg.tensorboard:
        if check_logger(cfg.log) not in ("none", "tensorboard"):
            raise UsageError(f"--tensorboard (= --log tensorboard) and --log {cfg.log}: give one tracker")
        cfg.log = "tensorboard"
    cfg.log = check_tracker(cfg.log)
    if cfg.meta_weight < 0 or cfg.boundary_head < 0:
        raise UsageError("--meta-weight and --boundary-head must be >= 0")
    if not 0 <= cfg.boundary_sharpen <= 1:
        raise UsageError(f"--boundary-sharpen {cfg.boundary_sharpen}: must be in [0, 1]")
    if cfg.boundary_sharpen > 0 and cfg.boundary_head <= 0:
        raise UsageError("--boundary-sharpen needs a boundary head (--boundary-head WEIGHT > 0)")
    if not 1 <= cfg.distance_clip <= 127:
        raise UsageError(f"--distance-clip {cfg.distance_clip}: must be in 1..127")
    if not 0 <= cfg.wrist_margin <= 1:
        raise UsageError(f"--wrist-margin {cfg.wrist_margin}: must be in [0, 1]")
    if cfg.wrist:
        from boneseg.classes import CARPALS

        for term in terms:
            if term.classes is not None and not set(term.classes) & set(CARPALS):
                raise UsageError(
                    f"--loss term {term}: a wrist model (--wrist) predicts the carpals only, and this term "
                    "sees none of them"
                )
    _warn_untrained_classes(terms, cfg.wrist)
    check_teacher(cfg)


def _warn_untrained_classes(terms, wrist: bool) -> None:
    """Warn when restricted loss terms leave some of the model's classes out of every term: their outputs
    would never train, yet predict writes their masks."""
    from boneseg.classes import CARPALS, CLASSES

    if any(t.classes is None for t in terms):
        return
    seen = {c for t in terms for c in t.classes or ()}
    left = [c for c in (CARPALS if wrist else CLASSES) if c not in seen]
    if left:
        names = ", ".join(left[:3]) + (", …" if len(left) > 3 else "")
        warnings.warn(
            f"no --loss term sees {len(left)} class{'es' if len(left) > 1 else ''} ({names}): their outputs will "
            "not train, yet predict writes their masks; add an unrestricted term (e.g. +bce) to train them",
            BonesegWarning,
            stacklevel=2,
        )


def check_teacher(cfg: TrainConfig) -> None:
    """Distillation settings that cannot work: a weight outside [0, 1], test probabilities without train
    ones or in another number of folders, a wrist model, a distance loss on unlabelled test images."""
    if not 0 <= cfg.teacher_weight <= 1:
        raise UsageError(f"--teacher-weight {cfg.teacher_weight}: must be in [0, 1]")
    if not cfg.teacher:
        if cfg.teacher_test:
            raise UsageError("--teacher-test needs --teacher (the train images' probabilities)")
        return
    if cfg.teacher_test and len(cfg.teacher_test) != len(cfg.teacher):
        raise UsageError(
            f"--teacher-test: {len(cfg.teacher_test)} folder(s) for a teacher of {len(cfg.teacher)} "
            "(give one test folder per teacher folder, in the same order)"
        )
    if cfg.wrist:
        raise UsageError("--wrist: a wrist model cannot be distilled (the teacher's probabilities are whole images)")
    if cfg.teacher_test and build_criterion(cfg).needs_distance:
        raise UsageError(
            f"--loss {cfg.loss} with --teacher-test: the test images have no labels to measure distances from"
        )


# -- run folder ------------------------------------------------------------------------------------

_RUN_FILES = (CONFIG, METRICS, LAST, BEST, "tensorboard", "wandb", "postprocess.json")


def _stale_temps(out: Path) -> list[Path]:
    """Temp files of run files that a killed atomic write left behind (``.last.pt.*.tmp`` …)."""
    return [p for name in _RUN_FILES for p in out.glob(f".{name}.*.tmp")] if out.is_dir() else []


def _remove(paths) -> None:
    import shutil

    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


PREVIOUS = ".previous-run"
"""Inside RUN: the old run's files while a ``--force`` run has no checkpoint of its own yet."""


def _has_checkpoint(out: Path) -> bool:
    return any((out / name).is_file() for name in (LAST, BEST))


def restore_previous(out: Path) -> bool:
    """Put back the run that a ``--force`` run replaced, if that run died before its first checkpoint (its
    own files are removed); drop it once the new run has one. Returns whether the old run came back."""
    previous = out / PREVIOUS
    if not previous.is_dir():
        return False
    if _has_checkpoint(out):
        _remove([previous])
        return False
    _remove([out / name for name in _RUN_FILES] + _stale_temps(out))
    for p in sorted(previous.iterdir()):
        p.rename(out / p.name)
    previous.rmdir()
    return True


def drop_previous(out: Path) -> None:
    """The new run has its first checkpoint: the run it replaced is removed."""
    if (out / PREVIOUS).exists() and _has_checkpoint(out):
        _remove([out / PREVIOUS])


def check_run_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse a RUN that is not a folder, a non-empty one unless resuming or forced, and a resume without
    ``last.pt``; reads only (stale temp files of an interrupted save do not make RUN "not empty")."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out}: exists and is not a folder")
    if resume:
        if not (out / LAST).is_file():
            raise CheckpointError(f"--resume: {out / LAST} not found (nothing to resume; drop --resume)")
        return
    stale = _stale_temps(out)
    if out.is_dir() and any(p not in stale for p in out.iterdir()) and not force:
        raise OutputExistsError(
            f"--out {out}: folder exists and is not empty (use --resume to continue that run or --force to start over)"
        )


def prepare_run_dir(out: Path, resume: bool, force: bool) -> bool:
    """`check_run_dir`, then make RUN; with `force` boneseg's own files of the old run are moved aside into
    ``RUN/.previous-run`` (other files stay), to be removed only once the new run has written its first
    checkpoint (`drop_previous`); stale temp files of an interrupted save are removed. Returns whether it made
    the folder. Call it holding RUN (`boneseg.io.hold`), after every check of the run has passed."""
    check_run_dir(out, resume, force)
    _remove(_stale_temps(out))
    if resume:
        return False
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    own = [out / name for name in _RUN_FILES if (out / name).exists() or (out / name).is_symlink()]
    if own:
        (out / PREVIOUS).mkdir()
        for p in own:
            p.rename(out / PREVIOUS / p.name)
    return made


@contextlib.contextmanager
def run_folder(out: Path, cfg: TrainConfig, info: D.DistInfo):
    """`prepare_run_dir` (rank 0), then the body; a new run that fails before saving a checkpoint takes
    back what it wrote (and the folder, if it made it) and puts back the run it replaced, so the plain
    retry just works and a failed ``--force`` loses nothing."""
    made = prepare_run_dir(out, cfg.resume, cfg.force) if info.is_main else False
    D.barrier(info)
    try:
        yield
    except BaseException:
        if info.is_main and not cfg.resume and not _has_checkpoint(out):
            _remove([out / name for name in _RUN_FILES] + _stale_temps(out))
            restore_previous(out)
            if made and not any(out.iterdir()):
                out.rmdir()
        raise


def _same_setting(key: str, given: Any, saved: Any) -> bool:
    """Whether option `key` given to a resume is the run's saved setting, in any spelling: an alias
    (``unet++``), a loss written otherwise (``bce + 1*dice``), a path written otherwise (``./s.json``), a run
    folder given to ``--init-from`` (the run saved the checkpoint file it took from there), a name in
    other case (``AdamW``), one number for a list of one (``mean: 0.449``)."""
    import os

    from boneseg.modelling.losses import parse_loss
    from boneseg.modelling.models import resolve_arch, resolve_encoder

    if given == saved:
        return True
    if key == "unify_side":
        return str(given or "none").upper()[:1] == str(saved or "none").upper()[:1]
    if given is None or saved is None:
        return False

    def encoder_form(name: str) -> str:
        try:
            return resolve_encoder(name, "sam2unet")
        except UsageError:
            return resolve_encoder(name)

    same_form: dict[str, Any] = {
        "arch": resolve_arch,
        "encoder": encoder_form,
        "loss": parse_loss,
        "optimizer": str.lower,
        "scheduler": str.lower,
        "norm": str.lower,
        "mean": lambda v: [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])],
        "std": lambda v: [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])],
        "splits": os.path.abspath,
        "exclude": os.path.abspath,
        "pseudo": lambda v: [os.path.abspath(p) for p in v],
        "teacher": lambda v: [os.path.abspath(p) for p in v],
        "teacher_test": lambda v: [os.path.abspath(p) for p in v],
        "teacher_weights": lambda v: [[float(x) for x in row] for row in v],
    }
    if key == "init_from":
        return os.path.abspath(saved) in {os.path.abspath(p) for p in (given, Path(given, BEST), Path(given, LAST))}
    return key in same_form and same_form[key](given) == same_form[key](saved)


def merge_resume(cfg_given: dict, saved: dict) -> TrainConfig:
    """The config of a resumed run: the saved one (less any runtime option an old checkpoint holds), with
    the runtime options and `CHANGEABLE_ON_RESUME` ones the new command gives.

    Raises:
        UsageError: the new command changes an option that defines the run (e.g. ``--epochs``).
    """
    for key in FIXED_ON_RESUME:
        if key in cfg_given and key in saved and not _same_setting(key, cfg_given[key], saved[key]):
            raise UsageError(
                f"--resume: the run was started with {key}={saved[key]!r}, not {cfg_given[key]!r} "
                "(resume with the same options, or start a new run)"
            )
    merged = {k: v for k, v in saved.items() if k not in ("in_channels", "classes", *RUNTIME)}
    for key in (*RUNTIME, *CHANGEABLE_ON_RESUME):
        if key in cfg_given and cfg_given[key] is not None:
            merged[key] = cfg_given[key]
    merged["resume"] = True
    return TrainConfig.from_any(merged)


# -- data ------------------------------------------------------------------------------------------


class _ReadCheck:
    """Stands in for the mask cache in a dry run: each sample's image header is read and its label parsed
    and checked against the image size (`prepare_cache`'s messages and --skip-bad), nothing is written."""

    def fresh(self, sample, size) -> bool:
        return False

    def get(self, sample, size) -> None:
        from boneseg.data.layout import image_shape
        from boneseg.data.masks import load_label

        shape = image_shape(sample.image)
        if sample.label is not None:
            load_label(sample.label, shape)


def check_meta(cfg: TrainConfig, samples: Sequence) -> None:
    """A metadata model (``--meta aux|film``) needs the patients' metadata: refuse a dataset without a
    metadata file or whose file names none of its patients; warn about patients it lacks (they train with
    the no-metadata vector).

    Raises:
        DataError: no metadata file, or no patient of the dataset in it.
    """
    from boneseg.data.meta import find_meta_file, meta_table

    found = find_meta_file(cfg.data)
    if found is None:
        raise DataError(
            f"--meta {cfg.meta}: no patient metadata (meta_data.xlsx/.xls/.csv) in {cfg.data}; "
            "train with --meta none, or add the file"
        )
    table = meta_table(found)
    patients = sorted({s.patient for s in samples})
    lacking = [p for p in patients if p not in table]
    if len(lacking) == len(patients):
        raise DataError(
            f"{found}: names none of the dataset's {len(patients)} patients (e.g. {patients[0]!r}; the file "
            f"has {', '.join(map(repr, list(table)[:3])) or 'no rows'}): --meta {cfg.meta} would train without metadata"
        )
    if lacking:
        warnings.warn(
            f"{found}: no row for {len(lacking)} of {len(patients)} patients (e.g. {lacking[0]}): "
            "they train with the no-metadata vector",
            BonesegWarning,
            stacklevel=2,
        )


def build_data(cfg: TrainConfig, info: D.DistInfo, reporter: Reporter, check_only: bool = False):
    """(train items, val items) with the mask cache built once (rank 0 builds, the others wait); with
    `check_only` (a dry run) the images and labels are only checked (`_ReadCheck`)."""
    from boneseg.data.dataset import Item, prepare_cache
    from boneseg.data.exclude import exclude
    from boneseg.data.layout import discover
    from boneseg.data.masks import MaskCache, default_cache_dir
    from boneseg.data.split import run_fold

    samples = discover(cfg.data, skip_bad=cfg.skip_bad)
    if cfg.meta != "none":
        check_meta(cfg, samples)
    train_s, val_s = run_fold(samples, cfg.splits, cfg.folds, cfg.seed, cfg.fold)
    if cfg.exclude:  # out of training only: the validation fold stays comparable between runs
        kept = {s.name for s in exclude(samples, cfg.exclude)}
        train_s = [s for s in train_s if s.name in kept]
    if not val_s:
        source = f"--splits {cfg.splits}" if cfg.splits else f"--folds {cfg.folds}"
        raise DataError(
            f"{source}: fold {cfg.fold} has no images (nothing to validate on; "
            "choose another --fold or run boneseg split again)"
        )

    def cache_at(root: Path) -> MaskCache:  # a wrist model reads every sample, pseudo ones too, as wrist crops
        from boneseg.data.wrist import WristCache

        return WristCache(root, cfg.wrist_margin) if cfg.wrist else MaskCache(root)

    cache = cache_at(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(cfg.data))
    teacher, teacher_test = teachers(cfg)
    if teacher is not None and info.is_main:
        teacher.check(train_s)
    train_items = [Item(s, cache, teacher) for s in train_s]
    val_items = [Item(s, cache) for s in val_s]
    if teacher_test is not None:
        test_s = discover(cfg.data, "test")
        if info.is_main:
            teacher_test.check(test_s)
        train_items += [Item(s, cache, teacher_test) for s in test_s]
    for i, folder in enumerate(cfg.pseudo):
        pcache = cache_at(Path(cfg.cache_dir) / f"pseudo-{i}" if cfg.cache_dir else default_cache_dir(folder))
        train_items += [Item(s, pcache) for s in discover(folder, skip_bad=cfg.skip_bad)]
    bad_names: list[list[str] | None] = [None]
    if info.is_main:
        items = train_items + val_items
        if check_only:
            check = cast(MaskCache, _ReadCheck())  # duck-typed: prepare_cache calls only fresh and get
            items = [Item(it.sample, check) for it in items]
        bad = prepare_cache(
            items,
            cfg.size,
            cfg.workers,
            reporter,
            "checking images and labels" if check_only else "caching masks",
            skip_bad=cfg.skip_bad,
        )
        bad_names = [sorted({str(it.sample.image) for it, _ in bad})]
        if bad:
            reporter.message(f"--skip-bad: left out {len(bad)} sample(s):")
            for _, problem in bad:
                reporter.message(f"  {problem}")
    D.broadcast_object(bad_names, info)
    skipped = set(bad_names[0] or ())
    train_items = [it for it in train_items if str(it.sample.image) not in skipped]
    val_items = [it for it in val_items if str(it.sample.image) not in skipped]
    if not train_items:
        raise UsageError(f"--fold {cfg.fold}: no training images left")
    if not val_items:
        raise DataError(f"--fold {cfg.fold}: no validation images left after --skip-bad")
    return train_items, val_items


def teachers(cfg: TrainConfig):
    """The run's `boneseg.data.teacher.Teacher` of the train images and of the test images (None: none)."""
    from boneseg.data.teacher import make_teacher

    if not cfg.teacher:
        return None, None
    train = make_teacher(cfg.teacher, cfg.teacher_weights, "--teacher")
    test = make_teacher(cfg.teacher_test, cfg.teacher_weights, "--teacher-test") if cfg.teacher_test else None
    return train, test


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)


def build_criterion(cfg: TrainConfig):
    """The run's segmentation loss, every setting from the config (terms, weights, distance clip)."""
    from boneseg.modelling.losses import build_loss

    return build_loss(cfg.loss, cfg.distance_clip)


def make_sampler(n_items: int, cfg: TrainConfig, info: D.DistInfo, train: bool):
    """The `EpochBatchSampler` of this rank over `n_items` (training: shuffled, incomplete last batch dropped)."""
    from boneseg.data.dataset import EpochBatchSampler

    return EpochBatchSampler(
        n_items,
        cfg.batch_size,
        cfg.seed,
        shuffle=train,
        drop_last=train and n_items >= cfg.batch_size * info.world_size,
        rank=info.rank,
        world_size=info.world_size,
    )


def epoch_steps(n_items: int, sampler, cfg: TrainConfig, info: D.DistInfo) -> int:
    """Optimizer steps per epoch of the training `sampler` over `n_items` images; warns when a rank gets
    fewer images than ``--batch-size`` (its one batch per epoch is that much smaller than asked)."""
    per_rank = -(-n_items // info.world_size)
    if per_rank < cfg.batch_size and info.is_main:
        warnings.warn(
            f"--batch-size {cfg.batch_size}: only {per_rank} training image(s) per "
            f"{'rank' if info.enabled else 'epoch'}, so each step takes {per_rank} (the batch is smaller than asked)",
            BonesegWarning,
            stacklevel=2,
        )
    return -(-sampler.batches_per_epoch() // cfg.accumulate)


def make_loader(items, cfg: TrainConfig, info: D.DistInfo, train: bool):
    """A DataLoader over `items` driven by an `EpochBatchSampler` (returns loader, sampler)."""
    from boneseg.data.dataset import Loader, SegDataset, collate
    from boneseg.data.transforms import build_augmentation
    from boneseg.modelling.heads import meta_table

    transform = build_augmentation(cfg.aug, cfg.crop, flip=cfg.unify_side is None) if train else None
    distance = cfg.distance_clip if build_criterion(cfg).needs_distance else None
    meta = meta_table(cfg.data) if cfg.meta != "none" else None
    soft = train and bool(cfg.teacher)
    dataset = SegDataset(items, cfg.size, transform, cfg.unify_side, cfg.channels, distance, meta, soft)
    sampler = make_sampler(len(items), cfg, info, train)
    loader = Loader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=info.device.type == "cuda",
        persistent_workers=cfg.workers > 0,
        worker_init_fn=_worker_init if cfg.workers > 0 else None,
        generator=torch.Generator(),
    )  # never touches the global RNG (resume exactness)
    return loader, sampler


# -- model and optimisation state -------------------------------------------------------------------


@dataclass
class State:
    """What the loop mutates; `checkpoint` turns it into a ``weights_only``-loadable dict."""

    cfg: TrainConfig
    model: torch.nn.Module  # the bare module (not the DDP wrapper)
    net: torch.nn.Module  # what forward/backward runs (DDP wrapper or the module)
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler
    ema: Any = None
    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps in all
    loss_sum: torch.Tensor | None = None
    loss_count: int = 0
    nonfinite_at: torch.Tensor | None = None  # first optimizer step with a non-finite loss (inf: none)
    best: float = -math.inf
    best_epoch: int = 0
    history: list = field(default_factory=list)
    tracker_ids: dict = field(default_factory=dict)  # --log name -> its run id (a resume continues that run)
    val_images: list[str] = field(default_factory=list)  # the validation fold's image names, as trained
    train_images: list[str] = field(default_factory=list)  # the training images' names, in sampler order
    criterion: Any = None
    device: torch.device = torch.device("cpu")
    world_size: int = 1  # processes training together: each step's images and the schedule depend on it
    rank: int = 0
    rank_losses: torch.Tensor | None = None  # (world_size, 2) float64: every rank's partial loss sum and count

    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the legacy MT19937 state (numpy's stub also allows a dict)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(int, np_state[2:4]),
            float(np_state[4]),
        ],
        "python": _py_state_to_plain(random.getstate()),
    }


def _py_state_to_plain(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint(st: State, full: bool) -> dict:
    """The checkpoint dict: ``config``, ``model`` (EMA weights when EMA is on), ``epoch``, ``step``,
    ``metrics``; with `full`, everything resuming needs."""
    last = st.history[-1] if st.history else {}
    state = {
        "config": st.cfg.to_dict(),
        "model": st.eval_model().state_dict(),
        "epoch": st.epoch,
        "step": st.step,
        "metrics": dict(last.items()),
        "val_images": st.val_images,
        "format": FORMAT,
    }
    if full:
        state.update(
            {
                "train_model": st.model.state_dict() if st.ema is not None else None,
                "optimizer": st.optimizer.state_dict(),
                "scheduler": st.schedule.state_dict(),
                "scaler": st.scaler.state_dict(),
                "ema": st.ema.state_dict() if st.ema is not None else None,
                "rng": _rng_state(),
                "batch": st.batch,
                "loss_sum": st.loss_sum.detach().cpu() if st.loss_sum is not None else None,
                "loss_count": st.loss_count,
                "rank_losses": st.rank_losses.cpu() if st.rank_losses is not None else None,
                "best": st.best,
                "best_epoch": st.best_epoch,
                "history": st.history,
                "tracker_ids": st.tracker_ids,
                "train_images": st.train_images,
                "world_size": st.world_size,
            }
        )
    return state


def _check_images(what: str, before: list[str] | None, now: list[str], sources: str) -> None:
    """Raise `DataError` when the image names `now` are not the run's recorded `before` (None: not recorded)."""
    if before is None or list(before) == now:
        return
    old, new = Counter(before), Counter(now)
    changed = sorted((old - new) + (new - old))
    how = f"{len(changed)} image(s) in or out, e.g. {changed[0]}" if changed else "the same images in another order"
    raise DataError(
        f"the {what} changed since the run started ({how}): {sources} differ; restore them, or start a new run"
    )


def restore(st: State, saved: dict) -> None:
    """Load a ``last.pt`` dict into `st` (model, optimiser, schedule, scaler, EMA, RNG, position).

    Raises:
        DataError: the validation fold or the training images (in their order) are not those the run
            trained with (checkpoints of older versions record only the former, or neither).
        UsageError: another number of processes than the run trained with.
    """
    ranks = saved.get("world_size")
    if ranks is not None and ranks != st.world_size:
        raise UsageError(
            f"--resume: the run trained with {ranks} process(es), this resume has {st.world_size}: each step's "
            f"images and the schedule's length depend on it; resume with {ranks} (torchrun --nproc-per-node, "
            "times the nodes), or start a new run"
        )
    _check_images("validation fold", saved.get("val_images"), st.val_images, "the dataset or splits file")
    _check_images(
        "training images",
        saved.get("train_images"),
        st.train_images,
        "the dataset, the splits file, a --pseudo folder, the --exclude list or --skip-bad",
    )
    st.model.load_state_dict(saved["train_model"] if saved.get("train_model") is not None else saved["model"])
    st.optimizer.load_state_dict(saved["optimizer"])
    st.schedule.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        st.scaler.load_state_dict(saved["scaler"])
    if st.ema is not None and saved.get("ema"):
        st.ema.load_state_dict(saved["ema"])
    st.epoch, st.batch, st.step = int(saved["epoch"]), int(saved["batch"]), int(saved["step"])
    ls = saved.get("loss_sum")
    st.loss_sum = ls.to(st.device) if ls is not None else None
    st.loss_count = int(saved["loss_count"])
    every = saved.get("rank_losses")  # each rank's own partial sums (older checkpoints: rank 0's only)
    if every is not None and len(every) == st.world_size:
        st.loss_sum = every[st.rank, 0].clone().to(st.device)
        st.loss_count = int(every[st.rank, 1].item())
    st.best, st.best_epoch, st.history = float(saved["best"]), int(saved["best_epoch"]), list(saved["history"])
    st.tracker_ids = dict(saved.get("tracker_ids") or {})
    _set_rng_state(saved["rng"])


def load_init(cfg: TrainConfig) -> dict:
    """The checkpoint ``--init-from`` names (a run folder's ``best.pt``, else its ``last.pt``, or a file),
    loaded ``weights_only``; records the file in ``cfg.init_from``.

    Raises:
        CheckpointError: nothing loadable there, or a network of another architecture, encoder, classes
            or input channels than `cfg` builds.
    """
    from boneseg.engine.checkpoint import resolve_checkpoint

    assert cfg.init_from is not None  # callers load only when --init-from is given
    path = resolve_checkpoint(cfg.init_from)
    state = load_checkpoint(path)
    theirs = state["config"]
    ours = cfg.to_dict()

    def network(c: dict) -> tuple:
        classes = c.get("classes") or CLASSES
        return c["arch"], c["encoder"], len(classes), int(c.get("in_channels") or 1)

    if network(theirs) != network(ours):

        def name(n: tuple) -> str:
            return f"{n[0]}/{n[1]} with {n[2]} classes and {n[3]} input channel(s)"

        raise CheckpointError(
            f"--init-from {path}: a {name(network(theirs))}, not the {name(network(ours))} "
            "this run builds (give the same --arch, --encoder and --channels, or start from "
            f"--config {path.parent / CONFIG})"
        )
    cfg.init_from = str(path)
    return state


def init_weights(model: torch.nn.Module, init: dict, path: str) -> str:
    """Load a whole network (encoder, decoder, heads) from the `load_init` checkpoint `init` into `model`,
    every tensor or none; returns what loaded, in words.

    Raises:
        CheckpointError: a tensor missing, left over or of another shape (naming the first).
    """
    theirs, ours = init["model"], model.state_dict()
    problems = (
        [f"{k!r} is missing" for k in ours if k not in theirs]
        + [f"{k!r} is not in this model" for k in theirs if k not in ours]
        + [
            f"{k!r} is {tuple(theirs[k].shape)}, not {tuple(v.shape)}"
            for k, v in ours.items()
            if k in theirs and theirs[k].shape != v.shape
        ]
    )
    if problems:
        raise CheckpointError(
            f"--init-from {path}: its weights do not fit this model: {problems[0]}"
            f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; give the options that shape the "
            f"network (heads, model_kwargs) as in its run, e.g. --config {Path(path).parent / CONFIG}"
        )
    model.load_state_dict(theirs)
    dice = (init.get("metrics") or {}).get("val_dice")
    return (
        f"initialised from {path}: all {len(ours)} tensors ({sum(p.numel() for p in model.parameters()):,} "
        f"parameters: encoder, decoder and heads) of epoch {init.get('epoch')}"
        + (f", val Dice {dice:.4f}" if isinstance(dice, float) else "")
    )


def build_state(
    cfg: TrainConfig, info: D.DistInfo, steps_per_epoch: int, init: dict | None = None, reporter: Reporter = SILENT
) -> State:
    """Model (on device, channels_last / SyncBN / DDP as fit, `--compile`d for the training steps; weights
    from the `load_init` checkpoint `init` when given), optimiser, schedule, scaler and EMA."""
    from boneseg.engine.ema import ModelEMA
    from boneseg.engine.optim import LRSchedule, build_optimizer
    from boneseg.modelling.compile import compile_model
    from boneseg.modelling.models import build_model

    model = build_model(cfg.to_dict())
    if init is not None:
        assert cfg.init_from is not None  # `init` is what load_init read from it
        reporter.message(init_weights(model, init, cfg.init_from))
    cuda = info.device.type == "cuda"
    if info.enabled and cuda:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(info.device)
    if _channels_last(cfg, info):
        model = model.to(memory_format=torch.channels_last)
    net = compile_model(model) if cfg.compile else model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[info.device] if cuda else None)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    total = cfg.epochs * steps_per_epoch
    schedule = LRSchedule(optimizer, cfg.scheduler, total, warmup=round(cfg.warmup * steps_per_epoch))
    scaler = torch.amp.GradScaler(info.device.type, enabled=_amp(cfg, info) and cfg.amp_dtype == "fp16")
    if scaler.is_enabled() and info.device.type == "cpu":
        warnings.warn(
            "--amp-dtype fp16 on a CPU runs about 30x slower than fp32 (use --no-amp or bf16)",
            BonesegWarning,
            stacklevel=2,
        )
    ema = ModelEMA(model, cfg.ema) if cfg.ema > 0 else None
    return State(
        cfg,
        model,
        net,
        optimizer,
        schedule,
        scaler,
        ema,
        device=info.device,
        world_size=info.world_size,
        rank=info.rank,
    )


def _amp(cfg: TrainConfig, info: D.DistInfo) -> bool:
    return bool(cfg.amp) if cfg.amp is not None else info.device.type == "cuda"


def _channels_last(cfg: TrainConfig, info: D.DistInfo) -> bool:
    return bool(cfg.channels_last) if cfg.channels_last is not None else info.device.type == "cuda"


def _autocast(cfg: TrainConfig, info: D.DistInfo):
    if not _amp(cfg, info):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
    if dtype is torch.bfloat16 and info.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(info.device.type, dtype=dtype)


# -- stop requests ----------------------------------------------------------------------------------


class StopFlag:
    """Set by SIGINT/SIGTERM while installed; the loop checks it after each optimizer step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop right now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


# -- the loop ---------------------------------------------------------------------------------------


def _seg_loss(criterion, logits, target, batch, cfg: TrainConfig, device) -> torch.Tensor:
    """The segmentation loss (on the carpal channels only for a wrist model; with distance maps when the
    loss needs them)."""
    dist = batch["dist"].to(device, non_blocking=True) if "dist" in batch else None
    if cfg.wrist:
        from boneseg.data.wrist import CARPAL_IDX

        logits, target = logits[:, CARPAL_IDX], target[:, CARPAL_IDX]
        dist = dist[:, CARPAL_IDX] if dist is not None else None
        return criterion(logits, target, dist, channels=CARPAL_IDX)
    return criterion(logits, target, dist) if dist is not None else criterion(logits, target)


def soft_target(mask: torch.Tensor, batch: dict, weight: float, device) -> torch.Tensor:
    """Distillation's target: ``(1 - weight) * label + weight * teacher`` for a labelled image, the
    teacher's probabilities alone for an unlabelled one (float, in [0, 1])."""
    teacher = batch["teacher"].to(device, non_blocking=True).float() / 255
    labelled = batch["labelled"].to(device, non_blocking=True).view(-1, 1, 1, 1)
    return torch.where(labelled, (1 - weight) * mask.float() + weight * teacher, teacher)


def _deep_loss(criterion, out: dict, target, batch, cfg: TrainConfig, device) -> torch.Tensor | float:
    """Deep supervision: the same segmentation loss on each auxiliary output (``out["deep"]``, finest
    first), weighted by ``--deep-supervision``."""
    deep = out.get("deep") or ()
    weights = cfg.deep_supervision or ()
    return sum(
        (w * _seg_loss(criterion, side, target, batch, cfg, device) for w, side in zip(weights, deep)),
        start=torch.zeros((), device=device),
    )


def train_epoch(
    st: State, loader, sampler, info: D.DistInfo, stop: StopFlag, reporter: Reporter = SILENT, pace: Pace | None = None
) -> bool:
    """Run the rest of epoch ``st.epoch`` from batch ``st.batch``; True when it stopped early."""
    cfg, device = st.cfg, info.device
    n_batches = sampler.batches_per_epoch()
    st.net.train()
    if st.loss_sum is None:
        st.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    if st.nonfinite_at is None:
        st.nonfinite_at = torch.full((), math.inf, dtype=torch.float64, device=device)
    with reporter.task(
        f"epoch {st.epoch + 1}/{cfg.epochs}", n_batches * cfg.batch_size, "img", st.batch * cfg.batch_size
    ) as task:
        return _epoch_steps(st, loader, n_batches, info, stop, task if reporter is not SILENT else None, pace)


def _epoch_steps(
    st: State, loader, n_batches: int, info: D.DistInfo, stop: StopFlag, task: Task | None, pace: Pace | None
) -> bool:
    """The batches of `train_epoch`; `task` (None: no loss read back each step) shows the progress."""
    cfg, device = st.cfg, info.device
    assert st.loss_sum is not None and st.nonfinite_at is not None  # set by train_epoch
    acc, criterion, channels_last = cfg.accumulate, st.criterion, _channels_last(cfg, info)
    for batch in loader:
        b = st.batch
        group_start = (b // acc) * acc
        group_size = min(acc, n_batches - group_start)
        sync = b + 1 - group_start == group_size
        x = normalize(batch["image"].to(device, non_blocking=True), cfg)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = batch["mask"].to(device, non_blocking=True)
        if "teacher" in batch:
            target = soft_target(target, batch, cfg.teacher_weight, device)
        # when distributed, net is the DDP wrapper
        no_sync = (
            cast(torch.nn.parallel.DistributedDataParallel, st.net).no_sync()
            if (info.enabled and not sync)
            else contextlib.nullcontext()
        )
        with no_sync:
            with _autocast(cfg, info):
                out = st.net(x, **heads.model_kwargs(st.model, batch, device))
            logits = out["masks"] if isinstance(out, dict) else out
            loss = _seg_loss(criterion, logits, target, batch, cfg, device)
            if isinstance(out, dict):
                loss = loss + heads.aux_loss(out, batch, target, cfg)
                loss = loss + _deep_loss(criterion, out, target, batch, cfg, device)
            st.scaler.scale(loss / group_size).backward()
        st.loss_sum += loss.detach().double()
        st.loss_count += 1
        st.batch += 1
        if sync:
            if cfg.clip:
                st.scaler.unscale_(st.optimizer)
                torch.nn.utils.clip_grad_norm_(st.model.parameters(), cfg.clip)
            st.scaler.step(st.optimizer)
            st.scaler.update()
            st.optimizer.zero_grad(set_to_none=True)
            st.schedule.step()
            if st.ema is not None:
                st.ema.update(st.model)
            st.step += 1
            # on the device, no sync: read by `check_finite` before anything is saved
            st.nonfinite_at = torch.where(st.loss_sum.isfinite(), st.nonfinite_at, st.nonfinite_at.clamp_max(st.step))
            if pace is not None:
                pace.step(st.step)
        if task is not None:
            task.update(
                st.batch * cfg.batch_size, info=f"loss {loss.item():.4f}  lr {st.optimizer.param_groups[0]['lr']:.2e}"
            )
        if sync:
            wants = stop.signal is not None or (cfg.max_steps is not None and st.step >= cfg.max_steps)
            if D.any_rank(wants, info):
                return st.batch < n_batches
    return False


def _gather_losses(st: State, info: D.DistInfo) -> torch.Tensor | None:
    """Every rank's partial loss sum and count of the unfinished epoch, for ``last.pt`` (a collective):
    each rank resumes its own, so the resumed epoch's ``train_loss`` is the uninterrupted run's."""
    if st.loss_sum is None:
        return None
    own = torch.stack(
        [st.loss_sum.double(), torch.tensor(float(st.loss_count), dtype=torch.float64, device=info.device)]
    )
    return D.all_gather(own, info)


@torch.no_grad()
def check_finite(st: State, info: D.DistInfo, out: Path) -> None:
    """Raise `NonFiniteLoss` when a loss since the last check or a weight is NaN/inf (one sync).

    Raises:
        NonFiniteLoss: naming the first such step; called before anything is saved, so the run folder
            keeps the last good state.
    """
    assert st.nonfinite_at is not None  # set by train_epoch
    weights_ok = torch.stack([p.isfinite().all() for p in st.model.parameters()]).all()
    first = torch.where(weights_ok, st.nonfinite_at, st.nonfinite_at.clamp_max(st.step)).clone()
    at = D.all_reduce_min(first, info).item()
    if math.isfinite(at):
        kept = f"{out / LAST} keeps the last good state" if (out / LAST).is_file() else f"no {LAST} was written"
        raise NonFiniteLoss(
            f"training diverged: the loss or the weights became non-finite (NaN/inf) at step "
            f"{int(at)} (epoch {st.epoch + 1}); stopped, {kept} (try a lower --lr or --clip)"
        )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader, cfg: TrainConfig, info: D.DistInfo, criterion=None, images: list | None = None
) -> dict:
    """Competition Dice per class over the validation images, on the device (reduced over ranks).

    Predictions are ``sigmoid(logits) > 0.5`` at the training size. Returns ``{"val_dice", "val_dice_per_class",
    "val_loss"}`` (``val_dice`` over the carpal classes for a wrist model). With `images` (a list), the first
    ``cfg.log_images`` (image, prediction, label) triples of this rank are appended to it (for tracking).
    """
    from boneseg.metrics import dice

    model.eval()
    device = info.device
    sums = torch.zeros(len(CLASSES), dtype=torch.float64, device=device)
    stats = torch.zeros(2, dtype=torch.float64, device=device)  # images, loss * images
    channels_last = _channels_last(cfg, info)
    for batch in loader:
        x = normalize(batch["image"].to(device, non_blocking=True), cfg)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = batch["mask"].to(device, non_blocking=True)
        with _autocast(cfg, info):
            logits = model(x, **heads.model_kwargs(model, batch, device))
        sums += dice(logits > 0, target).sum(0)
        n = len(x)
        stats[0] += n
        if criterion is not None:
            stats[1] += _seg_loss(criterion, logits, target, batch, cfg, device).double() * n
        if images is not None and len(images) < cfg.log_images:
            for i in range(min(n, cfg.log_images - len(images))):
                images.append(
                    (batch["image"][i, 0].numpy(), (logits[i] > 0).cpu().numpy(), batch["mask"][i].numpy().astype(bool))
                )
    D.all_reduce_sum(sums, info)
    D.all_reduce_sum(stats, info)
    per_class = (sums / stats[0].clamp_min(1)).tolist()
    count = stats[0].item()
    headline = per_class
    if cfg.wrist:
        from boneseg.data.wrist import CARPAL_IDX

        headline = [per_class[i] for i in CARPAL_IDX]
    return {
        "val_dice": float(np.mean(headline)) if count else None,
        "val_dice_per_class": dict(zip(CLASSES, per_class)) if count else None,
        "val_loss": stats[1].item() / count if count else None,
    }


def write_outputs(st: State, out: Path, best: bool, last: bool = True) -> None:
    """``best.pt`` (when `best`) and ``last.pt`` (when `last`) as one step, then ``metrics.jsonl`` rewritten from
    the history.

    Both checkpoints are written completely before either replaces its predecessor, ``best.pt`` renamed first: a
    run killed or out of disk in between never resumes from a ``last.pt`` whose best epoch ``best.pt`` does not
    hold (it would keep an older model as the best), nor keeps a new ``best.pt`` without a ``last.pt``.

    Raises:
        DataError: a write failed (a full disk), saying what was kept and how to continue.
    """
    states = {out / BEST: checkpoint(st, full=False)} if best else {}
    if last:
        states[out / LAST] = checkpoint(st, full=True)
    try:
        if states:
            save_checkpoints(states)
        with atomic_open(out / METRICS, "w", force=True) as fh:
            for line in st.history:
                fh.write(json.dumps(line) + "\n")
    except DataError as exc:
        if (out / LAST).is_file():
            then = f"{out / LAST} keeps the last saved state: free space, then continue with --resume"
        else:
            then = "no checkpoint was kept: free space and run the same command again"
        raise DataError(f"{exc}; {then}") from None
    drop_previous(out)


CPU_WARN_SECONDS = 2 * 3600
"""A CPU run estimated to take longer than this gets a `BonesegWarning`."""
PACE_STEPS = 3
"""Steps timed after the first (which warms up) to estimate the time per step."""


def _duration(seconds: float) -> str:
    """``1h05m``, ``3m20s`` or ``12s``."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Pace:
    """Times `PACE_STEPS` steps after the run's first and reports the time per step and the time left
    to `last_step` once; on a CPU, warns when that exceeds `CPU_WARN_SECONDS`."""

    def __init__(self, first_step: int, last_step: float, reporter: Reporter, cpu: bool, clock=time.perf_counter):
        self.start, self.last, self.reporter, self.cpu, self.clock = first_step + 1, last_step, reporter, cpu, clock
        self.t0: float | None = None

    def step(self, step: int) -> None:
        """Called after optimizer step number `step`."""
        if step == self.start:
            self.t0 = self.clock()
        elif self.t0 is not None and step == self.start + PACE_STEPS:
            per_step = (self.clock() - self.t0) / PACE_STEPS
            left = per_step * (self.last - step)
            self.reporter.message(
                f"{per_step:.3g} s per step; about {_duration(left)} left "
                f"({self.last - step:.0f} steps, validation not included)"
            )
            if self.cpu and left > CPU_WARN_SECONDS:
                warnings.warn(
                    f"training on the CPU will take about {_duration(left)} more "
                    f"({per_step:.3g} s per step); a GPU (--device cuda) is far faster",
                    BonesegWarning,
                    stacklevel=2,
                )
            self.t0 = None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train(config: TrainConfig | dict, reporter: Reporter = SILENT) -> dict:
    """Train one model as ``boneseg train`` does; returns a summary dict.

    Args:
        config: a `TrainConfig` or a dict of its fields (``data``, ``out``, ``arch``, ``encoder``, ``size`` …).
            On ``resume`` a dict only needs the keys it wants to set; the run's saved config supplies the rest.
        reporter: where progress goes (rank 0): start-up facts, the pace after the first steps, a bar per
            epoch and one line per epoch (`boneseg.progress`; the CLI's shows rich bars).

    Returns:
        ``{"run", "epochs_done", "steps", "best_val_dice", "best_epoch", "last", "stopped", "seconds"}``.

    Raises:
        UsageError, DataError, OutputExistsError, CheckpointError: bad options or inputs (before training).
        TrainingInterrupted: SIGINT/SIGTERM; ``last.pt`` is saved first.
    """
    with StopFlag() as stop:  # installed first: a signal during setup stops after the first step
        return _train(config, reporter, stop)


def resolve_config(config: TrainConfig | dict) -> tuple[TrainConfig, dict | None]:
    """The checked config a `train` call runs with (on resume: merged with the run's saved one), and the
    ``last.pt`` it resumes from (None for a new run); reads, writes nothing.

    Raises:
        UsageError, CheckpointError: bad options, nothing to resume, a resume that changes the run.
    """
    given = dataclasses.asdict(config) if isinstance(config, TrainConfig) else dict(config)
    cfg = TrainConfig.from_any(given)
    if not cfg.out:
        raise UsageError("--out RUN is required")
    out = Path(cfg.out)
    saved = None
    if cfg.resume:
        if not (out / LAST).is_file():
            raise CheckpointError(f"--resume: {out / LAST} not found (nothing to resume; drop --resume)")
        saved = load_checkpoint(out / LAST)
        if "optimizer" not in saved:
            raise CheckpointError(f"{out / LAST}: holds no training state to resume from")
        cfg = merge_resume(
            {k: v for k, v in given.items() if k not in ("resume", "force")}
            if not isinstance(config, TrainConfig)
            else given,
            saved["config"],
        )
    check_config(cfg)
    return cfg, saved


def _train(config: TrainConfig | dict, reporter: Reporter, stop: StopFlag) -> dict:
    import os

    from boneseg.io import hold, on_interrupt

    given = config.out if isinstance(config, TrainConfig) else config.get("out")
    main = int(os.environ.get("RANK", "0")) == 0
    left = LEFT_ON_INTERRUPT  # a second Ctrl-C: what the run folder keeps
    with hold(given, interrupted=left) if main and given else on_interrupt(given, leaves=left):  # one writer
        if main and given and Path(given).is_dir():
            restore_previous(Path(given))  # a --force run that died before its first checkpoint
        cfg, saved = resolve_config(config)
        out = Path(cfg.out)
        init = load_init(cfg) if cfg.init_from and saved is None else None  # a resume never re-initialises
        if saved is None and init is None:  # offline without cached weights: one error now, no run folder
            from boneseg.modelling.models import fetch_pretrained

            fetch_pretrained(cfg.encoder, cfg.encoder_weights, cfg.arch)
        info = D.setup(cfg.device, cfg.dist_timeout)
        try:
            with contextlib.ExitStack() as folder:
                # the run folder is prepared only once every check has passed (options, data, model)
                start = lambda: folder.enter_context(run_folder(out, cfg, info))  # noqa: E731
                return _run(cfg, info, saved, out, reporter if info.is_main else SILENT, stop, init, start)
        except RuntimeError as exc:
            failure = D.as_rank_failure(exc, info)
            if failure is None:
                raise
            raise failure from exc
        finally:
            D.cleanup(info)


def _write_inference_changes(out: Path, cfg: TrainConfig, saved: dict, reporter: Reporter) -> None:
    """A resume that changes an inference option (`INFERENCE_ON_RESUME`) writes it into ``best.pt`` and
    ``last.pt`` too, before ``config.json``: `predict` reads the checkpoint, so a finished run resumed with
    ``--boundary-sharpen 0`` predicts without sharpening, as its config says."""
    new = cfg.to_dict()
    fields = TrainConfig.__dataclass_fields__
    changed = {k: new[k] for k in INFERENCE_ON_RESUME if saved.get(k, fields[k].default) != new[k]}
    if not changed:
        return
    states = {}
    for name in (BEST, LAST):
        if (out / name).is_file():
            state = load_checkpoint(out / name)
            state["config"] = dict(state["config"], **changed)
            states[out / name] = state
    save_checkpoints(states)  # both or neither
    written = [path.name for path in states]
    settings = ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in changed.items())
    reporter.message(f"--resume: {settings} (written to {', '.join(written)} and {CONFIG})")


def _patience_spent(st: State) -> bool:
    """``--patience N``: N validations since the best one (counted from the history a checkpoint keeps,
    so a resumed run stops where an uninterrupted one does)."""
    return _spent(st.cfg.patience, st.history, st.best_epoch)


def _spent(patience: int | None, history: Sequence[dict], best_epoch: int) -> bool:
    if patience is None:
        return False
    since = sum(1 for line in history if line["val_dice"] is not None and line["epoch"] > best_epoch)
    return since >= patience


def _run(
    cfg: TrainConfig,
    info: D.DistInfo,
    saved: dict | None,
    out: Path,
    reporter: Reporter,
    stop: StopFlag,
    init: dict | None = None,
    start: Callable[[], Any] = lambda: None,
) -> dict:
    t0 = time.time()
    _seed_everything(cfg.seed)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_items, val_items = build_data(cfg, info, reporter)
    train_loader, train_sampler = make_loader(train_items, cfg, info, train=True)
    val_loader, _ = make_loader(val_items, cfg, info, train=False)
    steps_per_epoch = epoch_steps(len(train_items), train_sampler, cfg, info)
    st = build_state(cfg, info, steps_per_epoch, init, reporter)
    st.criterion = build_criterion(cfg).to(info.device)
    st.val_images = sorted(it.sample.name for it in val_items)
    st.train_images = [it.sample.name for it in train_items]
    if saved is not None:
        restore(st, saved)
    ranks = f" x {info.world_size} ranks" if info.world_size > 1 else ""
    reporter.message(
        f"device {info.device}{ranks}  {parameter_count(st.model)}  "
        f"{steps_per_epoch} steps per epoch ({len(train_items)} train / {len(val_items)} val images)"
    )
    start()
    last_step = min(cfg.epochs * steps_per_epoch, cfg.max_steps if cfg.max_steps is not None else math.inf)
    pace = Pace(st.step, last_step, reporter, info.device.type == "cpu") if info.is_main else None
    if info.is_main:
        if saved is not None:
            _write_inference_changes(out, cfg, saved["config"], reporter)
        write_json(out / CONFIG, cfg.to_dict(), force=True)
    from boneseg.engine.tracking import make_tracker, overlays

    tracker = make_tracker(cfg.log, out, cfg.to_dict(), st.tracker_ids.get(cfg.log), st.epoch) if info.is_main else None
    if tracker is not None and tracker.run_id:
        st.tracker_ids[cfg.log] = tracker.run_id
    # a resume given a --max-steps the run already reached trains no further step
    stopped = cfg.max_steps is not None and st.step >= cfg.max_steps and st.epoch < cfg.epochs
    with contextlib.closing(tracker) if tracker is not None else contextlib.nullcontext():
        while st.epoch < cfg.epochs and not _patience_spent(st) and not stopped:
            e_start = time.time()
            train_sampler.set_epoch(st.epoch, st.batch)
            stopped = train_epoch(st, train_loader, train_sampler, info, stop, reporter, pace)
            check_finite(st, info, out)
            if stopped:
                break
            assert st.loss_sum is not None  # set by train_epoch
            train_loss = D.all_reduce_sum(
                torch.stack([st.loss_sum, torch.tensor(float(st.loss_count), dtype=torch.float64, device=info.device)]),
                info,
            )
            st.epoch, st.batch = st.epoch + 1, 0
            line = {
                "epoch": st.epoch,
                "step": st.step,
                "train_loss": (train_loss[0] / train_loss[1].clamp_min(1)).item(),
                "val_dice": None,
                "val_dice_per_class": None,
                "val_loss": None,
                "lr": st.optimizer.param_groups[0]["lr"],
            }
            st.loss_sum, st.loss_count = None, 0
            shots: list | None = [] if tracker is not None and cfg.log_images > 0 else None
            if st.epoch % cfg.val_every == 0 or st.epoch == cfg.epochs:
                D.broadcast_buffers(st.eval_model(), info)  # every rank scores the model rank 0 saves
                line.update(evaluate(st.eval_model(), val_loader, cfg, info, st.criterion, shots))
            line["seconds"] = round(time.time() - e_start, 3)
            is_best = line["val_dice"] is not None and line["val_dice"] > st.best
            if is_best:
                st.best, st.best_epoch = line["val_dice"], st.epoch
            st.schedule.observe(line["val_dice"])
            st.history.append(line)
            done = st.epoch == cfg.epochs or _patience_spent(st)
            if info.is_main:
                write_outputs(st, out, best=is_best, last=st.epoch % cfg.save_every == 0 or done)
                if tracker is not None:
                    tracker.log_epoch(line)
                    if shots:
                        tracker.images("val/prediction_vs_label", overlays(shots), st.epoch)
                vd = f"{line['val_dice']:.4f}" if line["val_dice"] is not None else "-"
                best = f"{st.best:.4f} (epoch {st.best_epoch})" if st.best > -math.inf else "-"
                reporter.message(
                    f"epoch {st.epoch}/{cfg.epochs}  step {st.step}  train_loss {line['train_loss']:.4f}  "
                    f"val_dice {vd}  best {best}  "
                    f"lr {line['lr']:.2e}  {line['seconds']:.1f}s"
                )
            D.barrier(info)
            if stop.signal is not None or (cfg.max_steps is not None and st.step >= cfg.max_steps):
                stopped = not done
                break
        if stopped:
            st.rank_losses = _gather_losses(st, info)
            if info.is_main:
                write_outputs(st, out, best=False)
        if st.epoch < cfg.epochs and _patience_spent(st):
            reporter.message(
                f"early stop (--patience {cfg.patience}): no better val Dice in {cfg.patience} "
                f"validation(s) since epoch {st.best_epoch}"
            )
        D.barrier(info)
    summary = {
        "run": str(out),
        "epochs_done": st.epoch,
        "steps": st.step,
        "best_val_dice": st.best if st.best > -math.inf else None,
        "best_epoch": st.best_epoch or None,
        "last": st.history[-1] if st.history else None,
        "stopped": stopped,
        "early_stopped": st.epoch < cfg.epochs and _patience_spent(st),
        "train_images": len(train_items),
        "val_images": len(val_items),
        "rank": info.rank,
        "world_size": info.world_size,
        "seconds": round(time.time() - t0, 3),
    }
    if stopped and stop.signal is not None:
        raise TrainingInterrupted(
            f"interrupted at epoch {st.epoch + 1}, step {st.step}; {out / LAST} saved. "
            f"Continue with: boneseg train {cfg.data} --out {out} --resume"
        )
    return summary


# -- dry run ----------------------------------------------------------------------------------------


def estimate_memory(model: torch.nn.Module, cfg: TrainConfig) -> dict:
    """Bytes a training step holds: weights, gradients and optimiser state (AdamW 2, SGD 1) of the weights
    that train (a frozen trunk has neither), the EMA copy, and activations, measured as the tensors autograd
    keeps for the backward pass in one float32 forward/backward of two blank images at the training side on
    the CPU (per image, times the batch size; mixed precision roughly halves them). Allocator overhead and
    workspaces are not included."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    side = cfg.crop or cfg.size
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(torch.zeros(2, in_channels(cfg), side, side))
    outputs = list(out.values()) if isinstance(out, dict) else [out]
    outputs = [t for o in outputs for t in (o if isinstance(o, (list, tuple)) else [o])]
    torch.stack([o.float().sum() for o in outputs if isinstance(o, torch.Tensor)]).sum().backward()
    per_image = sum(kept.values()) // 2
    mem = {
        "weights": weights,
        "gradients": trained,
        "optimizer": trained * (2 if cfg.optimizer == "adamw" else 1),
        "ema": weights if cfg.ema > 0 else 0,
        "activations": per_image * cfg.batch_size,
        "activations_per_image": per_image,
    }
    mem["total"] = sum(v for k, v in mem.items() if k != "activations_per_image")
    return mem


def parameter_count(model: torch.nn.Module) -> str:
    """``"N parameters"``, with how many of them train when some are frozen (a SAM2-UNet's trunk)."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{total:,} parameters" + (f" ({trained:,} trained, the rest frozen)" if trained < total else "")


def dry_run(config: TrainConfig | dict, reporter: Reporter = SILENT) -> dict:
    """What `train` would do, checked without writing anything (no run folder, no mask cache, no download).

    Checks the options, the run folder, the data (pairing, folds, every image header and label; not the
    pixels), builds the model (with the ``--init-from`` weights) on the CPU and runs it once.

    Returns:
        ``{"config", "parameters", "parameters_text", "train_images", "val_images", "steps_per_epoch", "steps",
        "memory"}``: ``parameters_text`` is `parameter_count`'s line, ``steps`` what this invocation would run
        (to the schedule's end or ``--max-steps``), ``memory`` the `estimate_memory` bytes.
    """
    from boneseg.modelling.models import build_model

    cfg, saved = resolve_config(config)
    check_run_dir(Path(cfg.out), cfg.resume, cfg.force)
    init = load_init(cfg) if cfg.init_from and saved is None else None
    info = D.DistInfo(device=D.resolve_device(cfg.device))
    train_items, val_items = build_data(cfg, info, reporter, check_only=True)
    steps_per_epoch = epoch_steps(len(train_items), make_sampler(len(train_items), cfg, info, train=True), cfg, info)
    weights = None if cfg.encoder_weights == "imagenet" else cfg.encoder_weights  # same shapes, no download
    model = build_model(dict(cfg.to_dict(), encoder_weights=weights))
    if init is not None:
        assert cfg.init_from is not None  # `init` is what load_init read from it
        reporter.message(init_weights(model, init, cfg.init_from))
    done = int(saved["step"]) if saved is not None else 0
    last = min(cfg.epochs * steps_per_epoch, cfg.max_steps if cfg.max_steps is not None else math.inf)
    finished = None
    if saved is not None and int(saved["epoch"]) >= cfg.epochs:
        finished = f"the run finished its {cfg.epochs} epochs"
    elif saved is not None and _spent(cfg.patience, saved.get("history") or [], int(saved.get("best_epoch") or 0)):
        finished = f"the run stopped early at epoch {saved['epoch']} (--patience {cfg.patience})"
    elif saved is not None and cfg.max_steps is not None and done >= cfg.max_steps:
        finished = f"the run reached --max-steps {cfg.max_steps}"
    return {
        "finished": finished,
        "config": cfg.to_dict(),
        "device": str(info.device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameters_text": parameter_count(model),
        "train_images": len(train_items),
        "val_images": len(val_items),
        "steps_per_epoch": steps_per_epoch,
        "steps": 0 if finished else max(0, int(last) - done),
        "memory": estimate_memory(model, cfg),
    }
