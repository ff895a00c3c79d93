"""`boneseg masks`: per image a 29-layer mask file and a colour overlay PNG with a legend."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import force_option, image_size_option, images_option, out_option, threshold_option


@app.command("masks")
def masks_command(
    source: Path = typer.Argument(
        ...,
        metavar="PRED.csv|PROBS",
        show_default=False,
        help="Submission CSV, or a folder of saved probabilities (predict --save-probs).",
    ),
    out: Path = out_option("Folder for the mask files and overlays."),
    images: Path = images_option(
        "Image folder (or dataset root: its test/DCM): overlays drawn on the images, a CSV's masks at "
        "each image's own size (PNG header)."
    ),
    size: int = image_size_option("Image side of a CSV without --images."),
    threshold: str = threshold_option(
        "Probabilities only: cut-off, or per-class thresholds (tta --thresholds-out) [default: 0.5]."
    ),
    fmt: str = typer.Option("npz", "--format", help="Mask file: npz ((29, H, W) uint8 'mask') or tiff (29 pages)."),
    overlays: bool = typer.Option(
        True, "--overlays/--no-overlays", show_default=False, help="Also write the overlay PNGs [default: on]."
    ),
    force: bool = force_option("Replace an existing output folder."),
) -> None:
    """Files a person opens: per image DIR/<stem>.npz (or .tif) with the 29 masks as layers in class order,
    DIR/<stem>.png with the masks in class colours on the image (or on black) at the original size and a
    legend, and DIR/masks.json listing them with each class's pixel count."""
    from boneseg.cli.output import console, reporter
    from boneseg.workflows.masks import write_masks

    with reporter(transient=True) as shown:
        folder = write_masks(
            source,
            out,
            images=images,
            size=size,
            threshold=threshold,
            fmt=fmt,
            overlays=overlays,
            force=force,
            reporter=shown,
        )
    console.print(f"wrote {folder}", markup=False)
