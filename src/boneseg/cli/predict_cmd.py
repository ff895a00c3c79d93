"""`boneseg predict`: checkpoints -> submission CSV (streaming), optional saved probabilities."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import (
    AMP,
    BATCH_SIZE,
    CALIBRATION,
    COMPILE,
    DEVICE,
    META,
    MODELS,
    OVERLAP,
    SCALES,
    SIZE,
    SLIDING,
    TRUST_MODEL,
    TTA,
    WEIGHTS,
    WINDOW,
    WRIST_MODEL,
    force_option,
    loader_workers,
    out_option,
    predict_options,
    threshold_option,
)


@app.command("predict")
def predict_command(
    source: Path = typer.Argument(
        ..., metavar="DATA|IMAGES", help="Dataset root (uses test/DCM), a folder of PNGs (recursive) or one PNG."
    ),
    models: list[Path] = MODELS,
    out: str = out_option("Submission CSV ('-' or omitted: standard output).", "PRED.csv", default="-"),
    tta: str = TTA,
    scales: str = SCALES,
    sliding: bool = SLIDING,
    window: int = WINDOW,
    overlap: float = OVERLAP,
    size: int = SIZE,
    threshold: str = threshold_option(
        "Threshold, or a JSON file {class: t} "
        "(e.g. from boneseg tta --thresholds-out) \\[default: an exported model's own, else 0.5]."
    ),
    keep_largest: bool = typer.Option(False, "--keep-largest", help="Keep each class's largest component only."),
    min_area: int = typer.Option(0, "--min-area", help="Remove components smaller than this many pixels."),
    postprocess: str = typer.Option(
        "auto",
        "--postprocess",
        help="Per-class post-processing rules: auto (the "
        "postprocess.json of a single -m run folder, from train --fit-postprocess), "
        "none, or a rules file.",
    ),
    wrist_model: Path = WRIST_MODEL,
    meta: Path = META,
    trust_model: bool = TRUST_MODEL,
    save_probs: Path = typer.Option(
        None,
        "--save-probs",
        metavar="PROBDIR",
        help="Also write uint8 probabilities here (for ensemble --vote soft and pseudo).",
    ),
    save_uncertainty: Path = typer.Option(
        None,
        "--save-uncertainty",
        metavar="DIR",
        help="Also write per image and class uint8 maps of entropy, TTA-view and ensemble-member disagreement, "
        "and uncertainty.csv (one number per image and class).",
    ),
    calibration: str = CALIBRATION,
    weights: str = WEIGHTS,
    device: str = DEVICE,
    batch_size: int = BATCH_SIZE,
    amp: bool = AMP,
    compile: bool = COMPILE,
    workers: int = loader_workers(),
    force: bool = force_option("Overwrite an existing CSV / non-empty --save-probs folder."),
) -> None:
    """Predict images into a submission CSV (29 rows per image, sorted, RLE at the original size).

    Memory stays flat: each image is predicted, thresholded, run-length encoded and written before the next. Under
    torchrun the images are split across ranks and rank 0 writes the merged CSV.
    """
    from boneseg.cli.output import console, reporter
    from boneseg.inference import predict

    options = predict_options(locals())
    with reporter() as shown:
        summary = predict(
            source,
            models,
            out,
            options=options,
            tta=tta,
            scales=scales,
            sliding=sliding,
            threshold=threshold,
            keep_largest=keep_largest,
            min_area=min_area,
            postprocess_rules=postprocess,
            save_probs=save_probs,
            save_uncertainty=save_uncertainty,
            force=force,
            reporter=shown,
        )
    if summary.rank == 0:
        where = "stdout" if summary.output == "-" else summary.output
        ranks = f" on {summary.world} ranks" if summary.world > 1 else ""
        rate = f"{summary.images_per_s:.2f} img/s" + (" on rank 0" if summary.world > 1 else "")
        console.print(
            f"{summary.total or summary.images} image(s){ranks} -> {where} ({summary.policy}, {rate})"
            + (f"; probabilities in {summary.probs_dir}" if summary.probs_dir else "")
            + (f"; uncertainty in {summary.uncertainty_dir}" if summary.uncertainty_dir else ""),
            markup=False,
        )
