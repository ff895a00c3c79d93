"""Names of boneseg's own architectures and model options, as plain data (no torch import).

`boneseg models` lists them (`catalog`, with `boneseg.names`) and the command line's help reads them here; the
factories in `boneseg.modelling.models` and `boneseg.modelling.sam2unet` check values against the same names.
"""

from __future__ import annotations

OWN_ARCHITECTURES: dict[str, str] = {
    "sam2unet": "SAM2-UNet: frozen SAM2 Hiera trunk with adapters, RFB blocks, U-Net decoder, deep supervision",
}
"""boneseg's architectures beside smp's: name -> one line."""

OWN_ALIASES: dict[str, str] = {"sam2": "sam2unet", "sam2-unet": "sam2unet"}
"""Short names of `OWN_ARCHITECTURES` (``sam2-unet``/``SAM2_UNet`` resolve by ignoring case, ``-`` and ``_``)."""

SAM2_TRUNKS: tuple[str, ...] = ("sam2_hiera_tiny", "sam2_hiera_small", "sam2_hiera_base_plus", "sam2_hiera_large")
"""`--encoder` of ``--arch sam2unet``: the SAM2 Hiera trunks (timm's models of these names)."""

SAM2_ADAPTER_DIM = 32
"""Width of each block's adapter (``--adapter-dim``) in the published SAM2-UNet."""

SAM2_DEEP_SUPERVISION: tuple[float, ...] = (1.0, 1.0)
"""Loss weights of SAM2-UNet's two auxiliary outputs (stride 8, stride 16) as published: the three
outputs' losses are summed."""

NORMS: tuple[str, ...] = ("batch", "group", "instance")
"""`--norm`: the decoder's normalisation. ``batch`` keeps what the architecture builds; ``group`` and
``instance`` replace each BatchNorm of the decoder."""

NORM_REFUSED: dict[str, dict[str, str]] = {
    "fpn": {
        "group": "its decoder has no BatchNorm to replace (it uses GroupNorm already)",
        "instance": "its decoder has no BatchNorm to replace (it uses GroupNorm)",
    },
    "pan": {
        "group": "its global-pooling branch normalises 1x1 maps, whose group statistics are one value",
        "instance": "its global-pooling branch normalises 1x1 maps, whose instance statistics are one value",
    },
    "deeplabv3": {"instance": "its ASPP pooling branch normalises a 1x1 map (one value per instance)"},
    "deeplabv3plus": {"instance": "its ASPP pooling branch normalises a 1x1 map (one value per instance)"},
    "upernet": {"instance": "its pyramid pooling normalises a 1x1 map (one value per instance)"},
}
"""Architectures where a `--norm` cannot apply, with the reason (the others' decoders take all three)."""


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
