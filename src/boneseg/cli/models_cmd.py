"""`boneseg models`: the names every model option accepts (no torch: the names come from `boneseg.names`)."""

from __future__ import annotations

import typer

from boneseg.cli.app import app

TIMM_ANY = "tu-<any timm model>"


def catalog(timm_pattern: str | None = None) -> dict:
    """Architectures (with aliases; boneseg's own ``sam2unet`` among them), encoders (and SAM2-UNet's trunks),
    decoder norms, losses (with the class groups a term may be restricted to), augmentation presets and TTA
    policies (with aliases).

    `timm_pattern` (e.g. ``"convnext*"``) adds the matching timm models as ``tu-<name>`` encoders (this one
    imports timm, and with it torch).

    Raises:
        UsageError: an empty `timm_pattern` (it would match nothing).
    """
    from boneseg.classes import CLASS_GROUPS
    from boneseg.errors import UsageError
    from boneseg.modelling.registry import NORMS, OWN_ALIASES, OWN_ARCHITECTURES, SAM2_TRUNKS
    from boneseg.names import (
        ARCH_ALIASES,
        AUGMENTATIONS,
        ENCODER_WEIGHTS,
        LOSS_NAMES,
        TTA_ALIASES,
        TTA_MODES,
        TTA_NAMES,
        smp_names,
    )

    architectures, encoders = smp_names()
    aliases = {**ARCH_ALIASES, **OWN_ALIASES}
    doc: dict = {
        "architectures": {
            a: sorted(k for k, v in aliases.items() if v == a) for a in [*architectures, *OWN_ARCHITECTURES]
        },
        "encoders": {"smp": list(encoders), "timm": TIMM_ANY, "sam2unet": list(SAM2_TRUNKS)},
        "encoder_weights": [*ENCODER_WEIGHTS, "PATH"],
        "norms": list(NORMS),
        "losses": list(LOSS_NAMES),
        "loss_groups": {g: list(cs) for g, cs in CLASS_GROUPS.items()},
        "augmentations": list(AUGMENTATIONS),
        "tta_policies": list(TTA_NAMES),
        "tta_aliases": dict(TTA_ALIASES),
        "tta_modes": list(TTA_MODES),
    }
    if timm_pattern is not None:
        if not timm_pattern.strip():
            raise UsageError("--timm '': an empty pattern matches no model: give a shell pattern, e.g. 'convnext*'")
        import timm

        doc["encoders"]["timm"] = ["tu-" + m for m in timm.list_models(timm_pattern.strip())]
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
    json_out: bool = typer.Option(False, "--json", help="Print the lists as JSON."),
) -> None:
    """Architectures with their aliases (and boneseg's SAM2-UNet), encoders (smp, timm `tu-`, SAM2 trunks),
    decoder norms, losses and their class groups, augmentation presets and TTA policies: the names `train
    --arch/--encoder/--norm/--loss/--aug` and `predict --tta` accept. On stdout: tables on a terminal; into a
    pipe or file one name per line, NAME<TAB>OPTION[<TAB>NOTE] (`boneseg models | grep effici`)."""
    from boneseg.cli.output import console, out_console, print_json

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
