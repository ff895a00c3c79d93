"""`boneseg postprocess`: predict's post-processing (plus a closing) applied to an existing CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app


@app.command("postprocess")
def postprocess_command(
    source: Path = typer.Argument(..., metavar="IN.csv", show_default=False, help="Submission CSV to clean."),
    out: str = typer.Option(
        ..., "--out", "-o", metavar="OUT.csv", show_default=False, help="Cleaned CSV (`-`: standard output)."
    ),
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
    images: Path = typer.Option(
        None,
        "--images",
        metavar="DIR|DATA",
        show_default=False,
        help="Image folder (or dataset root: its test/DCM): each image's size from its PNG header.",
    ),
    size: int = typer.Option(2048, "--size", help="Image side without --images."),
    json_out: bool = typer.Option(False, "--json", help="Print what changed as JSON on stdout (not with -o -)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing OUT.csv."),
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
