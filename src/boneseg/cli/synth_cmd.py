"""`boneseg synth`: a synthetic hand X-ray dataset in the competition layout."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import force_option, image_size_option
from boneseg.cli.output import console, reporter, table


@app.command("synth")
def synth_command(
    out: Path = typer.Argument(
        ..., metavar="OUT", help="Dataset folder to create (must be empty or absent unless --force)."
    ),
    patients: int = typer.Option(8, "--patients", help="Train patients (two labelled images each: both hands)."),
    test_patients: int = typer.Option(2, "--test-patients", help="Test patients (two unlabelled images each)."),
    size: int = image_size_option("Image side in pixels (128..8192; the real data is 2048)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same options, byte-identical files (on one machine)."),
    force: bool = force_option("Overwrite a non-empty OUT (replaces its train/, test/, meta)."),
    label_errors: float = typer.Option(
        0.0,
        "--label-errors",
        metavar="FRACTION",
        help="Give this fraction of the train images one known label error each "
        "(shift, scale, swap, delete, blob in turn); the list goes to "
        "OUT/label_errors.csv.",
    ),
) -> None:
    """Write procedural hand radiographs with 29-bone polygon labels in the competition layout."""
    from boneseg.data.synth import check_options, synthesize

    check_options(out, patients, test_patients, size, force, seed, label_errors)
    with reporter() as shown:
        summary = synthesize(
            out,
            patients=patients,
            test_patients=test_patients,
            size=size,
            seed=seed,
            force=force,
            reporter=shown,
            label_errors=label_errors,
        )
    console.print(
        table(
            f"Synthetic dataset in {summary.out}",
            ["split", "patients", "images"],
            [
                ["train", len(summary.train_ids), summary.train_images],
                ["test", len(summary.test_ids), summary.test_images],
            ],
        )
    )
