"""`boneseg analyze`: score predictions against the labels and compare models."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import (
    fold_option,
    force_option,
    gt_option,
    image_size_option,
    images_option,
    json_option,
    out_option,
    splits_option,
)
from boneseg.cli.output import console, escape, print_json, reporter, table


@app.command("analyze")
def analyze_command(
    preds: list[Path] = typer.Argument(
        ..., metavar="PRED.csv", show_default=False, help="Submission CSVs to score and/or compare."
    ),
    gt: Path = gt_option("Dataset root: score against its train labels (images matched by name)."),
    fold: int = fold_option("With --splits: score only this fold's validation images."),
    splits: Path = splits_option(),
    size: int = image_size_option("Image side of the CSVs without --gt or --images."),
    images: Path = images_option(
        "Without --gt: image folder (or dataset root: its test/DCM) whose PNG headers give each image's size."
    ),
    out: Path = out_option("Folder for analysis.json and the PNG plots.", default=None),
    json_out: bool = json_option("Print the report as JSON on stdout."),
    worst: int = typer.Option(10, "--worst", min=0, help="How many worst images / cases to list and draw."),
    tolerance: float = typer.Option(
        0.02, "--tolerance", min=0.0, help="Ensemble suggestion: consider models within this Dice of the best."
    ),
    report: bool = typer.Option(
        False, "--report", help="Also write the HTML report (`boneseg report`) into OUT/report/."
    ),
    force: bool = force_option("Overwrite existing files in --out."),
) -> None:
    """Per-class and per-image Dice against the labels (--gt), model-vs-model Dice for several CSVs, area
    statistics, the worst cases and an ensemble suggestion. Tables on stderr; --json on stdout."""
    from boneseg.errors import UsageError
    from boneseg.workflows.analysis import analyze, write_plots
    from boneseg.workflows.report import REPORT_DIR, check_out, write_report

    if report and out is None:
        raise UsageError("--report writes into --out DIR: give --out")
    if report:
        check_out(out / REPORT_DIR, force)
    with reporter(transient=True) as shown:
        result = analyze(
            preds,
            gt,
            fold=fold,
            splits=splits,
            size=size,
            images=images,
            worst=worst,
            tolerance=tolerance,
            reporter=shown,
        )
        written = write_plots(result, out, force=force) if out is not None else []
        if report:
            written.append(write_report(result, out / REPORT_DIR, images=images, force=force, reporter=shown))
    for note in result.inputs.notes:
        console.print(f"note: {note}", markup=False)
    _print_tables(result)
    if written:
        console.print(f"wrote {', '.join(str(p) for p in written)}", markup=False)
    if json_out:
        print_json(result.to_json())


def _short(names: list[str]) -> list[str]:
    shorts = [Path(n).name for n in names]
    return shorts if len(set(shorts)) == len(shorts) else list(names)


def _print_tables(result) -> None:
    import numpy as np
    from rich.text import Text

    from boneseg.classes import CLASSES

    names = _short(result.inputs.names)
    n_img = len(result.inputs.images)
    if result.dice is not None:
        dice = np.stack([result.per_class_dice(m) for m in range(result.models)])
        order = np.argsort(dice.mean(axis=0), kind="stable")
        iou = np.stack([result.per_class_iou(m) for m in range(result.models)])
        if result.models == 1:
            ratio, gt_area = result.area_ratio(0), result.gt_area.mean(axis=0)
            rows = [[CLASSES[c], dice[0, c], iou[0, c], f"{ratio[c]:.3f}", f"{gt_area[c]:.0f}"] for c in order]
            columns = ["class", "Dice", "IoU", "area pred/true", "true px"]
            rows.append([Text("mean", style="bold"), float(dice[0].mean()), float(iou[0].mean()), "—", "—"])
        else:
            rows = [[CLASSES[c], *dice[:, c]] for c in order]
            columns = ["class", *names]
            rows.append([Text("mean", style="bold"), *(float(dice[m].mean()) for m in range(result.models))])
        console.print(table(f"Dice per class, worst first ({n_img} images)", columns, rows))
        worst = result.worst_images(0)
        if worst:
            console.print(
                table(
                    f"Worst images ({names[0]})",
                    ["image", "Dice", "worst class", "its Dice"],
                    [[w["image"], w["dice"], w["worst_class"], w["worst_class_dice"]] for w in worst],
                )
            )
        for m, name in enumerate(names):
            console.print(
                f"mean Dice {escape(name)}: [bold]{result.mean_dice(m):.4f}[/bold] (IoU {result.mean_iou(m):.4f})"
            )
    else:
        area = result.pred_area.mean(axis=1)
        empty = (result.pred_area == 0).sum(axis=1)
        rows = [
            [c, *(f"{area[m, i]:.0f} ({empty[m, i]})" for m in range(result.models))] for i, c in enumerate(CLASSES)
        ]
        console.print(table(f"Mean predicted area in px (empty masks) over {n_img} images", ["class", *names], rows))
    sims = result.similarity_matrices()
    if sims is not None:
        mean, per_class = sims
        console.print(
            table(
                "Model-vs-model Dice (mean over classes)",
                ["", *names],
                [[n, *map(float, row)] for n, row in zip(names, mean)],
            )
        )
        off = ~np.eye(result.models, dtype=bool)
        agreement = np.array([pc[off].mean() for pc in per_class])
        rows = [[CLASSES[c], float(agreement[c])] for c in np.argsort(agreement, kind="stable")[:5]]
        console.print(table("Classes the models disagree on most", ["class", "mean pairwise Dice"], rows))
        _print_model_differences(result, names)
        suggestion = [Path(n).name if n in result.inputs.names else n for n in result.suggested_ensemble()]
        rule = (
            "most accurate, then least similar within the tolerance"
            if result.dice is not None
            else "least similar pair"
        )
        console.print(f"suggested ensemble ({rule}): [bold]{escape(' + '.join(suggestion))}[/bold]")


def _print_model_differences(result, names: list[str]) -> None:
    """Pixels added/removed against the first input, the spread of class areas, the most disputed images."""
    import numpy as np
    from rich.text import Text

    from boneseg.classes import CLASSES

    changes = [result.changes(m) for m in range(1, result.models)]
    rows: list[list] = [
        [CLASSES[c], *(f"+{added[c]:,} / −{removed[c]:,}" for added, removed in changes)]
        for c in range(len(CLASSES))
        if any(added[c] or removed[c] for added, removed in changes)
    ]  # the classes some model changes
    rows.append(
        [Text("total", style="bold"), *(f"+{added.sum():,} / −{removed.sum():,}" for added, removed in changes)]
    )
    console.print(table(f"Pixels added / removed going from {names[0]} to each model", ["class", *names[1:]], rows))
    spread = result.area_spread()
    order = np.argsort(-np.nan_to_num(spread["cv"], nan=-1.0), kind="stable")[: max(result.worst, 1)]
    console.print(
        table(
            "Class areas across models, most spread first (mean px per image)",
            ["class", "mean px", "std px", "CV"],
            [
                [CLASSES[c], f"{spread['mean'][c]:.0f}", f"{spread['std'][c]:.0f}", f"{spread['cv'][c]:.3f}"]
                for c in order
            ],
        )
    )
    images = result.disagreement_images()
    if images:
        console.print(
            table(
                "Images the models disagree on most",
                ["image", "mean pairwise Dice", "worst class", "its Dice"],
                [[d["image"], d["mean_pairwise_dice"], d["worst_class"], d["worst_class_dice"]] for d in images],
            )
        )
