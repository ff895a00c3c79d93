"""`boneseg predict`: checkpoints -> submission CSV (streaming), optional saved probabilities."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import parse_floats

# Options shared with `boneseg tta` (one definition, imported there).
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
MODELS = typer.Option(
    ...,
    "--model",
    "-m",
    metavar="CKPT|RUN",
    help="Checkpoint file, run folder (its best.pt) or an export "
    "(boneseg export: FILE.onnx, TorchScript file, hf folder); repeat to ensemble.",
)
TRUST_MODEL = typer.Option(
    False,
    "--trust-model",
    help="Load TorchScript exports, which run code of their author's choosing (only from a source you trust; "
    "ONNX and hf exports need no trust).",
)
WEIGHTS = typer.Option(None, "--weights", help="Ensemble weights, comma-separated, one per -m (default equal).")
SIZE = typer.Option(
    None,
    "--size",
    help="Resize-mode side (default: each model's training size); with "
    "--sliding, the square resolution the window slides over.",
)
WINDOW = typer.Option(None, "--window", help="Sliding tile side (default: the model's training crop, else size).")
OVERLAP = typer.Option(0.5, "--overlap", help="Sliding overlap fraction of a tile, in [0, 1).")
SCALES = typer.Option("0.75,1,1.25", "--scales", help="Scales of the 'scale' TTA, comma-separated.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")
BATCH = typer.Option(4, "--batch-size", "-b", help="Tiles per forward pass in sliding mode.")
AMP = typer.Option(
    True,
    "--amp/--no-amp",
    show_default=False,
    help="fp16 autocast (CUDA only: a CPU always runs fp32) \\[default: on].",
)
CALIBRATION = typer.Option(
    "auto",
    "--calibration",
    metavar="auto|none|FILE.json",
    help="auto: each run folder's calibration.json (or an export's), applied to that model's probabilities; "
    "none; or a calibration file (boneseg calibrate) applied to the final probabilities. Its searched "
    "thresholds apply unless --threshold is given.",
)
WORKERS = typer.Option(2, "--workers", "-j", help="Background image-loading processes (0: none).")


@app.command("predict")
def predict_command(
    source: Path = typer.Argument(
        ..., metavar="DATA|IMAGES", help="Dataset root (uses test/DCM), a folder of PNGs (recursive) or one PNG."
    ),
    models: list[Path] = MODELS,
    out: str = typer.Option(
        "-", "--out", "-o", metavar="PRED.csv", help="Submission CSV ('-' or omitted: standard output)."
    ),
    tta: str = typer.Option("none", "--tta", help="none, hflip, scale or hflip+scale (mean of probabilities)."),
    scales: str = SCALES,
    sliding: bool = typer.Option(False, "--sliding", help="Sliding window at full resolution instead of resize."),
    window: int = WINDOW,
    overlap: float = OVERLAP,
    size: int = SIZE,
    threshold: str = typer.Option(
        None,
        "--threshold",
        "-t",
        metavar="T|FILE.json",
        help="Threshold, or a JSON file {class: t} "
        "(e.g. from boneseg tta --thresholds-out) \\[default: an exported model's own, else 0.5].",
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
    batch_size: int = BATCH,
    amp: bool = AMP,
    compile: bool = typer.Option(
        False, "--compile", help="torch.compile each model (falls back, with a warning, where it fails)."
    ),
    workers: int = WORKERS,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing CSV / non-empty --save-probs folder."),
) -> None:
    """Predict images into a submission CSV (29 rows per image, sorted, RLE at the original size).

    Memory stays flat: each image is predicted, thresholded, run-length encoded and written before the next. Under
    torchrun the images are split across ranks and rank 0 writes the merged CSV.
    """
    from boneseg.cli.output import console, reporter
    from boneseg.inference import predict

    with reporter() as shown:
        summary = predict(
            source,
            models,
            out,
            tta=tta,
            scales=scales,
            sliding=sliding,
            threshold=threshold,
            keep_largest=keep_largest,
            min_area=min_area,
            save_probs=save_probs,
            workers=workers,
            force=force,
            reporter=shown,
            weights=parse_floats(weights, "--weights"),
            device=device,
            size=size,
            window=window,
            overlap=overlap,
            batch_size=batch_size,
            amp=amp,
            compile=compile,
            wrist_model=wrist_model,
            postprocess_rules=postprocess,
            meta=meta,
            calibration=calibration,
            save_uncertainty=save_uncertainty,
            trust_model=trust_model,
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
