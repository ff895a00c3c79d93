"""What several commands share: option-value parsers (each error names the option) and option blocks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import typer

from boneseg.errors import UsageError

# -- predictor options ----------------------------------------------------------------------------
# The options of `boneseg.inference.PredictOptions` (and the policy) on every command that predicts
# (predict, tta, oof); each command builds its `PredictOptions` from them.

MODELS = typer.Option(
    ...,
    "--model",
    "-m",
    metavar="CKPT|RUN",
    help="Checkpoint file, run folder (its best.pt) or an export "
    "(boneseg export: FILE.onnx, TorchScript file, hf folder); repeat to ensemble.",
)
WEIGHTS = typer.Option(None, "--weights", help="Ensemble weights, comma-separated, one per -m (default equal).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")
SIZE = typer.Option(
    None,
    "--size",
    help="Resize-mode side (default: each model's training size); with "
    "--sliding, the square resolution the window slides over.",
)
WINDOW = typer.Option(None, "--window", help="Sliding tile side (default: the model's training crop, else size).")
OVERLAP = typer.Option(0.5, "--overlap", help="Sliding overlap fraction of a tile, in [0, 1).")
BATCH_SIZE = typer.Option(4, "--batch-size", "-b", help="Tiles per forward pass in sliding mode.")
AMP = typer.Option(
    True,
    "--amp/--no-amp",
    show_default=False,
    help="fp16 autocast (CUDA only: a CPU always runs fp32) \\[default: on].",
)
COMPILE = typer.Option(
    False, "--compile", help="torch.compile each model (falls back, with a warning, where it fails)."
)
CALIBRATION = typer.Option(
    "auto",
    "--calibration",
    metavar="auto|none|FILE.json",
    help="auto: each run folder's calibration.json (or an export's), applied to that model's probabilities; "
    "none; or a calibration file (boneseg calibrate) applied to the final probabilities. Its searched "
    "thresholds apply unless --threshold is given.",
)
WRIST_MODEL = typer.Option(
    None,
    "--wrist-model",
    metavar="CKPT|RUN",
    help="Wrist second-stage checkpoint (train --wrist): replaces the carpal predictions inside the wrist box.",
)
META = typer.Option(
    None,
    "--meta",
    metavar="FILE.xlsx",
    help="Metadata file for --meta film models (default: meta_data.xlsx found from the images).",
)
TRUST_MODEL = typer.Option(
    False,
    "--trust-model",
    help="Load TorchScript exports, which run code of their author's choosing (only from a source you trust; "
    "ONNX and hf exports need no trust).",
)
TTA = typer.Option("none", "--tta", help="none, hflip, scale or hflip+scale (mean of probabilities).")
SCALES = typer.Option("0.75,1,1.25", "--scales", help="Scales of the 'scale' TTA, comma-separated.")
SLIDING = typer.Option(False, "--sliding", help="Sliding window at full resolution instead of resize.")


def loader_workers(default: int = 2) -> Any:
    """``--workers/-j``: background image-loading processes (`PredictOptions.workers`), with `default`."""
    return workers_option("Background image-loading processes (0: none).", default)


def predict_options(params: Mapping[str, Any]) -> Any:
    """The `boneseg.inference.PredictOptions` of a command that predicts: each field from the command's
    parameter of that name (``predict_options(locals())`` first thing in the command), ``--weights`` parsed;
    a field the command has no option for keeps its default."""
    import dataclasses

    from boneseg.inference.pipeline import PredictOptions

    given = {f.name: params[f.name] for f in dataclasses.fields(PredictOptions) if f.name in params}
    if "weights" in given:
        given["weights"] = parse_floats(given["weights"], "--weights")
    return PredictOptions(**given)


# -- option-value parsers -------------------------------------------------------------------------


def parse_floats(values: str | Sequence[str] | None, option: str) -> list[float] | None:
    """``"0.5,0.3"`` or ``["0.5,0.3", "0.2"]`` (a repeated option) -> [0.5, 0.3, 0.2]; None/empty -> None.

    Raises:
        UsageError: a part that is not a finite number (nan and ±inf included), naming `option`.
    """
    if not values:
        return None
    text = values if isinstance(values, str) else " ".join(values)
    out = []
    for part in text.replace(",", " ").split():
        try:
            out.append(float(part))
        except ValueError:
            raise UsageError(f"{option} must be comma-separated numbers: {part!r} is not a number") from None
        if not math.isfinite(out[-1]):
            raise UsageError(f"{option} {part}: must be a finite number")
    return out


def parse_size(text: str) -> tuple[int, int]:
    """``2048`` -> (2048, 2048); ``1024x2048`` -> (1024, 2048) as (height, width); each side within
    `boneseg.submission.check_image_side`'s bounds."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise UsageError(f"--size {text!r}: expected a positive integer or HxW, e.g. 2048 or 2048x2048")
    from boneseg.submission import check_image_side

    for side in parts:
        check_image_side(side)
    return parts[0], parts[1]


