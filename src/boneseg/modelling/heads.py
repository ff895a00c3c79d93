"""Optional auxiliary heads around an smp model: metadata (aux heads or FiLM) and a boundary head.

`wrap(model, config)` returns the smp model unchanged unless the config asks for one of:

``meta: aux``     a small MLP on the pooled deepest encoder features predicts age, height, weight
                  (standardised, regression), sex and hand side (logits); trained with weight
                  ``meta_weight`` on the labels that exist (missing metadata is masked out).
``meta: film``    the patient's metadata (`meta_vector`: standardised values + presence flags) scales and
                  shifts the decoder features, ``f * (1 + gamma) + beta`` (FiLM; starts as the identity).
                  During training the whole vector is dropped with probability 0.1, so the model also
                  learns the no-metadata case that images without a metadata row get.
``meta: aux+film`` both.
``boundary_head`` (a loss weight > 0): a second segmentation head predicts each class's *outer* edge
                  band (the pixels just outside the bone); with ``boundary_sharpen`` = a > 0, inference
                  multiplies the mask probability by ``1 - a * p_edge``, trimming masks that bleed over
                  their edge.

In training mode the wrapper returns a dict (``masks``, ``meta``, ``boundary``, and ``deep`` for a model
with deep supervision); in eval mode it returns
the (sharpened) mask logits only, so prediction code treats it like any smp model. FiLM models take
``meta`` as a forward argument, or use `default_meta` (set per image by `boneseg predict`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from boneseg.data.meta import META_DIM, META_FIELDS, META_STATS, find_meta_file, meta_table, meta_vector, side_target  # noqa: F401
from boneseg.errors import UsageError, suggest
from boneseg.modelling.spec import ModelSpec

META_MODES = ("none", "aux", "film", "aux+film")
AUX_OUTPUTS = ("age", "height", "weight", "sex", "side")
META_DROPOUT = 0.1


def check_meta_mode(mode: str | None) -> str:
    """The canonical ``--meta`` mode. Raises `UsageError` for an unknown one."""
    mode = str(mode or "none").lower().replace(" ", "")
    if mode == "film+aux":
        mode = "aux+film"
    if mode not in META_MODES:
        raise UsageError(f"--meta {mode!r}: unknown mode{suggest(mode, META_MODES)}")
    return mode


def uses_heads(config: ModelSpec | Mapping | Any) -> bool:
    """Whether a run's config (any form `ModelSpec.of` reads) asks for a metadata or boundary head."""
    spec = ModelSpec.of(config)
    return check_meta_mode(spec.meta) != "none" or spec.boundary_head > 0


# -- the wrapper ------------------------------------------------------------------------------------


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


class AuxModel(nn.Module):
    """An smp model with optional metadata heads / FiLM and a boundary head (see the module notes)."""

    def __init__(self, base: Any, meta: str = "none", boundary: bool = False, sharpen: float = 0.0):
        super().__init__()
        self.base = base
        self.meta_mode = check_meta_mode(meta)
        self.sharpen = float(sharpen)
        self.default_meta: torch.Tensor | None = None
        dec_ch = _first_conv(base.segmentation_head).in_channels
        enc_ch = base.encoder.out_channels[-1]
        self.meta_head = (
            nn.Sequential(nn.Linear(enc_ch, 128), nn.ReLU(inplace=True), nn.Linear(128, len(AUX_OUTPUTS)))
            if "aux" in self.meta_mode
            else None
        )
        self.film: nn.Module | None
        if "film" in self.meta_mode:
            first, last = nn.Linear(META_DIM, 64), nn.Linear(64, 2 * dec_ch)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.film = nn.Sequential(first, nn.ReLU(inplace=True), last)
        else:
            self.film = None
        self.boundary_head: nn.Module | None
        if boundary:
            self.boundary_head = copy.deepcopy(base.segmentation_head)
            for m in self.boundary_head.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
        else:
            self.boundary_head = None

    @property
    def wants_meta(self) -> bool:
        return self.film is not None

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None):
        base = self.base
        if hasattr(base, "check_input_shape") and not torch.jit.is_tracing():
            base.check_input_shape(x)
        features = base.encoder(x)
        dec = base.decoder(features)
        sides: list = []
        if isinstance(dec, (tuple, list)):  # SAM2-UNet: the last map and those of deep supervision
            dec, *sides = dec
        if self.film is not None:
            if meta is None:
                meta = self.default_meta
            if meta is None:
                meta = x.new_zeros((x.shape[0], META_DIM))
            meta = meta.to(device=dec.device, dtype=dec.dtype).expand(x.shape[0], -1)
            if self.training:
                keep = (torch.rand(meta.shape[0], 1, device=meta.device) >= META_DROPOUT).to(meta.dtype)
                meta = meta * keep
            gamma, beta = self.film(meta).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
            dec = dec * (1 + gamma) + beta
        logits = base.segmentation_head(dec)
        if not self.training:
            if self.boundary_head is not None and self.sharpen > 0:
                edge = torch.sigmoid(self.boundary_head(dec).float())
                p = torch.sigmoid(logits.float()) * (1 - self.sharpen * edge)
                return torch.logit(p, eps=1e-6).to(logits.dtype)
            return logits
        out = {"masks": logits}
        if sides and getattr(base, "deep_supervision", False):
            out["deep"] = base.side_outputs(sides)
        if self.meta_head is not None:
            out["meta"] = self.meta_head(F.adaptive_avg_pool2d(features[-1], 1).flatten(1))
        if self.boundary_head is not None:
            out["boundary"] = self.boundary_head(dec)
        return out


