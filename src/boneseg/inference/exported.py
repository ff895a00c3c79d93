"""Exported models (`boneseg export`): the runtime side, so that `predict -m FILE` runs them through the same
sliding window, TTA, threshold and writer code as a checkpoint.

An export is a model file plus a JSON sidecar holding everything predict needs (classes, input channels and
normalisation, size and window, hand-side unification, per-class thresholds, post-processing rules):

==============  ===============================  ====================  ==================================
format          model                            sidecar               output of the model
==============  ===============================  ====================  ==================================
``onnx``        ``FILE`` (onnxruntime)           ``FILE.json`` beside  probabilities (sigmoid inside)
``torchscript`` ``FILE`` (``torch.jit.load``)    ``FILE.json`` beside  probabilities (sigmoid inside)
``hf``          ``DIR`` (smp ``from_pretrained``) ``DIR/boneseg.json``  logits (a plain smp model)
==============  ===============================  ====================  ==================================

Every model takes the normalised image batch ``(N, C, H, W)`` float32 with any ``H``, ``W`` (multiples of 32).
The ``onnx`` and ``torchscript`` graphs take a second input, ``output_size`` (int64 ``[height, width]``): each
network's logits are resized to it before the sigmoid, so resize mode matches a checkpoint's prediction.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boneseg import calibration as calibration_mod
from boneseg.classes import CLASSES
from boneseg.data.transforms import in_channels
from boneseg.errors import BonesegError, CheckpointError, UsageError, out_of_memory
from boneseg.io import read_json
from boneseg.probs import thresholds_array
from boneseg.runs.config import TrainConfig, check_input
from boneseg.runs.config_file import typed_option
from boneseg.runs.run import Run

FORMAT = "boneseg-export"
FORMATS = ("onnx", "torchscript", "hf")
HF_SIDECAR = "boneseg.json"
HF_FILES = ("config.json", "model.safetensors")
INPUT_NAME, SIZE_NAME, OUTPUT_NAME = "image", "output_size", "probabilities"
VERSION = 4
"""Sidecar version: 2 added the graphs' ``output_size`` input, 3 the model file's ``model_sha256``, 4 replaced it
with ``integrity_sha256`` (model file, hf ``config.json`` and every sidecar setting) and added the optional
``calibration`` (`boneseg.calibration`) predict applies to the model's probabilities."""
HASH_KEY = "integrity_sha256"
UNSEALED = (HASH_KEY, "max_abs_diff")
"""Sidecar fields outside the integrity hash: the hash itself, and the check figure computed with it."""
RUNS_CODE = ("torchscript",)
"""Backends whose files run code of their author's choosing when loaded (only with ``trust_model``)."""
CONFIG_KEYS = ("size", "crop", "channels", "mean", "std", "unify_side")
"""The training-config fields an export carries (what normalisation, sizes and hand side need)."""


def size_input(size: Sequence[int]) -> torch.Tensor:
    """A graph's ``output_size`` input: ``(height, width)`` as an int64 tensor."""
    return torch.tensor(list(size), dtype=torch.int64)


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the sidecar of the export at `path` lives: ``DIR/boneseg.json`` for a folder, else ``FILE.json``."""
    path = Path(path)
    return path / HF_SIDECAR if path.is_dir() else path.with_name(path.name + ".json")


def model_file(path: str | os.PathLike, backend: str) -> Path:
    """The file holding an export's weights: the model file itself, ``DIR/model.safetensors`` for ``hf``."""
    return Path(path) / "model.safetensors" if backend == "hf" else Path(path)


def sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file (what binds a sidecar to its model file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def integrity(path: str | os.PathLike, backend: str, sidecar: dict) -> str:
    """The hex SHA-256 binding an export together: the model file (for ``hf`` also its ``config.json``, which
    builds the network) and every sidecar setting except `UNSEALED`. Editing any of them changes it."""
    digest = hashlib.sha256()
    files = {"model": model_file(path, backend)}
    if backend == "hf":
        files["config.json"] = Path(path) / "config.json"
    for role, file in files.items():
        digest.update(f"{role}\0{sha256(file)}\0".encode())
    settings = {k: v for k, v in sidecar.items() if k not in UNSEALED}
    digest.update(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def is_exported(path: str | os.PathLike | Run) -> bool:
    """True for an export (a path with a sidecar, or an ``.onnx`` file), False for checkpoints and run folders."""
    if isinstance(path, (Run, Exported)):
        return isinstance(path, Exported)
    path = Path(path)
    return path.suffix.lower() == ".onnx" or sidecar_path(path).is_file()


def onnxruntime():
    """The onnxruntime module (the optional ``onnx`` extra).

    Raises:
        UsageError: it is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("ONNX models need onnxruntime: pip install 'boneseg[onnx]'") from None
    return ort


class Graph(abc.ABC):
    """An exported graph called as ``model(batch, (height, width))`` -> ``(N, 29, height, width)`` probabilities
    (a tensor on the batch's device); a graph that fails or answers another shape is a `CheckpointError` naming
    the file (e.g. a sidecar whose ``channels`` the network does not take)."""

    path: Path

    @abc.abstractmethod
    def run(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The backend's call, unchecked."""

    def __call__(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        try:
            p = self.run(x, size)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - TorchScript and onnxruntime raise many types
            if out_of_memory(exc) is not None:
                raise  # the CLI's out-of-memory line, not the model's fault
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
            start = max((i for i, ln in enumerate(lines) if "Error" in ln), default=0)  # past TorchScript's trace
            raise CheckpointError(
                f"{self.path}: the model failed on a {tuple(x.shape)} input ({' '.join(lines[start:])[:300]})"
            ) from None
        want = (x.shape[0], len(CLASSES), *size)
        if tuple(p.shape) != want:
            raise CheckpointError(f"{self.path}: the model answered {tuple(p.shape)}, not {want}")
        return p


class OnnxModel(Graph):
    """An onnxruntime session (see `Graph`)."""

    wants_meta = False

    def __init__(self, path: Path, device: torch.device):
        self.path = path
        ort = onnxruntime()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for broken files
            raise CheckpointError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        inputs = {
            INPUT_NAME: np.ascontiguousarray(x.detach().float().cpu().numpy()),
            SIZE_NAME: np.asarray(size, dtype=np.int64),
        }
        return torch.from_numpy(self.session.run(None, inputs)[0]).to(x.device)


class ScriptModel(Graph):
    """A TorchScript graph (see `Graph`)."""

    def __init__(self, path: Path, module: torch.jit.ScriptModule):
        self.path, self.module = path, module

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.module(x, size_input(size))


class Exported:
    """An export opened once: its sidecar, config and model (the counterpart of `Run` for `predict`)."""

    def __init__(self, path: str | os.PathLike, trust_model: bool = False):
        self.path = Path(path)
        self.rules_path = sidecar_path(self.path)
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: exported model not found")
        if not self.rules_path.is_file():
            raise CheckpointError(f"{self.path}: no sidecar {self.rules_path.name} beside it (made by boneseg export)")
        doc = read_json(self.rules_path)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("backend") not in FORMATS:
            raise CheckpointError(f"{self.rules_path}: not a boneseg export sidecar")
        if doc.get("version") != VERSION:
            raise CheckpointError(
                f"{self.rules_path}: sidecar version {doc.get('version')!r}, this boneseg reads version {VERSION} "
                "(export the run again)"
            )
        if doc.get("classes") != list(CLASSES):
            raise CheckpointError(f"{self.rules_path}: 'classes' differ from the 29 competition classes")
        self.sidecar: dict[str, Any] = doc
        self.backend: str = doc["backend"]
        if self.backend in RUNS_CODE and not trust_model:
            raise CheckpointError(
                f"{self.path}: a {self.backend} model runs code of its author's choosing when loaded (it can read "
                "and write any file): load it only from a source you trust, with --trust-model (ONNX and hf "
                "exports need no trust)"
            )
        missing = [k for k in CONFIG_KEYS if k not in doc]
        if missing:
            raise CheckpointError(f"{self.rules_path}: missing input setting(s) {', '.join(missing)}")
        try:
            settings = {k: typed_option(self.rules_path, k, doc[k]) for k in CONFIG_KEYS}
        except UsageError as exc:
            raise CheckpointError(str(exc)) from None
        try:
            self.config = TrainConfig.from_any(settings)
            check_input(self.config)
        except UsageError as exc:
            raise CheckpointError(f"{self.rules_path}: bad input setting ({exc})") from None
        if doc.get("in_channels") != in_channels(self.config):
            raise CheckpointError(
                f"{self.rules_path}: in_channels {doc.get('in_channels')!r} does not match channels "
                f"{self.config.channels!r} ({in_channels(self.config)} input channel(s))"
            )
        if not isinstance(doc.get("thresholds"), (dict, type(None))):
            raise CheckpointError(f"{self.rules_path}: 'thresholds' must be a {{class: threshold}} mapping")
        try:
            thresholds_array(doc.get("thresholds") or {})
        except BonesegError as exc:
            raise CheckpointError(f"{self.rules_path}: {exc}") from None
        self.calibration: calibration_mod.Calibration | None = None
        if doc.get("calibration") is not None:
            try:
                self.calibration = calibration_mod.from_document(
                    doc["calibration"], f"{self.rules_path}: 'calibration'"
                )
            except BonesegError as exc:
                raise CheckpointError(str(exc)) from None
        self._check_model_file()
        self.probabilities = self.backend != "hf"  # hf holds the smp model itself (logits)

    def _check_model_file(self) -> None:
        """The model file must be the one the sidecar was written for (a sidecar copied beside another export
        would apply its settings, thresholds and rules to the wrong network)."""
        if self.backend != "hf" and self.path.is_dir():
            raise CheckpointError(f"{self.path}: a folder, but its sidecar describes a {self.backend} model file")
        missing = [name for name in HF_FILES if self.backend == "hf" and not (self.path / name).is_file()]
        if missing:
            raise CheckpointError(
                f"{self.path}: {' and '.join(missing)} missing (an hf export folder holds {' and '.join(HF_FILES)})"
            )
        if self.backend == "hf":
            smp_config = read_json(self.path / "config.json")
            for key, want in (("in_channels", in_channels(self.config)), ("classes", len(CLASSES))):
                if not isinstance(smp_config, dict) or smp_config.get(key) != want:
                    got = smp_config.get(key) if isinstance(smp_config, dict) else None
                    raise CheckpointError(
                        f"{self.path / 'config.json'}: {key} {got!r}, but {self.rules_path.name} says {want}"
                    )
        if self.sidecar.get(HASH_KEY) != integrity(self.path, self.backend, self.sidecar):
            covered = "model.safetensors, config.json" if self.backend == "hf" else self.path.name
            raise CheckpointError(
                f"{self.rules_path}: does not match its model ({HASH_KEY} differs: {covered} or a setting of the "
                "sidecar changed since export, or the sidecar was written for another model file): export the run "
                "again, or put the sidecar beside its own model; give predict --threshold/--postprocess to change "
                "those"
            )

    @classmethod
    def open(cls, path: str | os.PathLike | Exported, trust_model: bool = False) -> Exported:
        return path if isinstance(path, Exported) else cls(path, trust_model)

    @property
    def postprocess_rules(self) -> dict | None:
        """The post-processing rules document the export carries, None when there is none."""
        return self.sidecar.get("postprocess")

    @property
    def thresholds(self) -> dict[str, float] | None:
        """The per-class thresholds the export carries."""
        return self.sidecar.get("thresholds")

    def model(self, device: str | torch.device = "cpu") -> Any:
        """The callable model on `device`: ``model(batch, (height, width))`` -> probabilities at that size, or for
        ``hf`` the smp model (batch -> logits at the batch's size)."""
        return load_backend(self.path, self.backend, device)


def load_backend(path: Path, backend: str, device: str | torch.device = "cpu") -> Any:
    """The model file or folder at `path` as a callable on `device` (see the module notes). ``torchscript`` runs
    its author's code: callers check trust first (`Exported`, or a graph `export` itself just wrote).

    Raises:
        CheckpointError: a file the backend cannot load. UsageError: onnxruntime missing for ``onnx``.
    """
    device = torch.device(device)
    if backend == "onnx":
        return OnnxModel(path, device)
    if backend == "hf":
        return load_hf(path).to(device).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            return ScriptModel(path, torch.jit.load(str(path), map_location=device).eval())
    except Exception as exc:  # noqa: BLE001 - TorchScript raises many types
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable {backend} model ({msg})") from None


def load_hf(path: str | os.PathLike) -> torch.nn.Module:
    """An smp folder (``config.json`` + ``model.safetensors``) as smp's ``from_pretrained`` reads it, but offline
    by construction: the network is built without pretrained weights (whatever ``encoder_weights`` the config
    names) and the folder's weights loaded into it, all of them (a missing or extra tensor is refused).

    Raises:
        CheckpointError: a config that does not build an smp model, weights that do not fit it.
    """
    import segmentation_models_pytorch as smp
    from safetensors.torch import load_file

    path = Path(path)
    config = read_json(path / "config.json")
    name = config.get("_model_class") if isinstance(config, dict) else None
    archs = {cls.__name__: cls for cls in getattr(smp, "MODEL_ARCHITECTURES_MAPPING", {}).values()}
    if name not in archs:
        raise CheckpointError(f"{path / 'config.json'}: '_model_class' {name!r} is not an smp architecture")
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    kwargs["encoder_weights"] = None  # never downloaded: the weights are in the folder
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # smp/timm notices about options
            model = archs[name](**kwargs)
    except Exception as exc:  # noqa: BLE001 - smp raises many types for bad arguments
        raise CheckpointError(f"{path / 'config.json'}: does not build an smp model ({str(exc)[:200]})") from None
    try:
        state = load_file(str(path / "model.safetensors"))
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - safetensors and load_state_dict raise many types
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable hf model ({msg})") from None
    return model


def open_model(path: str | os.PathLike | Run | Exported, trust_model: bool = False) -> Run | Exported:
    """A checkpoint/run folder as a `Run`, an export as an `Exported` (a TorchScript one only with `trust_model`).

    Raises:
        CheckpointError: nothing loadable there, or a TorchScript export without `trust_model`.
    """
    if isinstance(path, (Run, Exported)):
        return path
    return Exported(path, trust_model) if is_exported(path) else Run.open(path)
