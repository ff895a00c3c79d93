"""A run's config: the schema (`TrainConfig`, the one source of a run's defaults), what a resume may change
(`FIXED_ON_RESUME`, `RUNTIME`, `CHANGEABLE_ON_RESUME`), the checks that need no training machinery, and the
config a call runs with (`load_config`: on ``resume`` the run's saved one merged with the new options).

Training (`boneseg.engine`) and inference (`boneseg.inference`, through `boneseg.runs.run.Run`) both read
it from here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boneseg.classes import CLASSES
from boneseg.data.transforms import DEFAULT_MEAN, DEFAULT_STD, check_side, in_channels
from boneseg.data.wrist import DEFAULT_MARGIN
from boneseg.errors import CheckpointError, UsageError, suggest
from boneseg.runs.files import LAST, checkpoint_names

ALIASES = {"unify_hands": "unify_side"}
"""Other names of a field: the option's own name (``--unify-hands``) and older saved configs use them."""
NAMED_BY_A_NEW_RUN = ("arch", "encoder", "size")
"""Options a command's new run must give (on the command line or in its config file), as the command line's
contract has it: a model is chosen, never defaulted into. `TrainConfig`'s defaults for them serve Python
callers (a config for `normalize`, a quick experiment); a ``--resume`` takes them from the run."""
DERIVED = ("in_channels", "classes")
"""Keys a saved config holds that follow from the others: accepted and dropped."""


def field_name(key: str) -> str:
    """The `TrainConfig` field a key names: dashes as underscores, an `ALIASES` name as its field."""
    key = str(key).replace("-", "_")
    return ALIASES.get(key, key)


def _unaliased(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with each `ALIASES` key under its field's name (the field's own key wins)."""
    out = {k: v for k, v in config.items() if k not in ALIASES}
    for alias, name in ALIASES.items():
        if alias in config and name not in config:
            out[name] = config[alias]
    return out


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
    def from_any(cls, config: TrainConfig | Mapping[str, Any]) -> TrainConfig:
        """A config from a dataclass or a dict; unknown keys raise `UsageError` with suggestions."""
        if isinstance(config, TrainConfig):
            return dataclasses.replace(config)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in config if k not in names and k not in DERIVED and k not in ALIASES]
        if unknown:
            raise UsageError(f"unknown training option {unknown[0]!r}{suggest(unknown[0], names)}")
        return cls(**{k: v for k, v in _unaliased(config).items() if k in names})

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> TrainConfig:
        """The config of a saved run (a checkpoint's or ``RUN/config.json``): keys this version does not
        know (derived ones, those of other versions) and runtime options are ignored, missing ones (or a
        null where the option takes none) take the defaults above."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in RUNTIME}
        return cls(
            **{
                k: v
                for k, v in _unaliased(saved).items()
                if k in fields and (v is not None or fields[k].default is None)
            }
        )

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

# -- checks that need no training machinery ---------------------------------------------------------


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
    from boneseg.modelling.losses import build_loss

    if cfg.teacher_test and build_loss(cfg.loss, cfg.distance_clip).needs_distance:
        raise UsageError(
            f"--loss {cfg.loss} with --teacher-test: the test images have no labels to measure distances from"
        )


# -- resume -----------------------------------------------------------------------------------------


def _same_setting(key: str, given: Any, saved: Any) -> bool:
    """Whether option `key` given to a resume is the run's saved setting, in any spelling: an alias
    (``unet++``), a loss written otherwise (``bce + 1*dice``), a path written otherwise (``./s.json``), a run
    folder given to ``--init-from`` (the run saved the checkpoint file it took from there), a name in
    other case (``AdamW``), one number for a list of one (``mean: 0.449``)."""
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
        return os.path.abspath(saved) in checkpoint_names(given)
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
    merged = {k: v for k, v in saved.items() if k not in (*DERIVED, *RUNTIME)}
    for key in (*RUNTIME, *CHANGEABLE_ON_RESUME):
        if key in cfg_given and cfg_given[key] is not None:
            merged[key] = cfg_given[key]
    merged["resume"] = True
    return TrainConfig.from_any(merged)


def load_config(config: TrainConfig | Mapping[str, Any]) -> tuple[TrainConfig, dict | None]:
    """The config a `train` call runs with (on resume: `merge_resume` of the given options with the run's
    saved ones), not yet checked (`boneseg.engine.checks.check_config`), and the `LAST` checkpoint it
    resumes from (None for a new run); reads, writes nothing.

    Raises:
        UsageError, CheckpointError: no ``--out``, nothing to resume, a resume that changes the run.
    """
    from boneseg.runs.checkpoint import load_checkpoint

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
    return cfg, saved
