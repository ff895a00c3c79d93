"""Names of boneseg's own architectures and model options, as plain data (no torch import).

`boneseg models` and the command line's help read them here; the factories in `boneseg.modelling.models`
and `boneseg.modelling.sam2unet` check values against the same names.
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
