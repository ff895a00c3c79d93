"""`boneseg train`: one model on one fold, on CPU, one GPU or many (under torchrun)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from boneseg.cli import options
from boneseg.cli.app import app
from boneseg.names import LOSS_NAMES


@app.command("train")
def train_command(
    data: Path = typer.Argument(..., metavar="DATA", help="Dataset root (train/DCM + train/outputs_json)."),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        metavar="FILE",
        help=(
            "Options from a YAML or JSON file (a run's config.json reproduces that run); options given here "
            "override it."
        ),
    ),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the run's effective config (as config.json will hold it) and exit."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Check data and options, build the model, print parameters, steps and memory per batch; write nothing.",
    ),
    init_from: Path | None = typer.Option(
        None,
        "--init-from",
        metavar="RUN|CKPT",
        help=(
            "Start from a whole trained network (encoder, decoder, heads) of the same architecture: a run folder "
            "(its best.pt) or a checkpoint."
        ),
    ),
    patience: int | None = typer.Option(
        None, "--patience", help="Stop after N validations without a better val Dice \\[default: off]."
    ),
    arch: str | None = typer.Option(
        None,
        "--arch",
        metavar="NAME",
        help=(
            "Architecture: unet, unetpp, deeplabv3plus (dlv3p), upernet, segformer, fpn, manet, …, or sam2unet "
            "(SAM2-UNet) (required unless --resume)."
        ),
    ),
    encoder: str | None = typer.Option(
        None,
        "--encoder",
        metavar="NAME",
        help=(
            "smp encoder (resnet34, efficientnet-b4, mit_b2, …) or tu-<timm model>; for sam2unet the SAM2 trunk "
            "sam2_hiera_tiny|small|base_plus|large (required unless --resume)."
        ),
    ),
    size: int | None = typer.Option(
        None, "--size", help="Side the images are resized to (multiple of 32; required unless --resume)."
    ),
    out: Path = options.out_option("Run folder (config.json, metrics.jsonl, last.pt, best.pt).", metavar="RUN"),
    fold: int | None = options.fold_option("Validation fold \\[default: 0]."),
    splits: Path | None = options.splits_option(
        "Splits JSON from `boneseg split` \\[default: 5 folds made on the fly with --seed]."
    ),
    folds: int | None = typer.Option(
        None,
        "--folds",
        help="Folds made on the fly when no --splits is given (capped at the number of patients) \\[default: 5].",
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs (sets the schedule) \\[default: 30]."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", help="Images per step per process \\[default: 4]."
    ),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate \\[default: 1e-3]."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="Weight decay \\[default: 1e-4]."),
    loss: str | None = typer.Option(
        None,
        "--loss",
        metavar="SPEC",
        help=(
            f"Loss terms: {', '.join(LOSS_NAMES)}; e.g. bce+dice, 0.3*bce+0.7*dice, "
            "0.4*bce+0.4*dice+0.2*focal_tversky@wrist (@ restricts a term to classes or groups) \\[default: bce+dice]."
        ),
    ),
    encoder_weights: str | None = typer.Option(
        None,
        "--encoder-weights",
        metavar="NAME|FILE",
        help=(
            "imagenet (for sam2unet: SAM2's weights from timm's hub), none, or a local state-dict file (for sam2unet "
            "also SAM2's release checkpoint) \\[default: imagenet]."
        ),
    ),
    norm: str | None = typer.Option(
        None,
        "--norm",
        metavar="NAME",
        help="Decoder normalisation: batch (as built), group or instance (replace its BatchNorm) \\[default: batch].",
    ),
    adapter_dim: int | None = typer.Option(
        None, "--adapter-dim", help="sam2unet: width of each trunk block's adapter \\[default: 32 for sam2unet]."
    ),
    unfreeze: int | None = typer.Option(
        None,
        "--unfreeze",
        help="sam2unet: also train the trunk's last N blocks (0: trunk frozen) \\[default: 0 for sam2unet].",
    ),
    deep_supervision: str | None = typer.Option(
        None,
        "--deep-supervision",
        metavar="W8,W16",
        help=(
            "Loss weights of the auxiliary outputs (sam2unet: stride 8, stride 16; one value for both; 0: off) "
            "\\[default: 1,1 for sam2unet]."
        ),
    ),
    device: str | None = typer.Option(None, "--device", metavar="NAME", help="auto, cpu or cuda \\[default: auto]."),
    amp: bool | None = typer.Option(None, "--amp/--no-amp", help="Mixed precision \\[default: on with CUDA]."),
    amp_dtype: str | None = typer.Option(
        None, "--amp-dtype", metavar="NAME", help="bf16 or fp16 (with a gradient scaler) \\[default: bf16]."
    ),
    channels_last: bool | None = typer.Option(
        None, "--channels-last/--no-channels-last", help="channels_last memory format \\[default: on with CUDA]."
    ),
    compile: bool = typer.Option(
        False,
        "--compile",
        help="torch.compile the model for the training steps (falls back, with a warning, where it fails).",
    ),
    workers: int | None = options.workers_option("Data-loader worker processes \\[default: 2]."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed for folds, initialisation, order and augmentation \\[default: 0]."
    ),
    max_steps: int | None = typer.Option(
        None,
        "--max-steps",
        help="Stop after N optimizer steps in all (schedule unchanged); continue later with --resume.",
    ),
    pseudo: list[Path] | None = typer.Option(
        None, "--pseudo", metavar="PSEUDO", help="Pseudo-labelled folder in the train layout (repeatable)."
    ),
    exclude: Path | None = typer.Option(
        None,
        "--exclude",
        metavar="FILE",
        help=(
            "Leave the images listed in FILE out of training (audit's suspects.csv, or one name per line); the "
            "validation fold keeps them."
        ),
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last.pt to the end of its schedule."
    ),
    force: bool = options.force_option(
        "Start over in a non-empty --out (the old run stays until the new one has a checkpoint)."
    ),
    aug: str | None = typer.Option(
        None, "--aug", metavar="NAME", help="Augmentation preset: none, light, default, strong \\[default: default]."
    ),
    crop: int | None = typer.Option(
        None, "--crop", help="Train on random crops of this side from the --size image (validation on whole images)."
    ),
    optimizer: str | None = typer.Option(None, "--optimizer", metavar="NAME", help="adamw or sgd \\[default: adamw]."),
    scheduler: str | None = typer.Option(
        None, "--scheduler", metavar="NAME", help="cosine, poly, plateau or constant \\[default: cosine]."
    ),
    warmup: float | None = typer.Option(
        None, "--warmup", help="Linear warm-up length in epochs (fractions allowed) \\[default: 0]."
    ),
    accumulate: int | None = typer.Option(
        None, "--accumulate", help="Gradient accumulation: batches per optimizer step \\[default: 1]."
    ),
    clip: float | None = typer.Option(None, "--clip", help="Clip the gradient norm to this value."),
    ema: float | None = typer.Option(
        None, "--ema", help="EMA decay of the weights, e.g. 0.999 (validated and saved as the model) \\[default: off]."
    ),
    val_every: int | None = typer.Option(
        None, "--val-every", help="Validate every N epochs (and always after the last) \\[default: 1]."
    ),
    save_every: int | None = typer.Option(
        None,
        "--save-every",
        help="Write last.pt every N epochs (and always after the last, or when stopped) \\[default: 1].",
    ),
    unify_hands: str | None = typer.Option(
        None, "--unify-hands", metavar="R|L|none", help="Mirror every hand to one side: R, L or none \\[default: none]."
    ),
    channels: str | None = typer.Option(
        None,
        "--channels",
        metavar="SPEC",
        help=(
            "Model input channels: gray, rgb or clahe3, optionally +sobel and/or +laplacian (e.g. gray+sobel) "
            "\\[default: gray]."
        ),
    ),
    meta: str | None = typer.Option(
        None,
        "--meta",
        metavar="SPEC",
        help=(
            "Patient metadata (meta_data.xlsx): none, aux (auxiliary prediction heads), film (decoder conditioning) "
            "or aux+film \\[default: none]."
        ),
    ),
    meta_weight: float | None = typer.Option(
        None, "--meta-weight", help="Loss weight of the metadata heads \\[default: 0.1]."
    ),
    boundary_head: float | None = typer.Option(
        None, "--boundary-head", help="Loss weight of an auxiliary boundary head (0: none) \\[default: 0]."
    ),
    boundary_sharpen: float | None = typer.Option(
        None,
        "--boundary-sharpen",
        help="At inference, multiply mask probabilities by 1 - a * p_edge from the boundary head \\[default: 0].",
    ),
    distance_clip: int | None = typer.Option(
        None,
        "--distance-clip",
        help="Clip (px at --size) of the cached signed distance maps used by the dtbce loss \\[default: 16].",
    ),
    wrist: bool = typer.Option(
        False,
        "--wrist",
        help="Train a wrist second-stage model: crops around the 8 carpal bones, loss and val Dice on the carpals.",
    ),
    wrist_margin: float | None = typer.Option(
        None, "--wrist-margin", help="Wrist box margin, a fraction of the carpal extent per side \\[default: 0.15]."
    ),
    log: str | None = typer.Option(
        None,
        "--log",
        metavar="NAME",
        help="Run tracking: tensorboard, wandb (installed and logged in) or none \\[default: none].",
    ),
    log_images: int | None = typer.Option(
        None, "--log-images", help="Prediction-vs-label overlays logged per validation \\[default: 4]."
    ),
    fit_postprocess: bool = typer.Option(
        False,
        "--fit-postprocess",
        help=(
            "After training, choose per-class keep-largest / island removal on the validation fold "
            "(RUN/postprocess.json, used by predict)."
        ),
    ),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to RUN/tensorboard."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", metavar="DIR", help="Mask-cache folder \\[default: DATA/.boneseg-cache]."
    ),
    dist_timeout: float | None = typer.Option(
        None, "--dist-timeout", help="Minutes a DDP collective may wait for another rank \\[default: 30]."
    ),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Leave out (and list) unreadable images, broken labels "
        "and unpaired files instead of stopping before training.",
    ),
    json_out: bool = options.json_option("Print the run summary as JSON on stdout."),
) -> None:
    """Train a segmentation model; under `torchrun --nproc-per-node N` the same command uses DDP."""
    run_train(locals())


def run_train(params: dict[str, Any], teacher: dict[str, Any] | None = None) -> None:
    """The body of `train` (and of `distill`, whose options are train's plus `teacher`'s): `params` are the
    command's parameters by name; with `teacher`, `boneseg.workflows.distill.distill` trains."""
    from boneseg.cli.options import parse_floats
    from boneseg.cli.output import console, print_json, reporter
    from boneseg.engine.checks import resolve_config
    from boneseg.engine.plan import dry_run as check_run
    from boneseg.engine.train import train
    from boneseg.runs.config_file import command_config
    from boneseg.runs.files import BEST, LAST

    p = params
    data, out, resume, device, cache_dir = p["data"], p["out"], p["resume"], p["device"], p["cache_dir"]
    options = {k: v for k, v in p.items() if k not in _COMMAND_ONLY}  # None: not given
    options.update(
        deep_supervision=parse_floats(p["deep_supervision"], "--deep-supervision"),
        **{flag: p[flag] or None for flag in _FLAGS},  # a flag left off is not given
    )
    config = command_config(options, p["config_file"], resume=resume, force=p["force"])
    if p["fit_postprocess"]:
        from boneseg.workflows.validation import check_fit_model

        check_fit_model(bool(config.get("wrist")))
    if teacher is not None:
        from boneseg.workflows.distill import distill_config

        config = distill_config(config, **{k: str_paths(v) for k, v in teacher.items()})
    if p["print_config"]:
        print_json(resolve_config(config)[0].to_dict())
        return
    if p["dry_run"]:
        with reporter(transient=True) as shown:
            plan = check_run(config, shown)
        _print_plan(plan, p["json_out"])
        return
    with reporter(transient=True) as shown:
        summary = train(config, shown)
        if summary.get("rank", 0) != 0:
            return
        if p["fit_postprocess"] and not summary["stopped"] and (out / BEST).is_file():
            from boneseg.inference.pipeline import PredictOptions
            from boneseg.workflows.validation import fit_postprocess as fit

            on = PredictOptions(device=str(device or "auto"), workers=0)
            fit(out, data, options=on, reporter=shown, cache_dir=cache_dir)
    if p["json_out"]:
        print_json(summary)
    best = summary["best_val_dice"]
    if summary.get("early_stopped"):
        console.print(
            f"early stop at epoch {summary['epochs_done']} (--patience): best val Dice {best:.4f} "
            f"(epoch {summary['best_epoch']}) -> {out / BEST}",
            markup=False,
        )
    elif summary["stopped"]:
        console.print(
            f"stopped after {summary['steps']} steps (--max-steps); {LAST} saved in {out}. "
            f"Continue with: boneseg {'distill' if teacher is not None else 'train'} {data} --out {out} --resume",
            markup=False,
        )
    else:
        console.print(
            f"done: {summary['epochs_done']} epochs, {summary['steps']} steps, best val Dice "
            f"{best:.4f} (epoch {summary['best_epoch']}) -> {out / BEST}"
            if best is not None
            else f"done: {summary['epochs_done']} epochs -> {out}",
            markup=False,
        )


