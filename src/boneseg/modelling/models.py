"""Model factory: segmentation_models_pytorch architectures x encoders, and boneseg's own ``sam2unet``
(`boneseg.modelling.sam2unet`) -> 29 sigmoid-channel logits.

::

    model = build_model({"arch": "unetpp", "encoder": "efficientnet-b4", "encoder_weights": "imagenet"})
    logits = model(x)            # (N, C, H, W) float -> (N, 29, H, W) logits, one sigmoid per class

Names are case-insensitive; short aliases (``unetpp``, ``dlv3p``, ``uper``…) resolve to smp's canonical
names, and any ``tu-<timm model>`` encoder is accepted. Unknown names raise `UsageError` listing the
valid ones, closest first. ``norm`` (``--norm group|instance``) replaces the decoder's BatchNorm layers
(`apply_norm`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp  # noqa: E402  (after torch)
import torch

from boneseg.errors import BonesegError, BonesegWarning, CheckpointError, DataError, UsageError, suggest
from boneseg.modelling.registry import NORM_REFUSED, NORMS, OWN_ALIASES, OWN_ARCHITECTURES
from boneseg.modelling.spec import ModelSpec
from boneseg.names import ARCH_ALIASES, ENCODER_WEIGHTS

ARCHITECTURES: dict[str, type[torch.nn.Module]] = dict(smp.MODEL_ARCHITECTURES_MAPPING)
"""Canonical (smp) architecture name -> model class."""

ALIASES: dict[str, str] = ARCH_ALIASES
"""Short name -> canonical smp architecture name (`boneseg.names`; boneseg's own architectures' in
`boneseg.modelling.registry.OWN_ALIASES`)."""

SET_BY_BONESEG = ("encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params")
"""smp constructor arguments boneseg sets itself (logits out, heads in `boneseg.modelling.heads`): never
`model_kwargs`."""


def resolve_arch(name: str) -> str:
    """The canonical architecture name for `name` (alias, canonical or class name, any case): smp's, or
    boneseg's own ``sam2unet``.

    Raises:
        UsageError: unknown name (the message lists valid names, closest first).
    """
    aliases = {**ALIASES, **OWN_ALIASES}
    key = str(name).strip().lower().replace("_", "").replace("-", "")
    key = aliases.get(key, aliases.get(str(name).strip().lower(), key))
    if key in ARCHITECTURES or key in OWN_ARCHITECTURES:
        return key
    raise UsageError(
        f"--arch {name!r}: unknown architecture{suggest(str(name), [*ARCHITECTURES, *OWN_ARCHITECTURES, *aliases])}"
    )


MIN_SIDE: dict[str, int] = {"pan": 128}
"""Architectures that fail on smaller inputs (PAN's pyramid pools the 1/32 feature map three more times),
with the smallest side (measured with ResNet encoders); the others take any multiple of 32."""


def check_arch_side(arch: str, side: int, option: str = "--size") -> None:
    """Refuse an input side `arch` cannot run at (`MIN_SIDE`), before the first forward pass fails deep in torch.

    Raises:
        UsageError: naming the architecture, the option and the smallest side that works.
    """
    least = MIN_SIDE.get(str(arch))
    if least is not None and side < least:
        raise UsageError(f"--arch {arch} needs inputs of at least {least}x{least}: {option} {side} is too small")


def check_model_kwargs(arch: str, encoder: str, kwargs: Mapping) -> None:
    """Refuse `model_kwargs` the model would not use: smp passes names its architecture does not take on to
    the encoder, where its own encoders ignore them silently (``decoder_channels`` means nothing to FPN).
    With a ``tu-`` encoder the other names go to timm, which refuses unknown ones itself.

    Raises:
        UsageError: a name boneseg sets itself, or one neither the architecture nor the encoder takes.
    """
    if arch in OWN_ARCHITECTURES:
        if kwargs:
            raise UsageError(
                f"model_kwargs {next(iter(kwargs))!r}: --arch {arch} takes none (its settings are --adapter-dim, "
                "--unfreeze, --deep-supervision, --norm)"
            )
        return
    skip = ("self", "kwargs", *SET_BY_BONESEG)
    own = [p for p in inspect.signature(ARCHITECTURES[arch].__init__).parameters if p not in skip]
    for key in kwargs:
        if key in SET_BY_BONESEG:
            raise UsageError(f"model_kwargs {key!r}: set by boneseg itself, not a model setting")
        if key not in own and not encoder.startswith("tu-"):
            raise UsageError(f"model_kwargs {key!r}: not a setting of --arch {arch}{suggest(key, own)}")


def smp_encoders() -> list[str]:
    """The encoder names smp accepts (`--encoder`; timm models as ``tu-<name>`` besides)."""
    return list(smp.encoders.get_encoder_names())


def resolve_encoder(name: str, arch: str | None = None) -> str:
    """`name` checked against smp's encoders and, for ``tu-<model>[.<tag>]``, timm's models; for
    ``arch`` ``sam2unet``, against the SAM2 trunks (`boneseg.modelling.sam2unet.resolve_trunk`).

    Raises:
        UsageError: unknown encoder (closest valid names first).
    """
    if arch is not None and resolve_arch(arch) == "sam2unet":
        from boneseg.modelling.sam2unet import resolve_trunk

        return resolve_trunk(name)
    name = str(name).strip()
    smp_names = smp_encoders()
    if name in smp_names:
        return name
    lower = {n.lower(): n for n in smp_names}
    if name.lower() in lower:
        return lower[name.lower()]
    if name.lower().startswith("tu-"):
        import timm

        model = name[3:]
        if timm.is_model(model.split(".")[0]):
            return "tu-" + model
        choices = ["tu-" + m for m in timm.list_models()]
        raise UsageError(f"--encoder {name!r}: timm has no model {model!r}{suggest(name, choices)}")
    raise UsageError(f"--encoder {name!r}: unknown encoder (or use tu-<timm model>){suggest(name, smp_names)}")


def _weights_arg(encoder: str, weights: str | None):
    """smp's `encoder_weights` argument for a `--encoder-weights` value (None for a local file)."""
    if weights is None or str(weights).lower() in ("none", "", "null", "random"):
        return None
    if str(weights).lower() == "imagenet":
        return True if encoder.startswith("tu-") else "imagenet"
    return None


def _is_path(weights) -> bool:
    """Whether an `encoder_weights` value names a local file (not ``imagenet``/``none``)."""
    return weights is not None and str(weights).lower() not in (*ENCODER_WEIGHTS, "", "null", "random")


def build_model(config: ModelSpec | Mapping | Any) -> torch.nn.Module:
    """A model from a run's config (read once as a `ModelSpec`: a `TrainConfig`, a saved config dict or a
    spec): an smp model, or boneseg's ``sam2unet``.

    Settings: ``arch``, ``encoder`` (required); ``in_channels`` (default 1), ``classes`` (list of names or a
    count, default 29), ``encoder_weights`` (``imagenet``, ``none`` or a path to a local state dict, for
    ``sam2unet`` also SAM2's release checkpoint; default none), ``model_kwargs`` (extra smp keyword
    arguments), ``norm`` (`apply_norm`), ``adapter_dim``/``unfreeze``/``deep_supervision`` (``sam2unet``);
    ``meta``, ``boundary_head`` and ``boundary_sharpen`` wrap the model in a
    `boneseg.modelling.heads.AuxModel`. Pretrained weights come from the Hugging Face (or
    torch) cache, downloaded through smp/timm only on a cache miss (`_pretrained`). A ``tu-swin*`` encoder is built for
    ``size`` (its window clamps and attention masks) and accepts any other multiple of 32 (crops, sliding
    windows).

    Raises:
        UsageError: unknown architecture or encoder, or a combination smp refuses.
        DataError: pretrained weights neither cached nor downloadable (offline).
        CheckpointError: an encoder-weights file that cannot be loaded.
    """
    spec = ModelSpec.of(config)
    arch = resolve_arch(spec.arch)
    encoder = resolve_encoder(spec.encoder, arch)
    n_classes, in_channels, weights = spec.classes, spec.in_channels, spec.encoder_weights
    kwargs = dict(spec.model_kwargs)
    check_model_kwargs(arch, encoder, kwargs)
    if arch == "dpt" and encoder.startswith("tu-"):
        kwargs.setdefault("dynamic_img_size", True)
    if encoder.startswith("tu-swin") and spec.size:
        kwargs.setdefault("img_size", spec.size)  # windows clamp to the stages' sizes at this size
        kwargs.setdefault("dynamic_img_size", True)  # crops, whole-image validation and sliding windows
    pretrained = _weights_arg(encoder, weights)

    def create() -> torch.nn.Module:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*encoder_weights.*")
            if arch == "sam2unet":
                from boneseg.modelling import sam2unet

                return sam2unet.build(dataclasses.replace(spec, encoder=encoder), pretrained=bool(pretrained))
            return smp.create_model(
                arch,
                encoder_name=encoder,
                encoder_weights=pretrained,
                in_channels=in_channels,
                classes=n_classes,
                **kwargs,
            )

    try:
        model = _pretrained(create, encoder, weights) if pretrained else create()
    except BonesegError:
        raise
    except Exception as exc:  # noqa: BLE001 - smp/timm raise many types
        raise UsageError(f"cannot build --arch {arch} with --encoder {encoder}: {_first_line(exc)}") from None
    if weights is not None and _is_path(weights):
        if arch == "sam2unet":
            from boneseg.modelling.sam2unet import load_trunk_weights

            load_trunk_weights(model, weights)
        else:
            load_encoder_weights(model, weights)
    apply_norm(model, arch, spec.norm)
    from boneseg.modelling.heads import wrap

    return wrap(model, spec)


def fetch_pretrained(encoder: str, weights, arch: str | None = None) -> None:
    """Have the pretrained weights `build_model` will load at hand (cached, or downloaded now), so an offline
    machine hears of it before any other work; nothing for ``none`` or a local file. A failure other than
    fetching is left to `build_model` to report. `arch` ``sam2unet``: `encoder` is a SAM2 trunk (timm's).

    Raises:
        DataError: the weights are neither cached nor downloadable.
    """
    name = resolve_encoder(encoder, arch)
    arg = _weights_arg(name, weights)
    if arg is None:
        return

    def create() -> torch.nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if arch is not None and resolve_arch(arch) == "sam2unet":
                import timm

                return timm.create_model(name, pretrained=True, num_classes=0)
            return smp.encoders.get_encoder(name, in_channels=3, depth=5, weights=arg)

    try:
        _pretrained(create, name, weights)
    except BonesegError:
        raise
    except Exception:  # noqa: BLE001, S110 - not a fetch failure: build_model names it
        pass


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _is_fetch_error(exc: BaseException) -> bool:
    """A failure to find or download pretrained weights (not a wrong model), from the hub, requests or urllib."""
    origin = type(exc).__module__ or ""
    return isinstance(exc, OSError) or origin.startswith(("huggingface_hub", "requests", "urllib", "http"))


def _pretrained(create, encoder: str, weights) -> torch.nn.Module:
    """`create()` with pretrained weights: from the local cache first, without the network; on a cache miss,
    downloaded only when the hub answers, so an offline machine gets one error at once, not minutes of
    retries. ``HF_HUB_OFFLINE=1`` keeps to the cache.

    Raises:
        DataError: the weights are neither cached nor downloadable (the message offers ``--encoder-weights
            none`` or a local file).
    """
    import huggingface_hub.constants as hub

    advice = "train from scratch with --encoder-weights none, or pass a weights file: --encoder-weights PATH"
    asked_offline = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        return create()
    except Exception as exc:  # noqa: BLE001 - smp/timm/huggingface_hub raise many types
        if not _is_fetch_error(exc):
            raise
    finally:
        hub.HF_HUB_OFFLINE = asked_offline
    where = f"--encoder-weights {weights}: the pretrained weights of {encoder} are not in the local cache"
    if asked_offline:
        raise DataError(f"{where} (HF_HUB_OFFLINE is set): {advice}")
    host = _unreachable(hub.ENDPOINT)
    if host:
        raise DataError(f"{where} and {host} cannot be reached (offline?): {advice}")
    try:
        return create()
    except Exception as exc:  # noqa: BLE001
        if not _is_fetch_error(exc):
            raise
        raise DataError(
            f"--encoder-weights {weights}: cannot download {encoder}'s weights ({_first_line(exc)}): {advice}"
        ) from None


def _unreachable(endpoint: str, timeout: float = 5.0) -> str | None:
    """The hub's host name when no connection to it opens within `timeout` seconds (a name that does not
    resolve fails at once), else None. Behind a proxy (``HTTPS_PROXY``…) the proxy decides: None."""
    import socket
    import urllib.parse
    import urllib.request

    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or endpoint
    if urllib.request.getproxies().get(url.scheme or "https"):
        return None
    try:
        socket.create_connection((host, url.port or (80 if url.scheme == "http" else 443)), timeout=timeout).close()
    except OSError:
        return host
    return None


def check_model_options(
    arch: str,
    encoder: str,
    norm: str | None = None,
    adapter_dim: int | None = None,
    unfreeze: int | None = None,
    deep_supervision=None,
) -> tuple[str, int | None, int | None, list[float] | None]:
    """The canonical ``(norm, adapter_dim, unfreeze, deep_supervision)`` of a run of `arch`/`encoder`:
    for ``sam2unet`` the published defaults where None (adapter 32 wide, trunk frozen, auxiliary outputs
    weighted 1, 1; one weight given applies to both); for other architectures None.

    Raises:
        UsageError: a value out of range, or a SAM2-UNet setting given to an architecture without it.
    """
    norm = check_norm(arch, norm)
    if deep_supervision is not None and not isinstance(deep_supervision, (list, tuple)):
        deep_supervision = [deep_supervision]
    if arch != "sam2unet":
        for option, value in (
            ("--adapter-dim", adapter_dim),
            ("--unfreeze", unfreeze),
            ("--deep-supervision", deep_supervision),
        ):
            if value is not None:
                what = "auxiliary outputs" if option == "--deep-supervision" else "frozen trunk with adapters"
                raise UsageError(f"{option}: --arch {arch} has no {what} (--arch sam2unet has)")
        return norm, None, None, None
    from boneseg.modelling.registry import SAM2_ADAPTER_DIM, SAM2_DEEP_SUPERVISION
    from boneseg.modelling.sam2unet import blocks_of

    adapter_dim = SAM2_ADAPTER_DIM if adapter_dim is None else adapter_dim
    if isinstance(adapter_dim, bool) or not isinstance(adapter_dim, int) or not 1 <= adapter_dim <= 4096:
        raise UsageError(f"--adapter-dim {adapter_dim}: must be a whole number in 1..4096")
    blocks = blocks_of(encoder)
    unfreeze = 0 if unfreeze is None else unfreeze
    if isinstance(unfreeze, bool) or not isinstance(unfreeze, int) or not 0 <= unfreeze <= blocks:
        raise UsageError(f"--unfreeze {unfreeze}: must be a whole number in 0..{blocks} (the blocks of {encoder})")
    weights = list(SAM2_DEEP_SUPERVISION) if deep_supervision is None else list(deep_supervision)
    n = len(SAM2_DEEP_SUPERVISION)
    if len(weights) == 1:
        weights = weights * n
    if len(weights) != n or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in weights
    ):
        raise UsageError(
            f"--deep-supervision {','.join(map(str, deep_supervision or []))}: expected 1 or {n} finite weights "
            ">= 0 (the stride-8 and stride-16 outputs; 0 turns deep supervision off)"
        )
    return norm, adapter_dim, unfreeze, [float(w) for w in weights]


