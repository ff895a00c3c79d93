"""`boneseg models`: the names every model option accepts, from the registries that check them."""

from __future__ import annotations

import typer

from boneseg.cli.app import app


def catalog(timm_pattern: str | None = None) -> dict:
    """Architectures (with aliases), encoders, losses, augmentation presets and TTA policies (with aliases).

    `timm_pattern` (e.g. ``"convnext*"``) adds the matching timm models as ``tu-<name>`` encoders."""
    from boneseg.data.transforms import AUGMENTATIONS
    from boneseg.inference.tta import MODES, TTA_ALIASES, TTA_NAMES
    from boneseg.modelling.losses import LOSSES
    from boneseg.modelling.models import ALIASES, ARCHITECTURES, ENCODER_WEIGHTS, smp_encoders

    doc: dict = {
        "architectures": {a: sorted(k for k, v in ALIASES.items() if v == a) for a in ARCHITECTURES},
        "encoders": {"smp": smp_encoders(), "timm": "tu-<any timm model>"},
        "encoder_weights": [*ENCODER_WEIGHTS, "PATH"],
        "losses": list(LOSSES),
        "augmentations": list(AUGMENTATIONS),
        "tta_policies": list(TTA_NAMES),
        "tta_aliases": dict(TTA_ALIASES),
        "tta_modes": list(MODES),
    }
    if timm_pattern is not None:
        import timm

        doc["encoders"]["timm"] = ["tu-" + m for m in timm.list_models(timm_pattern)]
    return doc


@app.command("models")
def models_command(
    timm_pattern: str = typer.Option(
        None,
        "--timm",
        metavar="PATTERN",
        show_default=False,
        help="Also list the timm models matching PATTERN (e.g. 'convnext*', '*' for all) as tu-<name> encoders.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the lists as JSON on stdout."),
) -> None:
    """Architectures with their aliases, encoders (smp and timm `tu-`), losses, augmentation presets and
    TTA policies: the names `train --arch/--encoder/--loss/--aug` and `predict --tta` accept."""
    from boneseg.cli.output import console, print_json, table

    doc = catalog(timm_pattern)
    if json_out:
        print_json(doc)
        return
    console.print(
        table(
            "Architectures (--arch)",
            ["name", "aliases"],
            [[a, ", ".join(al)] for a, al in doc["architectures"].items()],
        )
    )
    timm_names = doc["encoders"]["timm"]
    rows = [
        ["smp", ", ".join(doc["encoders"]["smp"])],
        [
            "timm",
            timm_names
            if isinstance(timm_names, str)
            else ", ".join(timm_names) or f"(none match {timm_pattern!r}: a shell pattern, e.g. 'convnext*')",
        ],
        ["--encoder-weights", ", ".join(doc["encoder_weights"])],
        ["--loss", ", ".join(doc["losses"]) + " (combine: 0.3*bce+0.7*dice)"],
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
    console.print(table("Encoders (--encoder) and other names", ["option", "valid names"], rows))
