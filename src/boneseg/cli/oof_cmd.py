"""`boneseg oof`: out-of-fold predictions from one run per fold."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import (
    AMP,
    BATCH_SIZE,
    COMPILE,
    DEVICE,
    META,
    OVERLAP,
    SCALES,
    SIZE,
    SLIDING,
    TTA,
    WINDOW,
    WRIST_MODEL,
    force_option,
    loader_workers,
    out_option,
    predict_options,
    threshold_option,
)


@app.command("oof")
def oof_command(
    runs: list[Path] = typer.Argument(
        ...,
        metavar="RUN_f0 RUN_f1 …",
        show_default=False,
        help="One run folder (or checkpoint) per fold, from boneseg train --fold k.",
    ),
    out: str = out_option("Submission CSV over every train image ('-': standard output).", "OOF.csv"),
    data: Path = typer.Option(
        None,
        "--data",
        metavar="DATA",
        show_default=False,
        help="Dataset root (default: the one the first run was trained on).",
    ),
    save_probs: Path = typer.Option(
        None,
        "--save-probs",
        metavar="PROBDIR",
        show_default=False,
        help="Also write uint8 probabilities here (for ensemble --vote soft and audit).",
    ),
    tta: str = TTA,
    scales: str = SCALES,
    sliding: bool = SLIDING,
    window: int = WINDOW,
    overlap: float = OVERLAP,
    size: int = SIZE,
    threshold: str = threshold_option("Threshold, or a JSON file {class: t}.", default="0.5"),
    wrist_model: Path = WRIST_MODEL,
    meta: Path = META,
    device: str = DEVICE,
    batch_size: int = BATCH_SIZE,
    amp: bool = AMP,
    compile: bool = COMPILE,
    workers: int = loader_workers(0),
    force: bool = force_option("Overwrite an existing CSV / non-empty --save-probs folder."),
) -> None:
    """Each fold run predicts the validation images of its own saved fold; together they must cover every
    train image once (a missing fold, or two runs claiming one image, is an error). Writes one CSV in
    sorted image order, as predict does, for analyze --gt, ensemble and audit."""
    from boneseg.cli.output import console, reporter, table
    from boneseg.workflows.oof import oof

    options = predict_options(locals())
    with reporter() as shown:
        summary = oof(
            runs,
            out,
            data=data,
            options=options,
            tta=tta,
            scales=scales,
            sliding=sliding,
            threshold=threshold,
            save_probs=save_probs,
            force=force,
            reporter=shown,
        )
    console.print(
        table(
            f"Out-of-fold predictions: {summary.images} images -> {summary.output}",
            ["fold", "run", "images"],
            [[f["fold"], f["run"], f["images"]] for f in summary.folds],
        )
    )
    if summary.probs_dir:
        console.print(f"probabilities in {summary.probs_dir}", markup=False)
