"""What the training loop mutates (`State`): model, optimiser, schedule, scaler, EMA, RNG and position; its
checkpoint dicts and their files (`write_outputs`), restoring it on resume, ``--init-from`` weights, and the
device settings (AMP, channels_last) every step reads."""

from __future__ import annotations

import contextlib
import json
import math
import random
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boneseg.classes import CLASSES
from boneseg.engine import distributed as D
from boneseg.errors import BonesegWarning, CheckpointError, DataError, UsageError
from boneseg.io import atomic_open, weight_mismatches
from boneseg.progress import SILENT, Reporter
from boneseg.runs.checkpoint import FORMAT, load_checkpoint, save_checkpoints
from boneseg.runs.config import TrainConfig
from boneseg.runs.files import BEST, CONFIG, LAST, METRICS, drop_previous


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
    from boneseg.runs.checkpoint import resolve_checkpoint

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
    problems = weight_mismatches(ours, theirs)
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

    model = build_model(cfg)
    if init is not None:
        assert cfg.init_from is not None  # `init` is what load_init read from it
        reporter.message(init_weights(model, init, cfg.init_from))
    cuda = info.device.type == "cuda"
    if info.enabled and cuda:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(info.device)
    if uses_channels_last(cfg, info):
        model = model.to(memory_format=torch.channels_last)
    net = compile_model(model) if cfg.compile else model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[info.device] if cuda else None)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    total = cfg.epochs * steps_per_epoch
    schedule = LRSchedule(optimizer, cfg.scheduler, total, warmup=round(cfg.warmup * steps_per_epoch))
    scaler = torch.amp.GradScaler(info.device.type, enabled=uses_amp(cfg, info) and cfg.amp_dtype == "fp16")
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


def uses_amp(cfg: TrainConfig, info: D.DistInfo) -> bool:
    """``--amp``, or on with CUDA when not given."""
    return bool(cfg.amp) if cfg.amp is not None else info.device.type == "cuda"


def uses_channels_last(cfg: TrainConfig, info: D.DistInfo) -> bool:
    """``--channels-last``, or on with CUDA when not given."""
    return bool(cfg.channels_last) if cfg.channels_last is not None else info.device.type == "cuda"


def autocast(cfg: TrainConfig, info: D.DistInfo):
    """The mixed-precision context of a forward (bf16, fp16 where the GPU lacks bf16; none without AMP)."""
    if not uses_amp(cfg, info):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
    if dtype is torch.bfloat16 and info.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(info.device.type, dtype=dtype)


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


def patience_spent(st: State) -> bool:
    """``--patience N``: N validations since the best one (counted from the history a checkpoint keeps,
    so a resumed run stops where an uninterrupted one does)."""
    return patience_reached(st.cfg.patience, st.history, st.best_epoch)


def patience_reached(patience: int | None, history: Sequence[dict], best_epoch: int) -> bool:
    """Whether `patience` validations of `history` came after `best_epoch` (None: never)."""
    if patience is None:
        return False
    since = sum(1 for line in history if line["val_dice"] is not None and line["epoch"] > best_epoch)
    return since >= patience


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
