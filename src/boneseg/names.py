"""The names the model, loss, augmentation and TTA options accept, as plain data (no torch).

The command line's help and `boneseg models` read them here, so they start without importing torch; the
factories (`boneseg.modelling`, `boneseg.data.transforms`, `boneseg.inference.tta`) check values against
the same tuples. smp's own names are recorded for the smp version in `SMP_VERSION`: with any other
installed version `smp_names` asks smp itself.
"""

from __future__ import annotations

ARCH_ALIASES: dict[str, str] = {
    "unetpp": "unetplusplus",
    "unet++": "unetplusplus",
    "nestedunet": "unetplusplus",
    "deeplabv3+": "deeplabv3plus",
    "dlv3p": "deeplabv3plus",
    "dlv3+": "deeplabv3plus",
    "dlv3": "deeplabv3",
    "deeplab": "deeplabv3plus",
    "uper": "upernet",
    "mit": "segformer",
    "psp": "pspnet",
    "link": "linknet",
}
"""Short name -> canonical (smp) architecture name."""

ENCODER_WEIGHTS = ("imagenet", "none")
"""Named `encoder_weights` values; anything else is a path to a local state dict."""

LOSS_NAMES = ("bce", "dice", "jaccard", "tversky", "focal_tversky", "focal", "lovasz", "boundary", "dtbce")
"""Loss terms `--loss` combines (``0.3*bce+0.7*dice``)."""

AUGMENTATIONS = ("none", "light", "default", "strong")
"""Augmentation presets (`--aug`)."""

VOTES = ("hard", "soft")
"""``ensemble``/``select --vote``: over submission CSVs (hard) or probability folders (soft)."""

TTA_NAMES = ("none", "hflip", "scale", "hflip+scale")
TTA_MODES = ("resize", "sliding")
TTA_ALIASES = {"flip": "hflip", "scale+hflip": "hflip+scale", "flip+scale": "hflip+scale"}
"""Other spellings a TTA policy name may take."""

SMP_VERSION = "0.6.0"
SMP_ARCHITECTURES = (
    "unet", "unetplusplus", "manet", "linknet", "fpn", "pspnet", "deeplabv3", "deeplabv3plus", "pan", "upernet",
    "segformer", "dpt",
)  # fmt: skip
SMP_ENCODERS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x4d",
    "resnext101_32x8d", "resnext101_32x16d", "resnext101_32x32d", "resnext101_32x48d", "dpn68", "dpn68b", "dpn92",
    "dpn98", "dpn107", "dpn131", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "senet154", "se_resnet50", "se_resnet101", "se_resnet152", "se_resnext50_32x4d", "se_resnext101_32x4d",
    "densenet121", "densenet169", "densenet201", "densenet161", "inceptionresnetv2", "inceptionv4",
    "efficientnet-b0", "efficientnet-b1", "efficientnet-b2", "efficientnet-b3", "efficientnet-b4", "efficientnet-b5",
    "efficientnet-b6", "efficientnet-b7", "mobilenet_v2", "xception", "timm-efficientnet-b0", "timm-efficientnet-b1",
    "timm-efficientnet-b2", "timm-efficientnet-b3", "timm-efficientnet-b4", "timm-efficientnet-b5",
    "timm-efficientnet-b6", "timm-efficientnet-b7", "timm-efficientnet-b8", "timm-efficientnet-l2",
    "timm-tf_efficientnet_lite0", "timm-tf_efficientnet_lite1", "timm-tf_efficientnet_lite2",
    "timm-tf_efficientnet_lite3", "timm-tf_efficientnet_lite4", "timm-skresnet18", "timm-skresnet34",
    "timm-skresnext50_32x4d", "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "mobileone_s0",
    "mobileone_s1", "mobileone_s2", "mobileone_s3", "mobileone_s4",
)  # fmt: skip
"""smp's architectures and encoders as smp `SMP_VERSION` names them (a test compares them with smp's)."""


def smp_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(architectures, encoders) of the installed smp: the recorded names when its version is `SMP_VERSION`
    (no torch import), else smp's own lists."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("segmentation-models-pytorch")
    except PackageNotFoundError:  # pragma: no cover - a hard dependency
        installed = None
    if installed == SMP_VERSION:
        return SMP_ARCHITECTURES, SMP_ENCODERS
    import segmentation_models_pytorch as smp

    return tuple(smp.MODEL_ARCHITECTURES_MAPPING), tuple(smp.encoders.get_encoder_names())
