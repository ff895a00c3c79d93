"""A run's options checked against what training can do (`check_config`: names of optimisers, schedules,
losses, trackers installed, architecture and encoder, every number in range), and the checked config a
`train` call runs with (`resolve_config`)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

from boneseg.data.transforms import AUGMENTATIONS
from boneseg.errors import BonesegWarning, UsageError, suggest
from boneseg.runs.config import TrainConfig, check_input, check_teacher, load_config


def resolve_config(config: TrainConfig | Mapping[str, Any]) -> tuple[TrainConfig, dict | None]:
    """The checked config a `train` call runs with (on resume: merged with the run's saved one,
    `boneseg.runs.config.load_config`), and the ``last.pt`` it resumes from (None for a new run); reads,
    writes nothing.

    Raises:
        UsageError, CheckpointError: bad options, nothing to resume, a resume that changes the run.
    """
    cfg, saved = load_config(config)
    check_config(cfg)
    return cfg, saved


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
