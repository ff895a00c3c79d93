"""SAM2-UNet (Xiong et al., arXiv 2408.08870) with 29 sigmoid outputs.

The model as published:

* **encoder**: the Hiera trunk of SAM2 (timm's ``sam2_hiera_tiny|small|base_plus|large``, features at
  strides 4, 8, 16 and 32), **frozen**; before each of its blocks an adapter (Linear down to
  ``adapter_dim``, GELU, Linear back up, GELU) adds its output to the block's input. ``unfreeze`` = N also
  trains the trunk's last N blocks.
* **RFB**: a receptive-field block per level (four branches of 1xk / kx1 and dilated 3x3 convolutions,
  concatenated, plus a 1x1 residual) brings each level to 64 channels.
* **decoder**: three U-Net up-steps (bilinear x2, concatenation with the skip, two 3x3 conv-BN-ReLU),
  stride 32 -> 16 -> 8 -> 4, and a 1x1 head upsampled to the input.
* **deep supervision**: in training the model also returns the 1x1-head outputs after the first two
  up-steps (strides 8 and 16, upsampled to the input) under ``"deep"``; their losses enter with the run's
  ``--deep-supervision`` weights. Prediction uses the last output only.

``--encoder-weights PATH`` takes SAM2's own release checkpoint (``sam2_hiera_*.pt``, keys
``image_encoder.trunk.*``) or a timm-layout trunk state dict (``.pt``/``.safetensors``); `trunk_state`
maps the release's names onto timm's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from boneseg.errors import CheckpointError, UsageError, suggest
from boneseg.io import weight_mismatches
from boneseg.modelling.registry import SAM2_ADAPTER_DIM, SAM2_DEEP_SUPERVISION, SAM2_TRUNKS
from boneseg.modelling.spec import ModelSpec

WIDTH = 64
"""Channels of every RFB output and decoder level (as published)."""

STRIDE = 32
"""Input sides must be multiples of this (four 2x reductions after the stride-4 patch embedding)."""

RELEASE_PREFIX = "image_encoder.trunk."
"""Where SAM2's release checkpoints keep the trunk."""


def resolve_trunk(name: str) -> str:
    """The SAM2 trunk named `name` (``sam2_hiera_tiny``, also ``tu-sam2_hiera_tiny``, ``hiera_tiny``, ``tiny``).

    Raises:
        UsageError: another name (the four trunks listed, closest first).
    """
    key = str(name).strip().lower().replace("-", "_")
    key = key[3:] if key.startswith("tu_") else key
    key = key.split(".")[0]
    for candidate in (key, f"sam2_{key}", f"sam2_hiera_{key}"):
        if candidate in SAM2_TRUNKS:
            return candidate
    raise UsageError(f"--encoder {name!r}: --arch sam2unet takes a SAM2 Hiera trunk{suggest(str(name), SAM2_TRUNKS)}")


