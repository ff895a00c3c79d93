"""`boneseg tta`: score test-time augmentation policies on validation images, tune thresholds."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import (
    AMP,
    BATCH_SIZE,
    CALIBRATION,
    COMPILE,
    DEVICE,
    META,
    MODELS,
    OVERLAP,
    SCALES,
    SIZE,
    TRUST_MODEL,
    WEIGHTS,
    WINDOW,
    WRIST_MODEL,
    fold_option,
    force_option,
    json_option,
    loader_workers,
    parse_floats,
    predict_options,
    splits_option,
)


@app.command("tta")
def tta_command(
    data: Path = typer.Argument(..., metavar="DATA", help="Dataset root with labelled train images."),
    models: list[Path] = MODELS,
    fold: int = fold_option("Validation fold (default: the checkpoint's)."),
    splits: Path = splits_option("Splits JSON from boneseg split (default: the checkpoint's)."),
    policies: str = typer.Option(
        None,
        "--policies",
        help="Comma-separated, e.g. none,hflip,scale,hflip+scale,"
        "sliding:none (default: all four, plus sliding ones "
        "with --sliding).",
    ),
    sliding: bool = typer.Option(False, "--sliding", help="Also score the sliding-window versions."),
    scales: str = SCALES,
    window: int = WINDOW,
    overlap: float = OVERLAP,
    size: int = SIZE,
    thresholds_out: Path = typer.Option(
        None,
        "--thresholds-out",
        metavar="FILE.json",
        help="Write the per-class thresholds that maximise validation Dice (for predict --threshold).",
    ),
    search: str = typer.Option("0.3,0.7", "--search", help="Threshold search range low,high."),
    wrist_model: Path = WRIST_MODEL,
    meta: Path = META,
    calibration: str = CALIBRATION,
    trust_model: bool = TRUST_MODEL,
    as_json: bool = json_option("Print the report as JSON on stdout."),
    weights: str = WEIGHTS,
    device: str = DEVICE,
    batch_size: int = BATCH_SIZE,
    amp: bool = AMP,
    compile: bool = COMPILE,
    workers: int = loader_workers(),
    force: bool = force_option("Overwrite an existing --thresholds-out file."),
) -> None:
    """Score TTA policies on validation images with the competition Dice and name the best.

    Optionally writes the per-class thresholds (tuned on the best policy) for predict --threshold."""
    from boneseg.cli.output import console, escape, print_json, reporter, table
    from boneseg.errors import UsageError
    from boneseg.workflows.validation import evaluate_policies

    rng = parse_floats(search, "--search")
    if rng is None or len(rng) != 2:
        raise UsageError(f"--search must be low,high, got {search!r}")
    options = predict_options(locals())
    with reporter() as shown:
        report = evaluate_policies(
            data,
            models,
            options=options,
            policies=[p for p in (policies or "").split(",") if p.strip()] or None,
            fold=fold,
            splits=splits,
            scales=scales,
            sliding=sliding,
            search=(rng[0], rng[1]),
            thresholds_out=thresholds_out,
            force=force,
            reporter=shown,
        )
    if as_json:
        print_json(report.to_json())
        return
    rows = [
        (name, r["mean_dice"], *r["group_dice"].values(), r["views"], f"{r['seconds_per_image']:.3f}")
        for name, r in report.policies.items()
    ]
    first = next(iter(report.policies.values()))
    where = f"fold {report.fold}" if report.fold is not None else "train images"
    console.print(
        table(
            f"TTA policies on {report.images} image(s) ({where}), Dice at 0.5",
            ["policy", "mean Dice", *first["group_dice"], "views", "s/img"],
            rows,
        )
    )
    for note in report.notes:
        console.print(f"[yellow]note: {escape(note)}[/]")
    console.print(f"best: [bold]{report.best}[/] (mean Dice {report.policies[report.best]['mean_dice']:.4f})")
    if report.thresholds is not None:
        console.print(
            f"per-class thresholds on {report.best}: mean Dice {report.tuned_mean_dice:.4f} "
            "(tuned on these images: optimistic)" + (f" -> {escape(str(thresholds_out))}" if thresholds_out else "")
        )
