"""Pacing and planning a run: the time per step and left (`Pace`, with the long-CPU-run warning), the
parameter count, the memory a step holds (`estimate_memory`) and `dry_run` (what `train` would do, checked,
nothing written)."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path

import torch

from boneseg.data.transforms import in_channels
from boneseg.engine import distributed as D
from boneseg.engine.checks import resolve_config
from boneseg.engine.data import build_data, epoch_steps, make_sampler
from boneseg.engine.state import init_weights, load_init, patience_reached
from boneseg.errors import BonesegWarning
from boneseg.progress import SILENT, Reporter
from boneseg.runs.config import TrainConfig
from boneseg.runs.files import check_run_dir

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
    model = build_model(dataclasses.replace(cfg, encoder_weights=weights))
    if init is not None:
        assert cfg.init_from is not None  # `init` is what load_init read from it
        reporter.message(init_weights(model, init, cfg.init_from))
    done = int(saved["step"]) if saved is not None else 0
    last = min(cfg.epochs * steps_per_epoch, cfg.max_steps if cfg.max_steps is not None else math.inf)
    finished = None
    if saved is not None and int(saved["epoch"]) >= cfg.epochs:
        finished = f"the run finished its {cfg.epochs} epochs"
    elif saved is not None and patience_reached(
        cfg.patience, saved.get("history") or [], int(saved.get("best_epoch") or 0)
    ):
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