class Adapter(nn.Module):
    """Down-projection, GELU, up-projection, GELU: what is added to a Hiera block's input."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.GELU(), nn.Linear(width, dim), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HieraEncoder(nn.Module):
    """A timm SAM2 Hiera trunk (no classifier) with an `Adapter` before each block; returns the four stage
    outputs (NCHW, strides 4-32). The trunk's tensors keep timm's names under ``trunk.``."""

    trunk: Any  # timm's HieraDet

    def __init__(self, trunk: str, in_channels: int, adapter_dim: int, unfreeze: int, pretrained: bool):
        super().__init__()
        import timm

        self.trunk = timm.create_model(trunk, pretrained=pretrained, num_classes=0, in_chans=in_channels)
        self.trunk.head = nn.Identity()  # the classifier's norm: not part of SAM2's trunk
        self.name = trunk
        self.adapters = nn.ModuleList(Adapter(block.dim, adapter_dim) for block in self.trunk.blocks)
        self.stage_ends = tuple(int(i) for i in self.trunk.stage_ends)
        self.out_channels = [int(info["num_chs"]) for info in self.trunk.feature_info]
        self.freeze(unfreeze)

    def freeze(self, unfreeze: int) -> None:
        """Freeze the trunk except its last `unfreeze` blocks (adapters always train)."""
        blocks = len(self.trunk.blocks)
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        for block in list(self.trunk.blocks)[blocks - unfreeze :] if unfreeze else []:
            for p in block.parameters():
                p.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        trunk = self.trunk
        x = trunk._pos_embed(trunk.patch_embed(x))
        features = []
        for i, (block, adapter) in enumerate(zip(trunk.blocks, self.adapters)):
            x = block(x + adapter(x))
            if i in self.stage_ends:
                features.append(x.permute(0, 3, 1, 2))
        return features


class ConvBN(nn.Sequential):
    """Convolution + BatchNorm (no activation: the RFB applies one after its residual sum)."""

    def __init__(self, cin: int, cout: int, kernel, padding=0, dilation: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False), nn.BatchNorm2d(cout)
        )


class RFB(nn.Module):
    """Receptive-field block: a 1x1 branch and three branches of 1xk, kx1 and a 3x3 convolution dilated k
    (k = 3, 5, 7), concatenated and fused by a 3x3 convolution, plus a 1x1 residual; ReLU after the sum."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        branches: list[nn.Module] = [ConvBN(cin, cout, 1)]
        for k in (3, 5, 7):
            branches.append(
                nn.Sequential(
                    ConvBN(cin, cout, 1),
                    ConvBN(cout, cout, (1, k), padding=(0, k // 2)),
                    ConvBN(cout, cout, (k, 1), padding=(k // 2, 0)),
                    ConvBN(cout, cout, 3, padding=k, dilation=k),
                )
            )
        self.branches = nn.ModuleList(branches)
        self.fuse = ConvBN(4 * cout, cout, 3, padding=1)
        self.residual = ConvBN(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([b(x) for b in self.branches], dim=1))
        return F.relu(fused + self.residual(x))


class UpStep(nn.Module):
    """Bilinear x2 of the deeper map, concatenated after the skip, then two 3x3 conv-BN-ReLU."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.conv(torch.cat([skip, up], dim=1))


class Decoder(nn.Module):
    """RFB per level, then three up-steps; returns the decoder maps at strides 4, 8 and 16."""

    def __init__(self, encoder_channels: list[int], width: int = WIDTH):
        super().__init__()
        self.rfb = nn.ModuleList(RFB(c, width) for c in encoder_channels)
        self.up = nn.ModuleList(UpStep(width) for _ in range(3))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f4, f8, f16, f32 = [rfb(f) for rfb, f in zip(self.rfb, features)]
        d16 = self.up[0](f32, f16)
        d8 = self.up[1](d16, f8)
        d4 = self.up[2](d8, f4)
        return d4, d8, d16


def _head(width: int, classes: int, scale: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width, classes, 1), nn.Upsample(scale_factor=scale, mode="bilinear"))


class SAM2UNet(nn.Module):
    """SAM2-UNet (see the module notes): ``encoder``, ``decoder`` (returns the stride-4 map and the two
    auxiliary ones), ``segmentation_head`` and ``side_heads``. Eval: logits ``(N, classes, H, W)``; training
    with deep supervision: ``{"masks": logits, "deep": [stride-8 logits, stride-16 logits]}``."""

    def __init__(
        self,
        trunk: str = "sam2_hiera_tiny",
        in_channels: int = 1,
        classes: int = 29,
        adapter_dim: int = SAM2_ADAPTER_DIM,
        unfreeze: int = 0,
        deep_supervision: tuple[float, ...] | list[float] = SAM2_DEEP_SUPERVISION,
        pretrained: bool = False,
    ):
        super().__init__()
        self.encoder = HieraEncoder(resolve_trunk(trunk), in_channels, adapter_dim, unfreeze, pretrained)
        self.decoder = Decoder(self.encoder.out_channels)
        self.segmentation_head = _head(WIDTH, classes, 4)
        self.side_heads = nn.ModuleList([_head(WIDTH, classes, 8), _head(WIDTH, classes, 16)])
        self.deep_supervision = any(float(w) > 0 for w in deep_supervision)
        if not self.deep_supervision:  # unused in training: frozen, so DDP does not wait for their gradients
            self.side_heads.requires_grad_(False)

    def check_input_shape(self, x: torch.Tensor) -> None:
        """Refuse sides that are not multiples of 32 (Hiera's windows and poolings need them)."""
        h, w = x.shape[-2:]
        if h % STRIDE or w % STRIDE:
            raise UsageError(f"input {h}x{w}: SAM2-UNet needs sides that are multiples of {STRIDE}")

    def side_outputs(self, maps) -> list[torch.Tensor]:
        """The deep-supervision logits of the decoder's stride-8 and stride-16 maps, at the input size."""
        return [head(m) for head, m in zip(self.side_heads, maps)]

    def forward(self, x: torch.Tensor):
        if not torch.jit.is_tracing():
            self.check_input_shape(x)
        d4, *sides = self.decoder(self.encoder(x))
        logits = self.segmentation_head(d4)
        if self.training and self.deep_supervision:
            return {"masks": logits, "deep": self.side_outputs(sides)}
        return logits


def build(config: ModelSpec, pretrained: bool) -> SAM2UNet:
    """A `SAM2UNet` from a model spec (``encoder``, ``in_channels``, ``classes``, ``adapter_dim``,
    ``unfreeze``, ``deep_supervision``; defaults as published)."""
    adapter_dim, unfreeze, deep = config.adapter_dim, config.unfreeze, config.deep_supervision
    return SAM2UNet(
        config.encoder,
        in_channels=config.in_channels,
        classes=config.classes,
        adapter_dim=SAM2_ADAPTER_DIM if adapter_dim is None else int(adapter_dim),
        unfreeze=0 if unfreeze is None else int(unfreeze),
        deep_supervision=SAM2_DEEP_SUPERVISION if deep is None else tuple(deep),
        pretrained=pretrained,
    )


def blocks_of(trunk: str) -> int:
    """The number of blocks of a SAM2 trunk (the range of ``--unfreeze``)."""
    return {"sam2_hiera_tiny": 12, "sam2_hiera_small": 16, "sam2_hiera_base_plus": 24, "sam2_hiera_large": 48}[
        resolve_trunk(trunk)
    ]


# -- SAM2 release checkpoints ------------------------------------------------------------------------


def _read(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
            raise CheckpointError(f"--encoder-weights {path}: not a safetensors file ({exc})") from None
    from boneseg.io import load_tensors

    sd = load_tensors(path, "state dict (or SAM2 release checkpoint)")
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise CheckpointError(f"--encoder-weights {path}: not a state dict")
    return sd


def trunk_state(sd: dict) -> dict[str, torch.Tensor]:
    """The trunk tensors of a SAM2 release state dict (``image_encoder.trunk.*``) or of a timm-layout one,
    under timm's names (``mlp.layers.0/1`` -> ``mlp.fc1/fc2``); other keys (SAM2's neck, mask decoder, memory
    modules, a classifier ``head``) are left out."""
    if any(str(k).startswith(RELEASE_PREFIX) for k in sd):
        sd = {k[len(RELEASE_PREFIX) :]: v for k, v in sd.items() if k.startswith(RELEASE_PREFIX)}
    elif any(str(k).startswith("trunk.") for k in sd):
        sd = {k[len("trunk.") :]: v for k, v in sd.items() if k.startswith("trunk.")}
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor) or k.startswith("head."):
            continue
        out[k.replace("mlp.layers.0.", "mlp.fc1.").replace("mlp.layers.1.", "mlp.fc2.")] = v
    return out


def load_trunk_weights(model: nn.Module, path: str | os.PathLike) -> str:
    """Load SAM2 trunk weights from a local file into the `SAM2UNet` `model`: every trunk tensor or none
    (the patch embedding's RGB kernel is adapted to the model's input channels as timm does). Returns what
    loaded, in words.

    Raises:
        CheckpointError: a missing or unreadable file, or a checkpoint of another model (naming the first
            tensor that is missing, left over or of another shape).
    """
    from timm.models import adapt_input_conv

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--encoder-weights {path}: file not found (valid names: imagenet, none, or a path)")
    encoder: HieraEncoder = model.encoder  # type: ignore[assignment]
    own = encoder.trunk.state_dict()
    theirs = trunk_state(_read(path))
    first = "patch_embed.proj.weight"
    if first in theirs and first in own and theirs[first].shape[1] != own[first].shape[1]:
        theirs[first] = adapt_input_conv(own[first].shape[1], theirs[first])
    problems = weight_mismatches(own, theirs, f"is not in a {encoder.name} trunk")
    if not any(k in own for k in theirs):
        raise CheckpointError(
            f"--encoder-weights {path}: no SAM2 trunk tensors in it (a SAM2 release checkpoint keeps them "
            f"under {RELEASE_PREFIX}*)"
        )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"--encoder-weights {path}: not a {encoder.name} trunk: {problems[0]}{more}")
    encoder.trunk.load_state_dict({k: theirs[k].to(v.dtype) for k, v in own.items()})
    return f"{len(own)} trunk tensors of {encoder.name} from {path}"
