"""Patient metadata as model input (`meta_vector`) and the hand-side target: data for the optional heads of
`boneseg.modelling.heads`."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

META_FIELDS = ("age", "sex", "height", "weight")
META_STATS = {"age": (40.0, 15.0), "height": (165.0, 10.0), "weight": (65.0, 15.0)}
"""Fixed standardisation (mean, std) of the numeric metadata (adult hand-radiograph cohort scale)."""
META_DIM = 2 * len(META_FIELDS)


def meta_vector(row: Mapping | None) -> np.ndarray:
    """A metadata row (age, sex "M"/"F", height, weight; NaN/None when missing) -> float32 (8,): the
    standardised values (sex +1 male / -1 female; 0 when missing) then a presence flag per field."""
    out = np.zeros(META_DIM, np.float32)
    if row is None:
        return out
    for i, name in enumerate(META_FIELDS):
        v = row.get(name) if hasattr(row, "get") else None
        if name == "sex":
            value = 1.0 if v == "M" else -1.0 if v == "F" else None
        else:
            try:
                value = float(v) if v is not None else None
            except (TypeError, ValueError):
                value = None
            if value is not None and math.isfinite(value):
                mean, std = META_STATS[name]
                value = (value - mean) / std
            else:
                value = None
        if value is not None:
            out[i], out[len(META_FIELDS) + i] = value, 1.0
    return out


def find_meta_file(path: str | os.PathLike) -> Path | None:
    """The metadata file (`boneseg.data.layout.meta_file`) in `path` or up to three folders above it
    (DATA/test/DCM/ID040 -> DATA), or `path` itself when it is one."""
    from boneseg.data.layout import meta_file

    p = Path(path).resolve()
    if p.is_file() and p.suffix.lower() in (".xlsx", ".xls", ".csv"):
        return p
    return next((f for f in map(meta_file, [p, *p.parents][:4]) if f is not None), None)


def meta_table(path: str | os.PathLike | None) -> dict[str, np.ndarray]:
    """{patient: `meta_vector`} from a metadata file or the dataset root/folder it is found from
    (`find_meta_file`); empty when there is none (every image then uses the no-metadata vector)."""
    from boneseg.data.layout import read_meta

    found = find_meta_file(path) if path is not None else None
    if found is None:
        return {}
    df = read_meta(found.parent, found)
    return {pid: meta_vector(row) for pid, row in df.to_dict("index").items()}


def side_target(masks: np.ndarray) -> float:
    """1.0 for a right hand, 0.0 for a left one (`side_from_masks`), NaN when the (augmented) masks do
    not show both the thumb and the little finger."""
    from boneseg.data.layout import side_from_masks

    return {"R": 1.0, "L": 0.0}.get(side_from_masks(masks) or "", float("nan"))
