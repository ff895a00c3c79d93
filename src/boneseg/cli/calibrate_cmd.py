"""`boneseg calibrate`: per-class calibration measured and fitted on out-of-fold probabilities."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import force_option, gt_option, json_option, out_option, workers_option


@app.command("calibrate")
def calibrate_command(
    oof_probs: Path = typer.Argument(
        ...,
        metavar="OOF_PROBS",
        show_default=False,
        help="Out-of-fold probability folder (boneseg oof --save-probs) over the train images.",
    ),
    gt: Path = gt_option("Dataset root: its train labels are the truth.", default=...),
    out: Path = out_option(
        "The calibration file (predict/ensemble/export --calibration FILE; a run folder's calibration.json).",
        metavar="FILE.json",
    ),
    bins: int = typer.Option(15, "--bins", help="Equal-mass bins of the ECE."),
    band: int = typer.Option(
        16, "--band", help="Band region: pixels within this many pixels of labelled or predicted bone."
    ),
    fit_on: str = typer.Option(
        "all", "--fit-on", metavar="all|band", help="Region whose NLL the fit minimises: all or band."
    ),
    platt: bool = typer.Option(
        True,
        "--platt/--temperature-only",
        show_default=False,
        help="Fit a bias beside the temperature \\[default: on].",
    ),
    isotonic: bool = typer.Option(
        False,
        "--isotonic",
        help="Fit a non-decreasing step per saved uint8 value and class instead of temperature and bias (the file "
        "is then version 2).",
    ),
    thresholds: bool = typer.Option(
        True,
        "--thresholds/--no-thresholds",
        show_default=False,
        help="Store per-class thresholds searched on the calibrated probabilities \\[default: on].",
    ),
    plot: Path = typer.Option(
        None,
        "--plot",
        metavar="FILE.png|none",
        show_default=False,
        help="PNG of the 29 reliability curves (default: the --out file with .png).",
    ),
    workers: int = workers_option("Processes reading probability files (default: all cores)."),
    as_json: bool = json_option("Print the figures as JSON on stdout."),
    force: bool = force_option(),
) -> None:
    """Per class: expected calibration error (equal-mass bins over every pixel, within a band around bone and
    over all pixels), reliability curve and NLL, before and after a fitted temperature (and bias; or, with
    --isotonic, a monotone step per saved value), cross-fitted
    over the folds the OOF folder records. Writes the calibration that predict, ensemble --vote soft and export
    apply, with thresholds searched after calibration, and a PNG of the reliability curves."""
    from boneseg.cli.output import console, print_json, reporter, table
    from boneseg.workflows.calibrate import calibrate

    with reporter(transient=True) as shown:
        result = calibrate(
            oof_probs,
            gt,
            out,
            bins=bins,
            band=band,
            fit_on=fit_on,
            platt=platt,
            isotonic=isotonic,
            thresholds=thresholds,
            plot=plot,
            workers=workers,
            force=force,
            reporter=shown,
        )
    if as_json:
        print_json(result.as_dict())
        return
    rows = [
        [
            name,
            row["temperature"],
            row["bias"],
            row["temperature_sd"],
            row["ece_band_before"],
            row["ece_band_after"],
            row["ece_all_before"],
            row["ece_all_after"],
            row["nll_all_before"],
            row["nll_all_after"],
            row.get("threshold", ""),
        ]
        for name, row in result.classes.items()
    ]
    console.print(
        table(
            f"Calibration per class ({result.images} images, folds {', '.join(map(str, result.folds))})",
            [
                "class",
                "T",
                "bias",
                "T sd (folds)",
                "ECE band",
                "after",
                "ECE all",
                "after",
                "NLL",
                "after",
                "threshold",
            ],
            rows,
        )
    )
    s = result.summary
    console.print(
        f"mean ECE band {s['ece_band_before']:.4f} -> {s['ece_band_after']:.4f} (sd over folds "
        f"{s['ece_band_after_sd']:.4f}); all pixels {s['ece_all_before']:.5f} -> {s['ece_all_after']:.5f}; "
        f"Dice {s['dice_before']:.4f} -> {s['dice_tuned']:.4f} with searched thresholds "
        f"(sd {s['dice_tuned_sd']:.4f}) -> {result.output}" + (f", {result.plot}" if result.plot else ""),
        markup=False,
    )
