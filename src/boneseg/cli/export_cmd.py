"""`boneseg export`: runs -> an ONNX / TorchScript model or a Hugging Face-style smp folder, with its sidecar."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import WEIGHTS, force_option, out_option, parse_floats, threshold_option


@app.command("export")
def export_command(
    runs: list[Path] = typer.Argument(
        ...,
        metavar="RUN...",
        help="Run folders (their best.pt) or checkpoints; several: their averaged probabilities in one graph.",
    ),
    fmt: str = typer.Option(
        ..., "--format", "-f", help="onnx, torchscript or hf (a folder smp.from_pretrained loads)."
    ),
    out: Path = out_option(
        "The model file (onnx, torchscript; the sidecar is FILE.json) or folder (hf).", metavar="FILE|DIR"
    ),
    threshold: str = threshold_option(
        "Per-class thresholds the export carries (e.g. from boneseg tta --thresholds-out) \\[default: 0.5]."
    ),
    postprocess: str = typer.Option(
        "auto",
        "--postprocess",
        help="Post-processing rules it carries: auto (a single run's postprocess.json), none, or a rules file.",
    ),
    calibration: str = typer.Option(
        "auto",
        "--calibration",
        metavar="auto|none|FILE.json",
        help="Calibration it carries, applied by predict -m OUT: auto (a single run's calibration.json), none, "
        "or a calibration file (boneseg calibrate); its thresholds are carried unless --threshold is given.",
    ),
    weights: str = WEIGHTS,
    force: bool = force_option("Overwrite an existing model and sidecar."),
) -> None:
    """Export trained runs for deployment: `predict -m OUT` runs the export with the same results.

    The sidecar holds what predict needs without the training code: classes, channels and normalisation, size and
    window, hand-side unification, thresholds, post-processing rules and calibration. FiLM and wrist models cannot be
    exported.
    """
    from boneseg.cli.output import console, reporter
    from boneseg.workflows.export import export

    with reporter() as shown:
        summary = export(
            runs,
            fmt,
            out,
            threshold=threshold,
            postprocess_rules=postprocess,
            calibration=calibration,
            weights=parse_floats(weights, "--weights"),
            force=force,
            reporter=shown,
        )
    console.print(
        f"{summary.models} model(s) -> {summary.output} ({summary.format}; sidecar {summary.sidecar}; "
        f"max |p - torch| {summary.max_abs_diff:.1e})",
        markup=False,
    )
