"""`boneseg audit`: suspect labels, ranked, from (out-of-fold) predictions."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import force_option, out_option, threshold_option


@app.command("audit")
def audit_command(
    data: Path = typer.Argument(..., metavar="DATA", help="Dataset root whose train labels are audited."),
    pred: Path = typer.Option(
        ...,
        "--pred",
        "-p",
        metavar="OOF.csv|PROBDIR",
        show_default=False,
        help="Predictions of the train images: a CSV or a --save-probs folder, ideally from boneseg oof.",
    ),
    out: Path = out_option("Folder for suspects.csv, audit.json and crops/."),
    min_score: float = typer.Option(
        3.5, "--min-score", help="List pairs scoring at least this (robust z-score per class)."
    ),
    threshold: str = threshold_option("Threshold of a probability folder.", default="0.5"),
    uncertainty: Path = typer.Option(
        None,
        "--uncertainty",
        metavar="DIR",
        show_default=False,
        help="The predict --save-uncertainty folder of the same predictions: a disagreement where the model is "
        "unsure counts less (each measure weighted by 1 - the mean uncertainty where label and prediction differ).",
    ),
    crops: int = typer.Option(12, "--crops", help="Draw this many top suspects (label green, prediction red)."),
    top: int = typer.Option(15, "--top", min=0, help="Suspects listed on the terminal."),
    force: bool = force_option("Overwrite existing files in --out."),
) -> None:
    """Rank (image, class) labels by how likely they are wrong: disagreement with a confident prediction far
    beyond the class's usual (Dice, boundary distance), swapped classes, a missing or spurious label, and
    geometry no bone has. Writes DIR/suspects.csv (image_name,class,kind,score, most suspect first),
    DIR/audit.json and crops of the top suspects; eda and train take the list with --exclude. With
    --uncertainty, a disagreement where the model is sure weighs more than one where it is unsure."""
    from boneseg.cli.output import console, reporter, table
    from boneseg.workflows.audit import run_audit

    with reporter(transient=True, disable=not console.is_terminal) as shown:
        result, _ = run_audit(
            data,
            pred,
            out,
            threshold=threshold,
            min_score=min_score,
            uncertainty=uncertainty,
            crops=crops,
            force=force,
            reporter=shown,
        )
    n = len(result.suspects)
    console.print(
        table(
            f"{n} suspect label(s) in {len(result.images)} images (score >= {min_score:g}), most suspect first"
            + (f"; predictions' mean Dice {result.mean_dice:.3f}" if result.mean_dice is not None else "")
            + (" (too weak to rank labels)" if result.weak else ""),
            ["image", "class", "kind", "score", *(["unsure"] if result.uncertainty else [])],
            [
                [s["image_name"], s["class"], s["kind"], f"{s['score']:.1f}"]
                + ([f"{s['uncertainty']:.2f}"] if result.uncertainty else [])
                for s in result.suspects[:top]
            ],
        )
    )
    console.print(
        f"wrote {out / 'suspects.csv'}, {out / 'audit.json'}" + (f" and {min(crops, n)} crops" if crops and n else ""),
        markup=False,
    )