def check_norm(arch: str, norm: str | None) -> str:
    """The canonical `--norm` for `arch` (``batch`` when None).

    Raises:
        UsageError: an unknown norm, or one the architecture's decoder cannot take (with the reason).
    """
    value = "batch" if norm is None else str(norm).strip().lower()
    value = {"bn": "batch", "gn": "group", "in": "instance", "batchnorm": "batch", "groupnorm": "group"}.get(
        value, value
    )
    if value not in NORMS:
        raise UsageError(f"--norm {norm!r}: unknown normalisation{suggest(str(norm), NORMS)}")
    reason = NORM_REFUSED.get(arch, {}).get(value)
    if reason:
        raise UsageError(f"--norm {value} cannot apply to --arch {arch}: {reason}")
    return value


def apply_norm(model: torch.nn.Module, arch: str, norm: str | None) -> None:
    """Replace every BatchNorm2d of the decoder (``decoder``; for ``sam2unet`` its RFB blocks and
    up-steps) by GroupNorm (``group``: 32 groups, or the largest count dividing the channels) or an affine
    InstanceNorm2d (``instance``); ``batch``/None keeps the model as built.

    Raises:
        UsageError: see `check_norm`.
    """
    kind = check_norm(arch, norm)
    if kind == "batch":
        return

    def replace(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, torch.nn.BatchNorm2d):
                c = child.num_features
                new: torch.nn.Module = torch.nn.GroupNorm(math.gcd(32, c), c)
                if kind == "instance":
                    new = torch.nn.InstanceNorm2d(c, affine=True)
                setattr(module, name, new)
            else:
                replace(child)

    replace(model.get_submodule("decoder"))


