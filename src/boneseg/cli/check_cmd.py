"""`boneseg check`: validate a submission CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import images_option, json_option, parse_size
from boneseg.cli.output import console, escape, print_json
from boneseg.errors import DataError


@app.command("check")
def check_command(
    submission: Path = typer.Argument(
        ..., metavar="PRED.csv", help="Submission CSV to validate (`-`: standard input).", show_default=False
    ),
    images: Path = images_option("Image folder (or dataset root: its test/DCM) the submission must cover exactly."),
    size: str = typer.Option(
        "2048", "--size", help="Image size the RLE must fit, N or HxW (with --images: each image's own size instead)."
    ),
    json_out: bool = json_option("Print {file, valid, problems} as JSON on stdout (exit code as without --json)."),
) -> None:
    """Validate a submission: header, 29 known classes per image once each, well-formed RLE inside the
    image, and (with --images) exactly that folder's images. Exit 0 when valid, 1 listing every problem."""
    from boneseg.data.layout import by_image_name, find_images, image_shape
    from boneseg.submission import validate_submission

    shape = parse_size(size)
    if str(submission) != "-" and not submission.exists():
        raise DataError(f"{submission}: file not found")
    if submission.is_dir():
        raise DataError(f"{submission}: is a folder, not a submission CSV")
    found = by_image_name(find_images(images), images) if images is not None else None
    sizes = {name: image_shape(s.image) for name, s in found.items()} if found is not None else None
    problems = validate_submission(submission, shape, sizes)
    if json_out:
        print_json({"file": str(submission), "valid": not problems, "problems": problems})
    elif problems:
        for p in problems:
            console.print(f"{submission}: {p}", markup=False)
        console.print(f"[red]invalid[/red]: {len(problems)} problem(s)")
    else:
        console.print(f"[green]valid[/green]: {escape(str(submission))}")
    raise typer.Exit(1 if problems else 0)
