"""Training options from a file (``train --config FILE``): YAML or JSON, a run's own ``config.json`` included."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

from boneseg.engine.train import TrainConfig
from boneseg.errors import DataError, UsageError, quote, suggest
from boneseg.io import read_json, read_yaml

DERIVED = ("in_channels", "classes")
"""Keys a saved config holds that follow from the others: accepted and dropped."""
ACTIONS = ("resume", "force")
"""What a command does, not a setting: refused in a file."""


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The `TrainConfig` options in `path` (``.json``: JSON, else YAML), keys as field names.

    Keys may use dashes (``batch-size``); ``unify_hands`` means ``unify_side``; `DERIVED` keys are dropped.
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
        key = {"unify_hands": "unify_side"}.get(str(raw).replace("-", "_"), str(raw).replace("-", "_"))
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


def typed_option(where: str | os.PathLike, key: str, value: Any) -> Any:
    """`value` as the type of the `TrainConfig` field `key` (dashes allowed) wants it.

    Raises:
        UsageError: a value of the wrong type, naming `where` and `key`.
    """
    return _typed(Path(where), key, value, _annotations()[str(key).replace("-", "_")])


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
