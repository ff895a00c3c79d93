"""`boneseg ensemble`: hard voting over submission CSVs, soft voting over probability folders."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import (
    Vote,
    calibrations_option,
    force_option,
    out_option,
    parse_floats,
    threshold_option,
    vote_option,
    workers_option,
)
from boneseg.cli.output import console, reporter


@app.command("ensemble")
def ensemble_command(
    inputs: list[Path] = typer.Argument(
        ...,
        metavar="PRED.csv|PROBDIR",
        help="Submission CSVs (hard vote) or `predict --save-probs` folders (soft vote).",
        show_default=False,
    ),
    vote: Vote = vote_option(
        "hard: pixel-wise vote over CSVs; soft: weighted mean of "
        "probabilities. Default: soft for folders, hard for files."
    ),
    min_votes: int = typer.Option(
        None,
        "--min-votes",
        help="Hard vote: keep pixels with at least K votes (default: strict majority n//2+1).",
        show_default=False,
    ),
    weights: list[str] = typer.Option(
        None,
        "--weights",
        help="One weight per input, comma-separated or "
        "repeated. Hard: keep pixels with more than half of the total weight; "
        "soft: weighted mean.",
        show_default=False,
    ),
    threshold: str = threshold_option(
        "Soft vote: probability threshold, global or "
        "a JSON file {class: threshold} (default 0.5, or the thresholds of a "
        "`boneseg select` plan)."
    ),
    per_class: Path = typer.Option(
        None,
        "--per-class",
        metavar="FILE.json",
        help="JSON {class: input index, input name or "
        "list of weights}: who votes on each class; or a `boneseg select` plan.",
        show_default=False,
    ),
    scores: list[Path] = typer.Option(
        None,
        "--scores",
        metavar="FILE.json",
        help="Validation scores per input (`analyze --json` "
        "or `tta --json`), repeated in input order: each class goes to its "
        "best input.",
        show_default=False,
    ),
    per_class_out: Path = typer.Option(
        None,
        "--per-class-out",
        metavar="FILE.json",
        help="Also save the per-class choice made from --scores as JSON.",
        show_default=False,
    ),
    calibration: list[str] = calibrations_option(
        "Soft vote: one calibration file per input (boneseg calibrate), repeated in input order, 'none' for "
        "an input left as is: each input is calibrated before the mean."
    ),
    size: str = typer.Option("2048", "--size", help="Hard vote: image size the RLE must fit: N or HxW."),
    workers: int = workers_option(),
    output: str = out_option("Output CSV (`-`: stdout).", metavar="PRED.csv", default="-"),
    output_alias: str = typer.Option(None, "--output", hidden=True),  # the old name of -o/--out
    force: bool = force_option(),
) -> None:
    """Ensemble predictions: [bold]hard[/bold] votes over submission CSVs (rows matched by image and class,
    any order, never decoding a mask) or [bold]soft[/bold] weighted means of probability folders."""
    from boneseg.cli.options import parse_size
    from boneseg.workflows import ensemble

    with reporter(transient=True) as shown:
        summary = ensemble.ensemble(
            inputs,
            output_alias or output,
            vote=vote.value if vote is not None else None,
            min_votes=min_votes,
            weights=parse_floats(weights, "--weights"),
            threshold=threshold,
            per_class=per_class,
            scores=scores,
            per_class_out=per_class_out,
            calibration=calibration,
            shape=parse_size(size),
            workers=workers,
            force=force,
            reporter=shown,
        )
    if summary.per_class_out is not None:
        console.print(f"per-class choice written to {summary.per_class_out}", markup=False)
    console.print(
        f"{summary.vote} vote over {len(summary.inputs)} inputs: {summary.images} images -> "
        f"{'stdout' if summary.output == '-' else summary.output}",
        markup=False,
    )
