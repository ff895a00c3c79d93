"""Optimisers by name and one learning-rate schedule object (warm-up, then cosine, poly or plateau)."""

from __future__ import annotations

import math

import torch

from boneseg.errors import UsageError, suggest

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "poly", "plateau", "constant")


def _known(option: str, what: str, name: str, names: tuple[str, ...]) -> str:
    """`name` in lower case when it is one of `names`; else `UsageError` naming `option`, closest names first."""
    name = str(name).lower()
    if name not in names:
        raise UsageError(f"{option} {name!r}: unknown {what}{suggest(name, names)}")
    return name


def check_optimizer(name: str) -> str:
    """`name` in lower case, one of `OPTIMIZERS` (`UsageError` otherwise, closest names suggested)."""
    return _known("--optimizer", "optimizer", name, OPTIMIZERS)


def check_scheduler(name: str) -> str:
    """`name` in lower case, one of `SCHEDULERS` (`UsageError` otherwise, closest names suggested)."""
    return _known("--scheduler", "schedule", name, SCHEDULERS)


def build_optimizer(
    name: str, params, lr: float, weight_decay: float = 1e-4, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``adamw`` or ``sgd`` (Nesterov momentum) over `params`.

    Raises:
        UsageError: unknown name.
    """
    if check_optimizer(name) == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


class LRSchedule:
    """Sets each parameter group's learning rate from the optimizer-step count.

    ``lr = base_lr * warmup(step) * shape(step) * plateau_scale``: linear warm-up over `warmup` steps, then
    ``cosine`` (to ``min_lr_ratio``), ``poly`` (power 0.9) or flat (``constant``/``plateau``); ``plateau``
    multiplies by `factor` after `patience` validations without improvement of the watched metric.
    Its state is plain numbers, so checkpoints restore it exactly.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        total_steps: int,
        warmup: int = 0,
        min_lr_ratio: float = 0.01,
        power: float = 0.9,
        factor: float = 0.5,
        patience: int = 2,
    ):
        self.optimizer, self.name = optimizer, check_scheduler(name)
        self.total, self.warmup = max(1, total_steps), max(0, warmup)
        self.min_lr_ratio, self.power, self.factor, self.patience = min_lr_ratio, power, factor, patience
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count, self.scale, self.best, self.bad = 0, 1.0, -math.inf, 0
        self._apply()

    def factor_at(self, step: int) -> float:
        """The multiplier of the base learning rate at optimizer step `step`."""
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup and step < self.warmup else 1.0
        t = min(1.0, max(0, step - self.warmup) / max(1, self.total - self.warmup))
        if self.name == "cosine":
            shape = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        elif self.name == "poly":
            shape = (1 - t) ** self.power
        else:
            shape = 1.0
        return warm * shape * self.scale

    def _apply(self) -> None:
        f = self.factor_at(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self) -> None:
        """Advance one optimizer step."""
        self.step_count += 1
        self._apply()

    def observe(self, metric: float) -> None:
        """Report a validation score (higher is better); only ``plateau`` reacts."""
        if self.name != "plateau" or metric is None or math.isnan(metric):
            return
        if metric > self.best + 1e-6:
            self.best, self.bad = metric, 0
        else:
            self.bad += 1
            if self.bad > self.patience:
                self.scale *= self.factor
                self.bad = 0
                self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {
            "step_count": self.step_count,
            "scale": self.scale,
            "best": self.best,
            "bad": self.bad,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.scale = int(state["step_count"]), float(state["scale"])
        self.best, self.bad = float(state["best"]), int(state["bad"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()
