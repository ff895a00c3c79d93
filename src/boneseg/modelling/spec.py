"""`ModelSpec`: what builds a network, typed, read once from either form of a run's config: the typed one
(`boneseg.runs.config.TrainConfig`, or anything with its attributes) or the saved one (a checkpoint's
``config`` dict, of any version). `build_model`, SAM2-UNet and the heads read its fields, never keys."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from boneseg.classes import NUM_CLASSES


@dataclass(frozen=True)
class ModelSpec:
    """The settings that shape a model (see `boneseg.modelling.models.build_model`)."""

    arch: str
    encoder: str
    in_channels: int = 1
    classes: int = NUM_CLASSES
    encoder_weights: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    size: int | None = None
    norm: str | None = None
    adapter_dim: int | None = None
    unfreeze: int | None = None
    deep_supervision: tuple[float, ...] | None = None
    meta: str | None = None
    boundary_head: float = 0.0
    boundary_sharpen: float = 0.0

    @classmethod
    def of(cls, config: ModelSpec | Mapping[str, Any] | Any) -> ModelSpec:
        """The spec of a typed config (its input channels from its ``channels``, 29 classes) or of a saved
        config dict (``in_channels`` and ``classes`` as saved: a class list or a count; absent keys take the
        defaults above)."""
        if isinstance(config, ModelSpec):
            return config
        if isinstance(config, Mapping):
            saved = config
            classes = saved.get("classes", NUM_CLASSES)
            n_in = int(saved.get("in_channels", 1))
            get: Callable[..., Any] = saved.get
        else:
            from boneseg.data.transforms import in_channels

            typed = config
            classes, n_in = NUM_CLASSES, in_channels(typed)
            get = lambda key, default=None: getattr(typed, key, default)  # noqa: E731
        deep = get("deep_supervision")
        return cls(
            arch=get("arch"),
            encoder=get("encoder"),
            in_channels=n_in,
            classes=classes if isinstance(classes, int) else len(classes),
            encoder_weights=get("encoder_weights"),
            model_kwargs=dict(get("model_kwargs") or {}),
            size=int(get("size")) if get("size") else None,
            norm=get("norm"),
            adapter_dim=get("adapter_dim"),
            unfreeze=get("unfreeze"),
            deep_supervision=None if deep is None else tuple(deep),
            meta=get("meta"),
            boundary_head=float(get("boundary_head") or 0),
            boundary_sharpen=float(get("boundary_sharpen") or 0),
        )
