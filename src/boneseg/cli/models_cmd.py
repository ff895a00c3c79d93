"""`boneseg models`: the names every model option accepts (no torch: the names come from `boneseg.names`)."""

from __future__ import annotations

import typer

from boneseg.cli.app import app
from boneseg.cli.options import json_option


@app.command("models")
def models_command(
    timm_pattern: str = typer.Option(
        None,
        "--timm",
        metavar="PATTERN",
        show_default=False,
        help="Also list the timm models matching PATTERN (e.g. 'convnext*', '*' for all) as tu-<name> encoders.",
    ),
    json_out: bool = json_option("Print the lists as JSON."),
) -> None:
    """Architectures with their aliases (and boneseg's SAM2-UNet), encoders (smp, timm `tu-`, SAM2 trunks),
    decoder norms, losses and their class groups, augmentation presets and TTA policies: the names `train
    --arch/--encoder/--norm/--loss/--aug` and `predict --tta` accept. On stdout: tables on a terminal; into a
    pipe or file one name per line, NAME<TAB>OPTION[<TAB>NOTE] (`boneseg models | grep effici`)."""
    from boneseg.cli.output import console, out_console, print_json
    from boneseg.modelling.registry import catalog

    doc = catalog(timm_pattern)
    if json_out:
        print_json(doc)
    elif out_console.is_terminal:
        _print_tables(doc, timm_pattern)
    else:
        import sys

        sys.stdout.write("".join("\t".join(line) + "\n" for line in _lines(doc)))
        if doc["encoders"]["timm"] == []:
            console.print(f"timm: none match {timm_pattern!r}: a shell pattern, e.g. 'convnext*'", markup=False)


def _lines(doc: dict) -> list[tuple[str, ...]]:
    """One (name, option[, note]) per name."""
    from boneseg.modelling.registry import OWN_ARCHITECTURES

    timm_names = doc["encoders"]["timm"]
    return [
        *((a, "--arch", OWN_ARCHITECTURES[a]) if a in OWN_ARCHITECTURES else (a, "--arch")
          for a in doc["architectures"]),
        *((alias, "--arch", f"= {a}") for a, aliases in doc["architectures"].items() for alias in aliases),
        *((e, "--encoder") for e in doc["encoders"]["smp"]),
        *(
            [("tu-*", "--encoder", "any timm model as tu-<name>: list them with --timm PATTERN")]
            if isinstance(timm_names, str)
            else [(e, "--encoder", "timm") for e in timm_names]
        ),
        *((t, "--encoder", "SAM2 trunk of --arch sam2unet") for t in doc["encoders"]["sam2unet"]),
        *((w, "--encoder-weights", "a local state-dict file") if w == "PATH" else (w, "--encoder-weights")
          for w in doc["encoder_weights"]),
        *((norm, "--norm") for norm in doc["norms"]),
        *((loss, "--loss") for loss in doc["losses"]),
        *((f"@{g}", "--loss", "restricts a term to " + ", ".join(cs)) for g, cs in doc["loss_groups"].items()),
        *((aug, "--aug") for aug in doc["augmentations"]),
        *((p, "--tta") for p in doc["tta_policies"]),
        *((alias, "--tta", f"= {p}") for alias, p in doc["tta_aliases"].items()),
        *((f"{m}:", "--tta", "mode prefix (tta --policies)") for m in doc["tta_modes"]),
    ]  # fmt: skip


def _print_tables(doc: dict, timm_pattern: str | None) -> None:
    from boneseg.cli.output import out_console, table

    out_console.print(
        table(
            "Architectures (--arch)",
            ["name", "aliases"],
            [[a, ", ".join(al)] for a, al in doc["architectures"].items()],
        )
    )
    from boneseg.modelling.registry import OWN_ARCHITECTURES

    for name, line in OWN_ARCHITECTURES.items():
        out_console.print(f"{name}: {line}", markup=False)
    timm_names = doc["encoders"]["timm"]
    rows = [
        ["smp", ", ".join(doc["encoders"]["smp"])],
        [
            "timm",
            timm_names
            if isinstance(timm_names, str)
            else ", ".join(timm_names) or f"(none match {timm_pattern!r}: a shell pattern, e.g. 'convnext*')",
        ],
        ["sam2unet", ", ".join(doc["encoders"]["sam2unet"])],
        ["--encoder-weights", ", ".join(doc["encoder_weights"])],
        ["--norm", ", ".join(doc["norms"])],
        [
            "--loss",
            ", ".join(doc["losses"])
            + " (combine: 0.3*bce+0.7*dice; restrict a term: dice@wrist, dice@Scaphoid,Lunate; groups: "
            + ", ".join(doc["loss_groups"])
            + ")",
        ],
        ["--aug", ", ".join(doc["augmentations"])],
        [
            "--tta / --policies",
            ", ".join(doc["tta_policies"])
            + "".join(f", {a} (= {n})" for a, n in doc["tta_aliases"].items())
            + " (tta --policies: optional "
            + " or ".join(f"{m}:" for m in doc["tta_modes"])
            + " prefix)",
        ],
    ]
    out_console.print(table("Encoders (--encoder) and other names", ["option", "valid names"], rows))
