"""`boneseg report`: a self-contained HTML page of predictions (gallery, overlays, per-class Dice)."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app


@app.command("report")
def report_command(
    preds: list[Path] = typer.Argument(
        ...,
        metavar="PRED.csv",
        show_default=False,
        help="Submission CSVs (the first one is drawn on the gallery thumbnails).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", metavar="DIR", show_default=False, help="Report folder: DIR/index.html and its assets."
    ),
    gt: Path = typer.Option(
        None,
        "--gt",
        metavar="DATA",
        show_default=False,
        help="Dataset root: score against its train labels and show their errors.",
    ),
    fold: int = typer.Option(
        None, "--fold", show_default=False, help="With --splits: only this fold's validation images."
    ),
    splits: Path = typer.Option(
        None, "--splits", metavar="SPLITS.json", show_default=False, help="Splits file from `boneseg split`."
    ),
    audit: Path = typer.Option(
        None,
        "--audit",
        metavar="DIR",
        show_default=False,
        help="An `audit` output folder: list its suspects.csv and link them.",
    ),
    images: Path = typer.Option(
        None,
        "--images",
        metavar="DATA_OR_DIR",
        show_default=False,
        help="Without --gt: where the CSV's images are (dataset root or folder of PNGs); each image's size from "
        "its PNG header.",
    ),
    size: int = typer.Option(2048, "--size", help="Image side of the CSVs without --gt or --images."),
    force: bool = typer.Option(False, "--force", help="Replace an existing report folder."),
) -> None:
    """A page to open in a browser from the file system: sortable per-class Dice, charts, a gallery sorted by
    the worst class, a per-image view (class toggles, zoom to full resolution), model-vs-model disagreement
    and the audit's suspects. No server and nothing from the network: zip the folder to share it."""
    from boneseg.cli.output import console, reporter
    from boneseg.workflows.report import build_report

    with reporter(transient=True) as shown:
        index = build_report(
            preds, out, gt, fold=fold, splits=splits, audit=audit, images=images, size=size, force=force, reporter=shown
        )
    console.print(f"wrote {index}", markup=False)
