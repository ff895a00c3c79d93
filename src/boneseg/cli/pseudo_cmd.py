"""`boneseg pseudo`: test predictions -> a pseudo-labelled training set."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import force_option, json_option, out_option, threshold_option, workers_option
from boneseg.cli.output import console, print_json, reporter


@app.command("pseudo")
def pseudo_command(
    source: Path = typer.Argument(
        ...,
        metavar="PRED.csv|PROBDIR",
        help="Submission CSV or `predict --save-probs` folder with the test predictions.",
        show_default=False,
    ),
    data: Path = typer.Argument(
        ..., metavar="DATA", help="Dataset root (its test/DCM) or folder of the predicted PNGs.", show_default=False
    ),
    out: Path = out_option("Pseudo-label dataset folder to write (train layout).", metavar="PSEUDO"),
    min_confidence: float = typer.Option(
        None,
        "--min-confidence",
        help="Probability folders: leave out images where a class's mean probability inside its mask is below C.",
        show_default=False,
    ),
    threshold: str = threshold_option(
        "Probability folders: threshold, global or a JSON file {class: threshold}.", default="0.5"
    ),
    calibration: Path = typer.Option(
        None,
        "--calibration",
        metavar="FILE.json",
        help="Probability folders: a calibration file (boneseg calibrate) applied before the threshold and "
        "the confidence.",
        show_default=False,
    ),
    uncertainty: Path = typer.Option(
        None,
        "--uncertainty",
        metavar="DIR",
        help="The predict --save-uncertainty folder of the same predictions (with --max-uncertainty).",
        show_default=False,
    ),
    max_uncertainty: float = typer.Option(
        None,
        "--max-uncertainty",
        help="Leave out images where a class's mean entropy over its region (uncertainty.csv) is above U.",
        show_default=False,
    ),
    agree_with: list[Path] = typer.Option(
        None,
        "--agree-with",
        metavar="PRED.csv|PROBDIR",
        help="Other predictions of the same images "
        "(CSV or probability folder; repeat): each image records how well "
        "its masks agree with them (mean Dice).",
        show_default=False,
    ),
    min_agreement: float = typer.Option(
        None,
        "--min-agreement",
        help="Leave out images where a class's agreement with --agree-with is below A.",
        show_default=False,
    ),
    copy: bool = typer.Option(False, "--copy", help="Copy the images instead of hard-linking them."),
    workers: int = workers_option(),
    json_out: bool = json_option("Print the manifest's summary and left-out list as JSON on stdout."),
    force: bool = force_option("Replace an existing pseudo-label folder."),
) -> None:
    """Write the test images with pseudo-labels in the train layout (PNG + one polygon per class), usable
    as `boneseg train DATA --pseudo OUT`. Images with a missing class, (with probabilities) a class
    below --min-confidence, or a class whose masks disagree with --agree-with predictions (below
    --min-agreement) are left out and listed in OUT/pseudo_manifest.json."""
    from boneseg.workflows.pseudo import make_pseudo

    with reporter(transient=True) as shown:
        summary = make_pseudo(
            source,
            data,
            out,
            min_confidence=min_confidence,
            threshold=threshold,
            calibration=calibration,
            uncertainty=uncertainty,
            max_uncertainty=max_uncertainty,
            copy=copy,
            agree_with=agree_with or (),
            min_agreement=min_agreement,
            workers=workers,
            force=force,
            reporter=shown,
        )
    s = summary.manifest["summary"]
    if json_out:
        print_json({**s, "out": str(out), "left_out": summary.left_out})
        return
    refill = (
        f", polygon refill Dice mean {s['refill_dice_mean']:.4f} (min {s['refill_dice_min']:.4f})"
        if s["written"]
        else ""
    )
    console.print(f"wrote {s['written']} pseudo-labelled image(s) to {out}{refill}", markup=False)
    for item in summary.left_out[:10]:
        console.print(f"  left out {item['image']}: {item['reason']}", markup=False)
    if len(summary.left_out) > 10:
        console.print(f"  … and {len(summary.left_out) - 10} more (see {out}/pseudo_manifest.json)", markup=False)
