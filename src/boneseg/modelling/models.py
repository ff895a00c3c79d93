"""Model factory: segmentation_models_pytorch architectures x encoders -> 29 sigmoid-channel logits.

::

    model = build_model({"arch": "unetpp", "encoder": "efficientnet-b4", "encoder_weights": "imagenet"})
    logits = model(x)            # (N, C, H, W) float -> (N, 29, H, W) logits, one sigmoid per class

Names are case-insensitive; short aliases (``unetpp``, ``dlv3p``, ``uper``…) resolve to smp's canonical
names, and any ``tu-<timm model>`` encoder is accepted. Unknown names raise `UsageError` listing the
valid ones, closest first.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import segmentation_models_pytorch as smp  # noqa: E402  (after torch)
import torch

from boneseg.classes import NUM_CLASSES
from boneseg.errors import BonesegError, BonesegWarning, CheckpointError, DataError, UsageError, suggest
from boneseg.names import ARCH_ALIASES, ENCODER_WEIGHTS

ARCHITECTURES: dict[str, type[torch.nn.Module]] = dict(smp.MODEL_ARCHITECTURES_MAPPING)
"""Canonical (smp) architecture name -> model class."""

ALIASES: dict[str, str] = ARCH_ALIASES
"""Short name -> canonical architecture name (`boneseg.names`)."""

SET_BY_BONESEG = ("encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params")
"""smp constructor arguments boneseg sets itself (logits out, heads in `boneseg.modelling.heads`): never
`model_kwargs`."""


def resolve_arch(name: str) -> str:
    """The canonical smp architecture name for `name` (alias, canonical or class name, any case).

    Raises:
        UsageError: unknown name (the message lists valid names, closest first).
    """
    key = str(name).strip().lower().replace("_", "").replace("-", "")
    key = ALIASES.get(key, ALIASES.get(str(name).strip().lower(), key))
    if key in ARCHITECTURES:
        return key
    raise UsageError(f"--arch {name!r}: unknown architecture{suggest(str(name), [*ARCHITECTURES, *ALIASES])}")


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


def resolve_encoder(name: str) -> str:
    """`name` checked against smp's encoders and, for ``tu-<model>[.<tag>]``, timm's models.

    Raises:
        UsageError: unknown encoder (closest valid names first).
    """
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


def build_model(config: Mapping) -> torch.nn.Module:
    """An smp model from a config dict.

    Keys: ``arch``, ``encoder`` (required); ``in_channels`` (default 1), ``classes`` (list of names or a
    count, default 29), ``encoder_weights`` (``imagenet``, ``none`` or a path to a local state dict;
    default none), ``model_kwargs`` (extra smp keyword arguments); ``meta``, ``boundary_head`` and
    ``boundary_sharpen`` wrap the model in a `boneseg.modelling.heads.AuxModel`. Pretrained weights come from
    the Hugging Face (or torch) cache, downloaded through smp/timm only on a cache miss (`_pretrained`).

    Raises:
        UsageError: unknown architecture or encoder, or a combination smp refuses.
        DataError: pretrained weights neither cached nor downloadable (offline).
        CheckpointError: an encoder-weights file that cannot be loaded.
    """
    arch = resolve_arch(config["arch"])
    encoder = resolve_encoder(config["encoder"])
    classes = config.get("classes", NUM_CLASSES)
    n_classes = classes if isinstance(classes, int) else len(classes)
    in_channels = int(config.get("in_channels", 1))
    weights = config.get("encoder_weights")
    kwargs = dict(config.get("model_kwargs") or {})
    check_model_kwargs(arch, encoder, kwargs)
    if arch == "dpt" and encoder.startswith("tu-"):
        kwargs.setdefault("dynamic_img_size", True)
    if encoder.startswith("tu-swin") and config.get("size"):
        kwargs.setdefault("img_size", int(config["size"]))  # timm's Swin is built for one input size

    def create() -> torch.nn.Module:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*encoder_weights.*")
            return smp.create_model(
                arch,
                encoder_name=encoder,
                encoder_weights=_weights_arg(encoder, weights),
                in_channels=in_channels,
                classes=n_classes,
                **kwargs,
            )

    try:
        model = _pretrained(create, encoder, weights) if _weights_arg(encoder, weights) else create()
    except BonesegError:
        raise
    except Exception as exc:  # noqa: BLE001 - smp/timm raise many types
        raise UsageError(f"cannot build --arch {arch} with --encoder {encoder}: {_first_line(exc)}") from None
    if (
        weights is not None
        and _weights_arg(encoder, weights) is None
        and str(weights).lower() not in ENCODER_WEIGHTS
        and str(weights).lower() not in ("", "null", "random")
    ):
        load_encoder_weights(model, weights)
    from boneseg.modelling.heads import wrap

    return wrap(model, config)


def fetch_pretrained(encoder: str, weights) -> None:
    """Have the pretrained weights `build_model` will load at hand (cached, or downloaded now), so an offline
    machine hears of it before any other work; nothing for ``none`` or a local file. A failure other than
    fetching is left to `build_model` to report.

    Raises:
        DataError: the weights are neither cached nor downloadable.
    """
    name = resolve_encoder(encoder)
    arg = _weights_arg(name, weights)
    if arg is None:
        return

    def create() -> torch.nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign pickles
        raise CheckpointError(
            f"{path}: not a plain state dict ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
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
