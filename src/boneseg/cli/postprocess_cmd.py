"""`boneseg postprocess`: predict's post-processing (plus a closing) applied to an existing CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import force_option, image_size_option, images_option, json_option, out_option


@app.command("postprocess")
def postprocess_command(
    source: Path = typer.Argument(..., metavar="IN.csv", show_default=False, help="Submission CSV to clean."),
    out: str = out_option("Cleaned CSV (`-`: standard output).", metavar="OUT.csv"),
    rules: Path = typer.Option(
        None,
        "--rules",
        metavar="FILE|RUN",
        show_default=False,
        help="Per-class rules: a postprocess.json or a run folder holding one (train --fit-postprocess).",
    ),
    min_area: int = typer.Option(0, "--min-area", help="Drop components smaller than this many pixels (0: keep all)."),
    keep_largest: bool = typer.Option(False, "--keep-largest", help="Keep only each class's largest component."),
    close: int = typer.Option(
        0, "--close", metavar="K", help="Morphological closing with a KxK ellipse first (0: none)."
    ),
    images: Path = images_option(
        "Image folder (or dataset root: its test/DCM): each image's size from its PNG header."
    ),
    size: int = image_size_option("Image side without --images."),
    json_out: bool = json_option("Print what changed as JSON on stdout (not with -o -)."),
    force: bool = force_option("Overwrite an existing OUT.csv."),
) -> None:
    """The post-processing predict applies, on a CSV you already have: per class a closing (--close), then
    only the largest component (--keep-largest) and no island under --min-area pixels; --rules adds a run's
    per-class rules (combined as predict combines them). Streams image by image in run-length space."""
    from boneseg.cli.output import console, print_json, reporter
    from boneseg.errors import UsageError
    from boneseg.io import is_stdout
    from boneseg.workflows.postprocess_csv import postprocess_csv

    if json_out and is_stdout(out):
        raise UsageError("--json prints on stdout: give -o OUT.csv")
    with reporter(transient=True) as shown:
        result = postprocess_csv(
            source,
            out,
            rules=rules,
            min_area=min_area,
            keep_largest=keep_largest,
            close=close,
            images=images,
            size=size,
            force=force,
            reporter=shown,
        )
    doc = result.to_json()
    console.print(
        f"{doc['images']} image(s): {doc['changed_masks']} mask(s) changed, {doc['pixels_removed']} px removed, "
        f"{doc['pixels_added']} px added" + (f" (rules {result.rules})" if result.rules else ""),
        markup=False,
    )
    if not is_stdout(out):
        console.print(f"wrote {out}", markup=False)
    if json_out:
        print_json(doc)