def load_encoder_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a local encoder state dict (``weights_only``) into ``model.encoder``.

    Accepts a bare state dict, one wrapped in ``state_dict``/``model``, keys prefixed ``encoder.``, and a
    3-channel first convolution for a 1-channel model (summed over the input channels, as smp does).

    Raises:
        CheckpointError: missing/unreadable file, or no key matches the encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--encoder-weights {path}: file not found (valid names: imagenet, none, or a path)")
    from boneseg.io import load_tensors

    sd = load_tensors(path, "state dict")
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: not a state dict")
    if any(k.startswith("encoder.") for k in sd):
        sd = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    own = model.get_submodule("encoder").state_dict()
    loaded = {}
    for k, v in sd.items():
        if k not in own or not isinstance(v, torch.Tensor):
            continue
        if v.shape == own[k].shape:
            loaded[k] = v
        elif v.ndim == 4 and v.shape[0] == own[k].shape[0] and v.shape[2:] == own[k].shape[2:]:
            loaded[k] = (v.sum(1, keepdim=True) / own[k].shape[1]).expand_as(own[k]).clone()
    other = [k for k, v in sd.items() if k in own and isinstance(v, torch.Tensor) and k not in loaded]
    if other or not loaded:
        example = f" ({other[0]}: {tuple(sd[other[0]].shape)}, expected {tuple(own[other[0]].shape)})" if other else ""
        raise CheckpointError(
            f"{path}: weights of another encoder than {type(model.encoder).__name__}: "
            f"{len(other)} tensor(s) of other shapes{example}, {len(loaded)} matching"
        )
    wanted = [k for k in own if not k.endswith("num_batches_tracked")]  # a counter, absent from many files
    matched = sum(k in loaded for k in wanted)
    if matched < len(wanted):
        warnings.warn(
            f"--encoder-weights {path}: {matched} of the encoder's {len(wanted)} tensors loaded; "
            "the others keep their random initialisation",
            BonesegWarning,
            stacklevel=2,
        )
    model.get_submodule("encoder").load_state_dict(loaded, strict=False)
