"""`boneseg select`: choose an ensemble by greedy forward selection on out-of-fold predictions."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import (
    Vote,
    calibrations_option,
    force_option,
    gt_option,
    out_option,
    splits_option,
    threshold_option,
    vote_option,
    workers_option,
)
from boneseg.cli.output import console, reporter, table


@app.command("select")
def select_command(
    inputs: list[Path] = typer.Argument(
        ...,
        metavar="OOF.csv|PROBDIR",
        show_default=False,
        help="One out-of-fold prediction per model, over the train images: "
        "submission CSVs (hard vote) or `predict --save-probs` folders (soft vote).",
    ),
    gt: Path = gt_option("Dataset root: its train labels are the truth.", default=...),
    splits: Path = splits_option("Splits file (`boneseg split`): the folds of the fold-wise spread.", default=...),
    out: Path = out_option("The plan: `boneseg ensemble TEST… --per-class PLAN.json` applies it.", metavar="PLAN.json"),
    vote: Vote = vote_option("hard or soft; default: soft for folders, hard for CSVs."),
    overall: bool = typer.Option(
        False, "--overall", help="One ensemble for all classes (maximise the mean Dice) instead of one per class."
    ),
    steps: int = typer.Option(10, "--steps", help="Greedy steps (the largest ensemble size)."),
    threshold: str = threshold_option(
        "Soft vote: threshold during selection, a number or a JSON file {class: threshold} (default 0.5)."
    ),
    tune_thresholds: bool = typer.Option(
        False,
        "--tune-thresholds",
        help="Soft vote: then pick each class's threshold (0.05 … 0.95) for the selected ensemble.",
    ),
    calibration: list[str] = calibrations_option(
        "Soft vote: one calibration file per input (boneseg calibrate), repeated in input order, 'none' for "
        "an input left as is; give ensemble the same files."
    ),
    workers: int = workers_option("Processes reading probability folders (default: all cores)."),
    force: bool = force_option("Overwrite an existing plan."),
) -> None:
    """Greedy forward selection with replacement (Caruana et al. 2004) of the hard or soft vote that
    maximises the out-of-fold Dice, per class or overall. Each step shows the fold-wise mean and spread;
    a gain within the spread of its fold-wise gains is marked noise. Writes a plan for `ensemble`."""
    from boneseg.workflows.select import select

    with reporter(transient=True) as shown:
        result = select(
            inputs,
            gt,
            splits,
            vote=vote.value if vote else None,
            steps=steps,
            per_class=not overall,
            threshold=threshold,
            tune_thresholds=tune_thresholds,
            calibration=calibration,
            workers=workers,
            out=out,
            force=force,
            reporter=shown,
        )
    plan = result.plan()
    short = _short(result.inputs)

    def verdict(row: dict) -> str:
        return "" if "gain" not in row else "noise" if row["noise"] else "gain" if row["gain"] > 0 else "loss"

    rows = [
        [
            row["step"],
            ", ".join(f"{short[n]}×{k}" if not overall else short[n] for n, k in row["added"].items()),
            row["mean"],
            row["sd"],
            row.get("gain", ""),
            row.get("gain_sd", ""),
            verdict(row),
        ]
        for row in plan["steps"]
    ]
    console.print(
        table(
            f"{result.vote} vote, {'overall' if overall else 'per class'}: OOF Dice per step "
            f"({result.images} images, folds {', '.join(map(str, result.fold_ids))})",
            ["step", "added" + ("" if overall else " (× classes)"), "Dice", "sd over folds", "gain", "sd of gain", ""],
            rows,
        )
    )
    cls_rows = []
    for name, c in plan["classes"].items():
        ens = " + ".join(f"{k}×{short[i]}" if k > 1 else short[i] for i, k in zip(result.inputs, c["weights"]) if k)
        single = c["best_single"]
        cls_rows.append(
            [name, ens, c["mean"], c["sd"], short[single["input"]], single["gain"], verdict(single)]
            + ([c["threshold"]] if "threshold" in c else [])
        )
    console.print(
        table(
            "The plan per class",
            ["class", "ensemble", "Dice", "sd over folds", "best single", "gain over it", ""]
            + (["threshold"] if result.thresholds is not None else []),
            cls_rows,
        )
    )
    best = plan["best_single"]
    console.print(
        f"plan: OOF Dice {plan['score']['mean']:.4f} ± {plan['score']['sd']:.4f} over folds; best single "
        f"model {short[best['input']]} {best['mean']:.4f}: gain {best['gain']:+.4f} ± {best['gain_sd']:.4f} "
        f"({verdict(best)}) -> {out}",
        markup=False,
    )


def _short(names: list[str]) -> dict[str, str]:
    shorts = [Path(n).name for n in names]
    return dict(zip(names, shorts if len(set(shorts)) == len(shorts) else names))
