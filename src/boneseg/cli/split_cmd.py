"""`boneseg split`: patient-grouped cross-validation folds."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import force_option, out_option


@app.command("split")
def split_command(
    data: Path = typer.Argument(..., metavar="DATA", help="Dataset root (with train/DCM and train/outputs_json)."),
    folds: int = typer.Option(5, "--folds", "-k", help="Number of folds."),
    seed: int = typer.Option(0, "--seed", help="Shuffling seed (same seed, same folds)."),
    stratify: str = typer.Option(
        None, "--stratify", help="Balance folds by: none, side (hand side) or tilt (wrist tilt) \\[default: none]."
    ),
    out: str = out_option("Output JSON file ('-' for stdout).", metavar=None, default="-"),
    force: bool = force_option("Overwrite an existing output file."),
) -> None:
    """Patient-grouped K folds (both hands of a patient in one fold) as JSON."""
    from collections import Counter

    from boneseg.cli.output import console, table
    from boneseg.data.layout import discover
    from boneseg.data.split import check_split_options, make_splits
    from boneseg.io import check_output, is_stdout, write_json

    check_split_options(folds, stratify, seed)
    if not is_stdout(out):
        check_output(out, force)
    samples = discover(data)
    splits = make_splits(samples, folds=folds, seed=seed, stratify=stratify)
    write_json(out, splits, force=force)
    if not is_stdout(out):
        images = Counter(splits["assignments"].values())
        patients = {k: len({n.split("/")[0] for n, f in splits["assignments"].items() if f == k}) for k in images}
        console.print(
            table(
                f"{folds} folds -> {out}",
                ["fold", "patients", "images"],
                [(k, patients[k], images[k]) for k in sorted(images)],
            )
        )
