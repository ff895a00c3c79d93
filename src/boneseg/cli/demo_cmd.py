"""`boneseg demo`: the whole pipeline on a synthetic set on this machine."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import force_option, json_option, out_option


@app.command("demo")
def demo_command(
    out: Path = out_option(
        "Folder for everything the demo writes (must be empty or absent unless --force).", default=Path("boneseg-demo")
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the dataset, folds, initialisation and order: same seed, same Dice on this machine."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Tiny sizes and two epochs: checks every step in seconds (Dice meaningless)."
    ),
    threads: int = typer.Option(
        None,
        "--threads",
        show_default=False,
        help=(
            "Torch threads \\[default: 1: the same Dice whatever the core count, steady under load; "
            "more is faster on a quiet machine]."
        ),
    ),
    force: bool = force_option("Replace a non-empty --out (the old content stays until the new demo is done)."),
    json_out: bool = json_option("Print summary.json on stdout too."),
) -> None:
    """synth -> split -> train -> TTA -> predict -> analyze on a synthetic hand set: 8-9 min on a quiet 2-core
    CPU, up to ~25 on a busy one (docs/demo.md), 1.4 GB, 200 MB of disk (--quick: 15 s); ends with the
    per-class validation Dice and writes OUT/summary.json."""
    from boneseg.cli.output import console, print_json, reporter
    from boneseg.workflows.demo import format_seconds, run_demo

    with reporter(transient=True) as shown:
        summary = run_demo(
            out,
            seed=seed,
            quick=quick,
            force=force,
            reporter=shown,
            overrides={"threads": threads} if threads is not None else None,
        )
    console.print(summary_table(summary))
    console.print(
        f"mean validation Dice [bold]{summary['mean_dice']:.4f}[/bold] "
        f"(engine at the training size: {summary['train_val_dice']:.4f}); "
        f"{format_seconds(summary['seconds'])}",
        markup=True,
    )
    console.print(
        f"wrote {out}/: data/, splits.json, run/, val.csv, submission.csv, analysis/, report/, "
        "overlay.png, summary.json",
        markup=False,
    )
    console.print(f"report: {out / summary['files']['report']} (open it in a browser)", markup=False)
    if json_out:
        print_json(summary)


def summary_table(summary: Mapping):
    """The per-class validation Dice of a demo summary as a rich table, worst first, with the mean."""
    from rich.text import Text

    from boneseg.classes import CLASSES
    from boneseg.cli.output import table

    per_class = summary["per_class_dice"]
    engine = summary.get("train_val_dice_per_class") or {}
    rows = [[c, per_class[c], engine.get(c, "-")] for c in sorted(CLASSES, key=lambda c: per_class[c])]
    rows.append(
        [
            Text("mean", style="bold"),
            summary["mean_dice"],
            summary["train_val_dice"] if summary.get("train_val_dice") is not None else "-",
        ]
    )
    return table(
        f"Validation Dice per class, worst first ({summary['images']['val']} images, TTA {summary['tta']['best']})",
        ["class", "Dice (predict + analyze)", "Dice (engine, best epoch)"],
        rows,
    )