# output and run options
# -----------------------------------------------------------------------------------------------------
# The options many commands share, spelled once: the flags, short forms, placeholders and defaults are
# the same everywhere; each command says in its own words what the option does there.


def out_option(help: str, metavar: str | None = "DIR", default: Any = ..., **kwargs: Any) -> Any:
    """``--out/-o``: what the command writes (required unless a `default` is given)."""
    return typer.Option(default, "--out", "-o", metavar=metavar, help=help, **kwargs)


def force_option(help: str = "Overwrite existing outputs.") -> Any:
    """``--force``: replace existing outputs (never before every check has passed: `boneseg.io`)."""
    return typer.Option(False, "--force", help=help)


def json_option(help: str) -> Any:
    """``--json``: the result as JSON on stdout."""
    return typer.Option(False, "--json", help=help)


def threshold_option(help: str, default: str | None = None, **kwargs: Any) -> Any:
    """``--threshold/-t T|FILE.json``: a probability cut-off, or per-class ones (`boneseg.probs.read_thresholds`)."""
    return typer.Option(default, "--threshold", "-t", metavar="T|FILE.json", help=help, **kwargs)


def workers_option(help: str = "Worker processes (default: all cores).", default: int | None = None) -> Any:
    """``--workers/-j N``: processes (`boneseg.errors.check_workers`); None: the library's default."""
    return typer.Option(default, "--workers", "-j", help=help, show_default=default is not None)


def images_option(help: str, metavar: str = "DIR|DATA") -> Any:
    """``--images``: an image folder, or a dataset root (its test/DCM)."""
    return typer.Option(None, "--images", metavar=metavar, show_default=False, help=help)


def gt_option(help: str, default: Any = None) -> Any:
    """``--gt DATA``: a dataset root whose train labels are the truth (required with ``default=...``)."""
    return typer.Option(default, "--gt", metavar="DATA", show_default=False, help=help)


def splits_option(help: str = "Splits file from `boneseg split`.", default: Any = None) -> Any:
    """``--splits SPLITS.json``: a splits file (``boneseg split``)."""
    return typer.Option(default, "--splits", metavar="SPLITS.json", show_default=False, help=help)


def fold_option(help: str) -> Any:
    """``--fold K``: one fold of a splits file."""
    return typer.Option(None, "--fold", show_default=False, help=help)


def image_size_option(help: str) -> Any:
    """``--size N``: the side of images a CSV's run-length masks are decoded at when no image gives its own."""
    return typer.Option(2048, "--size", help=help)


class Vote(str, Enum):
    """``--vote``: `boneseg.names.VOTES`."""

    hard = "hard"
    soft = "soft"


def vote_option(help: str) -> Any:
    """``--vote hard|soft`` (None: inferred from the inputs, `boneseg.workflows.ensemble.resolve_vote`)."""
    return typer.Option(None, "--vote", show_default=False, help=help)


def calibrations_option(help: str) -> Any:
    """``--calibration FILE.json|none``, repeated: one calibration per input, in input order."""
    return typer.Option(None, "--calibration", metavar="FILE.json|none", show_default=False, help=help)
