"""`boneseg report`: a self-contained HTML page of predictions (gallery, overlays, per-class Dice)."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import (
    fold_option,
    force_option,
    gt_option,
    image_size_option,
    images_option,
    out_option,
    splits_option,
)


@app.command("report")
def report_command(
    preds: list[Path] = typer.Argument(
        ...,
        metavar="PRED.csv",
        show_default=False,
        help="Submission CSVs (the first one is drawn on the gallery thumbnails).",
    ),
    out: Path = out_option("Report folder: DIR/index.html and its assets."),
    gt: Path = gt_option("Dataset root: score against its train labels and show their errors."),
    fold: int = fold_option("With --splits: only this fold's validation images."),
    splits: Path = splits_option(),
    audit: Path = typer.Option(
        None,
        "--audit",
        metavar="DIR",
        show_default=False,
        help="An `audit` output folder: list its suspects.csv and link them.",
    ),
    images: Path = images_option(
        "Without --gt: where the CSV's images are (dataset root or folder of PNGs); each image's size from "
        "its PNG header.",
        metavar="DATA_OR_DIR",
    ),
    uncertainty: Path = typer.Option(
        None,
        "--uncertainty",
        metavar="DIR",
        show_default=False,
        help="The predict --save-uncertainty folder of the (first) predictions: a heat overlay per image and the "
        "per-class uncertainty table.",
    ),
    size: int = image_size_option("Image side of the CSVs without --gt or --images."),
    force: bool = force_option("Replace an existing report folder."),
) -> None:
    """A page to open in a browser from the file system: sortable per-class Dice, charts, a gallery sorted by
    the worst class, a per-image view (class toggles, zoom to full resolution), model-vs-model disagreement,
    the audit's suspects and the uncertainty maps. No server and nothing from the network: zip the folder to
    share it."""
    from boneseg.cli.output import console, reporter
    from boneseg.workflows.report import build_report

    with reporter(transient=True) as shown:
        index = build_report(
            preds,
            out,
            gt,
            fold=fold,
            splits=splits,
            audit=audit,
            images=images,
            uncertainty=uncertainty,
            size=size,
            force=force,
            reporter=shown,
        )
    console.print(f"wrote {index}", markup=False)
