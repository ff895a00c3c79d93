"""`boneseg eda`: a dataset report on the terminal, as PNG plots and as JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.options import force_option, json_option, out_option
from boneseg.cli.output import console, print_json, reporter, table


@app.command("eda")
def eda_command(
    data: Path = typer.Argument(..., metavar="DATA", show_default=False, help="Dataset root (competition layout)."),
    out: Path = out_option("Folder for eda.json and the PNG plots (none written without it).", default=None),
    json_out: bool = json_option("Print the report (eda.json) on stdout."),
    samples: int = typer.Option(4, "--samples", min=0, help="Images drawn with their labels in samples.png."),
    exclude: Path = typer.Option(
        None,
        "--exclude",
        metavar="FILE",
        show_default=False,
        help="Leave out the train images listed in FILE (audit's suspects.csv, or one name per line).",
    ),
    force: bool = force_option("Overwrite existing files in --out."),
) -> None:
    """Counts, image sizes and intensities, class areas, overlapping class pairs, metadata and label problems
    (missing classes, tiny or self-intersecting polygons, points outside the image)."""
    from boneseg.workflows.eda import run_eda, write_eda

    with reporter(transient=True, disable=not console.is_terminal) as shown:
        report = run_eda(data, show=samples, reporter=shown, exclude=exclude)
        written = write_eda(report, out, force=force) if out is not None else []
    doc = report.to_json()
    _print_tables(doc)
    if written:
        console.print(f"wrote {', '.join(str(p) for p in written)}", markup=False)
    if json_out:
        print_json(doc)


def _print_tables(doc: dict) -> None:
    counts = doc["counts"]
    console.print(
        table(
            f"Dataset {doc['data']}",
            ["", "train", "test"],
            [
                ["patients", counts["patients"], counts["test_patients"]],
                ["images", counts["images"], counts["test_images"]],
                [
                    "right / left / unknown hands",
                    " / ".join(str(counts["sides"][s]) for s in ("R", "L", "unknown")),
                    "-",
                ],
                ["image sizes", _sizes(doc["image_sizes"]["train"]), _sizes(doc["image_sizes"]["test"])],
                *(
                    [
                        [f"intensity {k}", *(_num(doc["intensity"].get(s, {}).get(k)) for s in ("train", "test"))]
                        for k in ("mean", "std", "p1", "p50", "p99")
                    ]
                ),
            ],
        )
    )
    areas = doc["class_areas"]
    console.print(
        table(
            "Class areas (px)",
            ["class", "images", "mean", "std", "min", "median", "max"],
            [
                [c, a["count"], *(_num(a.get(k)) for k in ("mean", "std", "min", "median", "max"))]
                for c, a in areas.items()
            ],
        )
    )
    pairs = doc["overlaps"][:12]
    if pairs:
        console.print(
            table(
                "Overlapping classes (largest first)",
                ["pair", "images", "mean px where present", "mean px per image", "max px"],
                [
                    [f"{p['a']} / {p['b']}", p["images"], _num(p["mean_px"]), _num(p["mean_px_all"]), p["max_px"]]
                    for p in pairs
                ],
            )
        )
    meta = doc["metadata"]
    if meta:
        rows = [
            [k, meta[k]["count"], *(_num(meta[k].get(s)) for s in ("mean", "std", "min", "max"))]
            for k in ("age", "height", "weight")
        ]
        rows.append(
            ["sex", sum(meta["sex"].values()), ", ".join(f"{k}: {v}" for k, v in meta["sex"].items()), "", "", ""]
        )
        console.print(
            table(
                f"Metadata ({meta['patients']} patients; {meta['train_patients_with_meta']} train, "
                f"{meta['test_patients_with_meta']} test matched)",
                ["", "n", "mean", "std", "min", "max"],
                rows,
            )
        )
    else:
        console.print("no metadata (meta_data.xlsx/.xls/.csv)")
    problems = doc["problems"]
    if problems["items"]:
        console.print(table("Label problems", ["kind", "count"], sorted(problems["counts"].items())))
        for p in problems["items"][:10]:
            console.print(f"  {p['image']}: {p['detail']}", markup=False)
        if len(problems["items"]) > 10:
            console.print(f"  … {len(problems['items']) - 10} more (all in eda.json / --json)")
    else:
        console.print("no label problems found")


def _sizes(counts: dict) -> str:
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "-"


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)
