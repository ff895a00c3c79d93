"""The competition label JSON, written: polygons -> one ``poly_seg`` document per image and its bytes.

`boneseg.data.masks.load_label` reads what this writes (and every other file of the competition schema):
``{"annotations": [{"id", "type": "poly_seg", "attributes": {}, "points": [[x, y], ...], "label"}, ...],
"filename", "metadata": {"height", "width"}}``, one annotation per class in the order of `CLASSES`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from boneseg.classes import CLASSES

__all__ = ["stable_id", "label_document", "label_bytes", "write_label"]

_ID_NAMESPACE = uuid.UUID("6f1c2a4e-0b8e-4a55-9a57-3c1de2f0b7a1")


def stable_id(key: str) -> str:
    """A UUID that depends on `key` alone (``"image.png/finger-1"``): the same label gets the same id again."""
    return str(uuid.uuid5(_ID_NAMESPACE, key))


def label_document(
    polygons: Mapping[str, np.ndarray],
    filename: str,
    shape: tuple[int, int],
    *,
    new_id: Callable[[str], str] = stable_id,
    file_id: bool = False,
    source: str | None = None,
) -> dict:
    """The label document of one image: an annotation per class of `polygons` (integer ``[x, y]`` points, in
    class order), `filename` and its ``(height, width)``.

    Args:
        new_id: an id from a key: ``"filename/class"`` per annotation, then `filename` for the file id;
            called in that order (a random generator's draws stay in step).
        file_id: also write the competition's top-level ``attributes`` and ``file_id``.
        source: recorded as ``metadata.source`` (what made the labels).
    """
    annotations = [
        {
            "id": new_id(f"{filename}/{name}"),
            "type": "poly_seg",
            "attributes": {},
            "points": np.asarray(polygons[name]).tolist(),
            "label": name,
        }
        for name in CLASSES
        if name in polygons
    ]
    doc: dict = {"annotations": annotations}
    if file_id:
        doc.update(attributes={}, file_id=new_id(filename))
    doc["filename"] = filename
    doc["metadata"] = {"height": int(shape[0]), "width": int(shape[1])}
    if source is not None:
        doc["metadata"]["source"] = source
    return doc


def label_bytes(doc: Mapping) -> bytes:
    """A label document as the file's bytes: compact UTF-8 JSON."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def write_label(path: str | os.PathLike, doc: Mapping) -> Path:
    """Write a label document to `path` (its folders made); plain write: call it inside a staging folder
    (`boneseg.io.staging_folder`) or through `boneseg.io.atomic_open` for a published file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(label_bytes(doc))
    return path
