"""Run tracking for ``boneseg train --log tensorboard|wandb|none``.

Each validation logs the epoch's scalars (``train_loss``, ``val_dice``, ``val_loss``, ``lr``, the per-class
Dice) and a few prediction-vs-label overlays (`boneseg.plots.overlay_compare`: prediction red, label green,
agreement yellow). TensorBoard writes to ``RUN/tensorboard``. Weights & Biases is imported only when asked
for, must be installed, and must already be logged in (``wandb login`` stores the key in the user's own
netrc / environment, where wandb finds it) unless ``WANDB_MODE`` keeps it offline: boneseg never reads,
writes or stores a key, and the run config sent to W&B is the plain training config (which holds none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from boneseg.errors import UsageError, suggest

LOGGERS = ("none", "tensorboard", "wandb")
WANDB_LOCAL = ("offline", "dryrun", "disabled")
"""``WANDB_MODE`` values under which W&B sends nothing, and so needs no login."""


def check_logger(name: str | None) -> str:
    """The canonical ``--log`` value. Raises `UsageError` for an unknown one."""
    name = str(name or "none").lower()
    if name not in LOGGERS:
        raise UsageError(f"--log {name!r}: unknown tracker{suggest(name, LOGGERS)}")
    return name


def check_tracker(name: str | None) -> str:
    """`check_logger`, and the tracker usable: its package installed (W&B: logged in, or offline), so a
    run stops before any caching or training. Raises `UsageError`."""
    name = check_logger(name)
    if name == "tensorboard":
        _summary_writer()
    elif name == "wandb":
        _wandb()
    return name


class Tracker:
    """Base tracker: scalars per epoch and overlay images per validation; subclasses write them.

    `run_id` names the tracker's own run where it has one (W&B), so a resumed training continues it.
    """

    run_id: str | None = None

    def log_epoch(self, line: Mapping) -> None:
        step = int(line["epoch"])
        scalars = {k: line[k] for k in ("train_loss", "val_dice", "val_loss", "lr") if line.get(k) is not None}
        for cls, v in (line.get("val_dice_per_class") or {}).items():
            scalars[f"val_dice_per_class/{cls}"] = v
        self.scalars(scalars, step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def images(self, tag: str, images: Sequence[np.ndarray], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--log tensorboard needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter


class TensorBoardTracker(Tracker):
    """`start`: the epochs already done; events of later epochs (logged before an interruption that the
    resume repeats) are purged, so each epoch appears once."""

    def __init__(self, out: Path, start: int = 0):
        self.writer = _summary_writer()(str(Path(out) / "tensorboard"), purge_step=start + 1)

    def scalars(self, values, step):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def images(self, tag, images, step):
        for i, im in enumerate(images):
            self.writer.add_image(f"{tag}/{i}", im, step, dataformats="HWC")
        self.writer.flush()

    def close(self):
        self.writer.close()


def _wandb():
    try:
        import wandb
    except ImportError:
        raise UsageError("--log wandb needs the wandb package (pip install wandb), then `wandb login`") from None
    if os.environ.get("WANDB_MODE", "").lower() in WANDB_LOCAL:
        return wandb  # nothing is sent: no login needed
    try:
        key = wandb.api.api_key
    except Exception:  # noqa: BLE001 - wandb raises its own types when no settings exist
        key = None
    if not key:
        raise UsageError(
            "--log wandb: not logged in to Weights & Biases (run `wandb login` first; "
            "boneseg never takes a key on the command line or in a config file)"
        )
    return wandb


class WandbTracker(Tracker):
    def __init__(self, out: Path, config: Mapping, run_id: str | None = None):
        wandb = _wandb()
        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "boneseg"),
            name=Path(out).resolve().name,
            dir=str(out),
            config=dict(config),
            id=run_id,
            resume="allow",
        )
        self.run_id = self.run.id

    def scalars(self, values, step):
        self.run.log(dict(values), step=step)

    def images(self, tag, images, step):
        self.run.log({tag: [self.wandb.Image(im) for im in images]}, step=step)

    def close(self):
        self.run.finish()


def make_tracker(
    name: str | None, out: str | os.PathLike, config: Mapping, run_id: str | None = None, start: int = 0
) -> Tracker | None:
    """The tracker for ``--log`` (None for ``none``); `run_id`: the tracker run to continue (W&B); `start`:
    the epochs a resumed run already did (TensorBoard drops what it logged after them).

    Raises:
        UsageError: unknown name, missing package, or W&B without a login.
    """
    name = check_tracker(name)
    if name == "tensorboard":
        return TensorBoardTracker(Path(out), start)
    if name == "wandb":
        return WandbTracker(Path(out), config, run_id)
    return None


def overlays(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """(image (H, W) uint8, pred (29, H, W) bool, label (29, H, W) bool) -> RGB overlays (H, W, 3) uint8."""
    from boneseg.plots import overlay_compare

    return [overlay_compare(im, pred, gt) for im, pred, gt in samples]
