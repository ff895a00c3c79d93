"""Checkpoints: atomic saves, safe (``weights_only``) loads, and model + config from a run.

A checkpoint is a dict holding at least ``config`` (plain JSON-able: arch, encoder, size, crop, channels,
in_channels, mean, std, unify_side, classes, loss, aug, …), ``model`` (state dict), ``epoch``, ``step``,
``metrics`` and ``format`` (`FORMAT`; absent in files of the first versions). ``last.pt`` adds what
resuming needs: ``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``rng``, the position inside the epoch
and the training images. Everything is tensors or plain Python types, so
``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from boneseg.errors import CheckpointError, quote
from boneseg.io import atomic_open, load_tensors
from boneseg.runs.files import BEST, LAST, checkpoint_in

FORMAT = 1
"""The checkpoint layout this version writes (``format``); a file of a later one is refused, not misread."""
REQUIRED = ("arch", "encoder")
"""Config keys every checkpoint must hold (strings): what builds its model."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically (temp file + rename), replacing an older checkpoint.

    Raises:
        DataError: the write failed (``cannot write PATH: No space left on device``); nothing is left behind.
    """
    save_checkpoints({Path(path): state})
    return Path(path)


def save_checkpoints(states: dict[Path, dict[str, Any]]) -> None:
    """Write several checkpoints as one step: each is serialised and written to a temp file beside it, and only
    when every one is complete are they renamed into place, in the order given. A failed write (a full disk)
    leaves every previous file as it was and no temp file.

    Raises:
        DataError: a write failed, naming the file (``cannot write PATH: No space left on device``).
    """
    with contextlib.ExitStack() as stack:
        for path, state in reversed(states.items()):  # the stack renames the last entered first
            buffer = io.BytesIO()
            torch.save(state, buffer)  # in memory: torch's own writer loses a short write's error on a full disk
            fh = stack.enter_context(atomic_open(path, "wb", force=True))
            fh.write(buffer.getbuffer())
            del buffer


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file for `path`: the file itself, or a run folder's ``best.pt`` (else its ``last.pt``).

    Raises:
        CheckpointError: nothing loadable there.
    """
    path = Path(path)
    if path.is_dir():
        found = checkpoint_in(path)
        if found is not None:
            return found
        raise CheckpointError(f"{path}: run folder without {BEST} or {LAST}")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a boneseg checkpoint (file or run folder) with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: missing file, a file that is not a plain-tensor checkpoint (e.g. a pickled
            model, which is never unpickled), one without ``config``/``model``, or a config without
            `REQUIRED` keys or with a bad ``size``/``crop`` (naming the file and the key), or one of a
            later `FORMAT` than this version reads.
    """
    path = resolve_checkpoint(path)
    state = load_tensors(path, "boneseg checkpoint", map_location)
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("config"), dict)
        or not isinstance(state.get("model"), dict)
    ):
        raise CheckpointError(f"{path}: not a boneseg checkpoint (no 'config' and 'model' entries)")
    made = state.get("format", FORMAT)
    if isinstance(made, bool) or not isinstance(made, int) or made > FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {made!r}, from a later boneseg (this version reads format "
            f"{FORMAT} and earlier): upgrade boneseg to use it"
        )
    config = state["config"]
    for key in REQUIRED:
        if not isinstance(config.get(key), str) or not config[key]:
            raise CheckpointError(
                f"{path}: config {'lacks' if key not in config else 'has a bad'} {key!r} "
                "(not a complete boneseg checkpoint)"
            )
    for key in ("size", "crop"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise CheckpointError(f"{path}: config {key!r} is {quote(value)}, not a positive whole number")
    return state


def model_from_state(state: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model described by a loaded checkpoint, weights loaded, in eval mode on `device`."""
    import dataclasses

    from boneseg.modelling.models import build_model
    from boneseg.modelling.spec import ModelSpec

    spec = dataclasses.replace(ModelSpec.of(state["config"]), encoder_weights=None)  # the saved form, typed once
    model = build_model(spec)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint weights do not fit {spec.arch}/{spec.encoder}: {str(exc).splitlines()[0]}"
        ) from None
    return model.to(device).eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on `device`, its training config) from a checkpoint file or run folder."""
    state = load_checkpoint(path)
    return model_from_state(state, device), dict(state["config"])