def wrap(model: nn.Module, config: ModelSpec | Mapping | Any) -> nn.Module:
    """`model` wrapped in an `AuxModel` when the config (any form `ModelSpec.of` reads) turns on ``meta`` or
    ``boundary_head``."""
    spec = ModelSpec.of(config)
    if not uses_heads(spec):
        return model
    return AuxModel(model, spec.meta or "none", spec.boundary_head > 0, spec.boundary_sharpen)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (``.module``), if any."""
    return getattr(model, "module", model)


# -- training ---------------------------------------------------------------------------------------


def model_kwargs(model: nn.Module, batch: Mapping, device: torch.device) -> dict:
    """The extra forward arguments a model takes from a batch (``meta`` for FiLM models)."""
    m = unwrap(model)
    if isinstance(m, AuxModel) and m.wants_meta and "meta" in batch:
        return {"meta": batch["meta"].to(device, non_blocking=True)}
    return {}


def outer_band(target: torch.Tensor, half: int | None = None) -> torch.Tensor:
    """The band just outside each mask: ``dilate(target) - target`` (half-width ~ H/128, >= 1 px)."""
    half = half or max(1, round(target.shape[-2] / 128))
    k = 2 * half + 1
    return (F.max_pool2d(target, k, stride=1, padding=half) - target).clamp_(0, 1)


def aux_loss(out: Mapping, batch: Mapping, target: torch.Tensor, config) -> torch.Tensor:
    """The weighted auxiliary terms of a training forward (0 when there are none).

    Metadata: MSE on the standardised age/height/weight and BCE on sex and hand side, each only over the
    images that have that field, times ``config.meta_weight``. Boundary: BCE of the boundary head against
    `outer_band` of the target, times ``config.boundary_head`` (`config`: the run's `TrainConfig`).
    """
    device = target.device
    total = torch.zeros((), device=device)
    if "meta" in out and "meta" in batch:
        pred = out["meta"].float()
        meta = batch["meta"].to(device).float()
        n = len(META_FIELDS)
        vals, present = meta[:, :n], meta[:, n:]
        terms = []
        for j, name in enumerate(("age", "height", "weight")):
            col = META_FIELDS.index(name)
            w = present[:, col]
            if w.sum() > 0:
                terms.append(((pred[:, j] - vals[:, col]) ** 2 * w).sum() / w.sum())
        col = META_FIELDS.index("sex")
        w = present[:, col]
        if w.sum() > 0:
            bce = F.binary_cross_entropy_with_logits(pred[:, 3], (vals[:, col] + 1) / 2, reduction="none")
            terms.append((bce * w).sum() / w.sum())
        side = batch.get("side")
        if side is not None:
            side = side.to(device).float()
            known = torch.isfinite(side)
            if known.any():
                terms.append(F.binary_cross_entropy_with_logits(pred[known, 4], side[known]))
        if terms:
            total = total + float(config.meta_weight) * torch.stack(terms).mean()
    if "boundary" in out:
        band = outer_band(target.float())
        total = total + float(config.boundary_head) * F.binary_cross_entropy_with_logits(out["boundary"].float(), band)
    return total
