"""The training loop behind ``boneseg train``: plain functions, one job each.

``train(config)`` prepares a run folder, the data (mask cache, folds, pseudo labels), the model,
optimiser, schedule, AMP scaler and EMA, then loops over epochs: `train_epoch` (optimizer steps with
gradient accumulation, clipping, stop requests) and `evaluate` (competition Dice per class on the device,
at the training size). Every epoch it writes ``metrics.jsonl``, ``best.pt`` on a new best mean Dice, and
``last.pt`` (every ``--save-every`` epochs, and always at the end). A run stopped anywhere (``--max-steps``,
Ctrl-C, SIGTERM) writes a ``last.pt`` from which ``--resume`` finishes bit for bit like an uninterrupted run.

The jobs around the loop live beside it: the checked config (`boneseg.engine.checks`), the data
(`boneseg.engine.data`), the state and its checkpoints (`boneseg.engine.state`), pace and dry run
(`boneseg.engine.plan`); what a run is (config, files, checkpoints) is `boneseg.runs`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from boneseg.classes import CLASSES
from boneseg.data.transforms import normalize
from boneseg.engine import distributed as D
from boneseg.engine.checks import resolve_config
from boneseg.engine.data import build_criterion, build_data, epoch_steps, make_loader
from boneseg.engine.plan import Pace, parameter_count
from boneseg.engine.state import (
    State,
    autocast,
    build_state,
    load_init,
    patience_spent,
    restore,
    seed_everything,
    uses_channels_last,
    write_outputs,
)
from boneseg.errors import BonesegError
from boneseg.io import write_json
from boneseg.modelling import heads
from boneseg.progress import SILENT, Reporter, Task
from boneseg.runs.checkpoint import load_checkpoint, save_checkpoints
from boneseg.runs.config import INFERENCE_ON_RESUME, TrainConfig
from boneseg.runs.files import BEST, CONFIG, LAST, restore_previous, run_folder

LEFT_ON_INTERRUPT = f"the previous {LAST} (if any) is kept: continue with the same command plus --resume"
"""What a second Ctrl-C (the step in flight lost) leaves of a run folder: `boneseg.errors.Interrupted`."""


class TrainingInterrupted(BonesegError):
    """Ctrl-C/SIGTERM: the current step finished, ``last.pt`` was saved; exit code 130."""

    exit_code = 130


class NonFiniteLoss(BonesegError):
    """The loss or the weights became NaN/inf; nothing of that state was saved."""


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
    acc, criterion, channels_last = cfg.accumulate, st.criterion, uses_channels_last(cfg, info)
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
            with autocast(cfg, info):
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
    channels_last = uses_channels_last(cfg, info)
    for batch in loader:
        x = normalize(batch["image"].to(device, non_blocking=True), cfg)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = batch["mask"].to(device, non_blocking=True)
        with autocast(cfg, info):
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
                start = lambda: folder.enter_context(  # noqa: E731
                    run_folder(out, cfg.resume, cfg.force, info.is_main, lambda: D.barrier(info))
                )
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
    seed_everything(cfg.seed)
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
        while st.epoch < cfg.epochs and not patience_spent(st) and not stopped:
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
            done = st.epoch == cfg.epochs or patience_spent(st)
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
        if st.epoch < cfg.epochs and patience_spent(st):
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
        "early_stopped": st.epoch < cfg.epochs and patience_spent(st),
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