def str_paths(value):
    """Paths (or a list of them) as strings, other values as they are."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value) if isinstance(value, Path) else value


# parameters of the command that are no training option (handled here)
_COMMAND_ONLY = {"config_file", "print_config", "dry_run", "fit_postprocess", "json_out", "resume", "force"}
# on/off options without an "off" spelling: off is "not given" (a config file's setting stays)
_FLAGS = ("wrist", "tensorboard", "skip_bad", "compile")


def _print_plan(plan: dict, as_json: bool) -> None:
    """The `boneseg.engine.plan.dry_run` result: JSON, or a few lines."""
    from boneseg.cli.output import console, print_json

    if as_json:
        print_json(plan)
        return
    mem = plan["memory"]

    def mib(n: int) -> str:
        return f"{n / 2**20:,.1f} MiB"

    console.print(
        f"dry run: nothing written\n"
        f"model     {plan['config']['arch']}/{plan['config']['encoder']}, {plan['parameters_text']}\n"
        f"data      {plan['train_images']} train / {plan['val_images']} val images (headers and labels checked)\n"
        + (
            f"steps     none: nothing to do, {plan['finished']}\n"
            if plan.get("finished")
            else f"steps     {plan['steps_per_epoch']} per epoch, {plan['steps']} to run on {plan['device']}\n"
        )
        + f"memory    ~{mib(mem['total'])} per batch: weights {mib(mem['weights'])}, "
        f"gradients {mib(mem['gradients'])}, optimizer {mib(mem['optimizer'])}, EMA {mib(mem['ema'])}, "
        f"activations {mib(mem['activations'])} "
        f"({mib(mem['activations_per_image'])} per image, measured in float32 on the CPU)",
        markup=False,
        soft_wrap=True,
    )
