"""Training options from a file (``train --config FILE``: YAML or JSON, a run's own config file included) and
from a command line (`command_config`: the file's options, overridden by those the command gives)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from boneseg.errors import DataError, UsageError, quote, suggest
from boneseg.io import read_json, read_yaml
from boneseg.runs.config import DERIVED, NAMED_BY_A_NEW_RUN, TrainConfig, field_name

ACTIONS = ("resume", "force")
"""What a command does, not a setting: refused in a file."""


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The `TrainConfig` options in `path` (``.json``: JSON, else YAML), keys as field names.

    Keys may use dashes (``batch-size``) and aliases (``unify_hands``, `boneseg.runs.config.ALIASES`);
    `DERIVED` keys are dropped.
    A key given twice, or two spellings of one option (``batch-size`` and ``batch_size``), is an error naming both.
    Values are checked against the field types (YAML's ``1e-3``, a string, is read as a number).

    Raises:
        DataError: a missing, unreadable or malformed file, or one that is not a mapping.
        UsageError: an unknown key (with the closest ones), `ACTIONS`, or a value of the wrong type,
            each naming the file.
    """
    path = Path(path)
    doc = read_json(path) if path.suffix.lower() == ".json" else read_yaml(path)
    if not isinstance(doc, dict):
        raise DataError(f"{path}: not a mapping of training options (e.g. `epochs: 30`)")
    fields = _annotations()
    out: dict[str, Any] = {}
    spelled: dict[str, Any] = {}
    for raw, value in doc.items():
        key = field_name(raw)
        if key in spelled:
            raise UsageError(
                f"{path}: {quote(spelled[key])} and {quote(raw)} both set {key} (two spellings of one option: keep one)"
            )
        spelled[key] = raw
        if key in DERIVED:
            continue
        if key in ACTIONS:
            raise UsageError(f"{path}: {raw!r} is a command-line action, not a setting (give --{key} instead)")
        if key not in fields:
            raise UsageError(f"{path}: unknown training option {quote(raw)}{suggest(key, fields)}")
        out[key] = _typed(path, raw, value, fields[key])
    return out


def command_config(
    options: Mapping[str, Any],
    config_file: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """The options of a ``train`` command as `boneseg.engine.train.train` takes them: the `config_file`'s
    (`read_config`), overridden by each of `options` that was given (None or an empty list: not given); keys
    are field names or their aliases (``unify_hands``), paths become text, ``unify_side`` ``none`` is given
    as no side.
    Options a command leaves out take `TrainConfig`'s defaults (a new run) or the run's (``resume``), but a
    new run names its model (`NAMED_BY_A_NEW_RUN`).

    Raises:
        UsageError: an unknown option (with the closest ones), a new run without ``--arch``, ``--encoder``
            or ``--size``, or what `read_config` raises.
    """
    config = read_config(config_file) if config_file is not None else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for raw, value in options.items():
        key = field_name(raw)
        if key not in names or key in ACTIONS:
            raise UsageError(f"unknown training option {raw!r}{suggest(key, names)}")
        if isinstance(value, (list, tuple)):
            value = [str(v) if isinstance(v, os.PathLike) else v for v in value] or None
        if key == "unify_side" and isinstance(value, str) and value.lower() == "none":
            config[key] = None  # given: no side, whatever the file says
        elif value is not None:
            config[key] = str(value) if isinstance(value, os.PathLike) else value
    missing = [f"--{k}" for k in NAMED_BY_A_NEW_RUN if k not in config]
    if missing and not resume:
        raise UsageError(f"missing option {', '.join(missing)} (needed for a new run)")
    config.update(resume=resume, force=force)
    return config


def typed_option(where: str | os.PathLike, key: str, value: Any) -> Any:
    """`value` as the type of the `TrainConfig` field `key` (dashes allowed) wants it.

    Raises:
        UsageError: a value of the wrong type, naming `where` and `key`.
    """
    return _typed(Path(where), key, value, _annotations()[field_name(key)])


def _annotations() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def _typed(path: Path, key: str, value: Any, annotation: str) -> Any:
    """`value` as the field type `annotation` (``"int | None"``, ``"list[float]"`` …) wants it."""
    for kind in (k.strip() for k in annotation.split("|")):
        if kind == "None" and value is None:
            return None
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind == "float" and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            with contextlib.suppress(ValueError):
                return float(value)
        if kind == "str" and isinstance(value, str):
            return value
        if kind.startswith("list[") and isinstance(value, list):
            return [_typed(path, key, v, kind[5:-1]) for v in value]
        if kind == "dict" and isinstance(value, dict):
            return value
    return _fail(path, key, value, annotation)


def _fail(path: Path, key: str, value: Any, annotation: str) -> Any:
    want = annotation.replace("str", "text").replace("float", "number").replace("int", "whole number")
    raise UsageError(f"{path}: {key} is {quote(value)}, expected {want.replace(' | None', ' or null')}")
