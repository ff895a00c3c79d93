"""Uncertainty maps (``predict --save-uncertainty DIR``): how unsure each pixel's prediction is.

Per image, ``DIR/<image stem>.npz`` holds up to three (29, H, W) uint8 maps at the original image size,
value ``round(u * 255)`` with ``u`` in [0, 1]:

- ``entropy``: the binary entropy of the final probability, in bits (1 at p = 0.5, 0 at p = 0 or 1);
- ``tta``: twice the standard deviation of the probability across the TTA views (present with a TTA policy
  of more than one view);
- ``ensemble``: twice the weighted standard deviation across the ensemble's models (present with 2+ models).

``DIR/uncertainty.csv`` has one row per (image, class): ``image_name,class,entropy,tta,ensemble``, each the
mean of that map over the class's *region*: the pixels predicted as the class (p > 0.5) or in doubt
(entropy > 0.5, i.e. 0.11 < p < 0.89); 0 when the region is empty, an empty field for an absent map.
``DIR/uncertainty.json`` is the manifest (images, maps).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from boneseg.classes import CLASSES, NUM_CLASSES
from boneseg.errors import DataError
from boneseg.io import atomic_open, read_json, write_json
from boneseg.probs import SCALE

MAPS = ("entropy", "tta", "ensemble")
CSV = "uncertainty.csv"
MANIFEST = "uncertainty.json"
FORMAT = "boneseg-uncertainty"
HEADER = ("image_name", "class", *MAPS)


def entropy(p):
    """Binary entropy in bits of probabilities (numpy or torch), 0 at 0 and 1."""
    if hasattr(p, "detach"):
        p = p.float().clamp(1e-7, 1 - 1e-7)
        return -(p * p.log2() + (1 - p) * (1 - p).log2())
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def quantize(u) -> np.ndarray:
    """Maps in [0, 1] (numpy or torch) -> uint8 ``round(u * 255)``."""
    if hasattr(u, "detach"):
        u = u.detach().float().cpu().numpy()
    return np.rint(np.clip(u, 0.0, 1.0) * SCALE).astype(np.uint8)


def path_of(folder: str | os.PathLike, image_name: str) -> Path:
    return Path(folder) / f"{Path(image_name).stem}.npz"


def region_means(maps: dict[str, np.ndarray], predicted: np.ndarray) -> dict[str, list[float | None]]:
    """Per map, the 29 means over each class's region (see the module notes); `predicted` (29, H, W) bool."""
    region = predicted | (maps["entropy"] > SCALE // 2)
    area = region.sum(axis=(1, 2))
    out: dict[str, list[float | None]] = {}
    for name in MAPS:
        if name not in maps:
            out[name] = [None] * NUM_CLASSES
            continue
        total = np.where(region, maps[name], 0).sum(axis=(1, 2), dtype=np.float64)
        out[name] = [float(t / a / SCALE) if a else 0.0 for t, a in zip(total, area)]
    return out


def save(folder: str | os.PathLike, image_name: str, maps: dict[str, np.ndarray]) -> Path:
    """Write one image's uint8 maps (compressed, atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = path_of(folder, image_name)
    with atomic_open(path, "wb", force=True) as fh:
        np.savez_compressed(fh, image_name=np.array(image_name), **maps)  # type: ignore[arg-type]
    return path


def load(folder: str | os.PathLike, image_name: str) -> dict[str, np.ndarray]:
    """One image's maps; a missing or broken file is a `DataError`."""
    path = path_of(folder, image_name)
    try:
        with np.load(path, allow_pickle=False) as z:
            maps = {k: z[k] for k in MAPS if k in z.files}
    except FileNotFoundError:
        raise DataError(f"{path}: uncertainty file not found (image {image_name})") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable uncertainty file ({exc})") from None
    for k, m in maps.items():
        if m.dtype != np.uint8 or m.ndim != 3 or m.shape[0] != NUM_CLASSES:
            raise DataError(f"{path}: {k}: expected uint8 ({NUM_CLASSES}, H, W), got {m.dtype} {m.shape}")
    if "entropy" not in maps:
        raise DataError(f"{path}: no entropy map")
    return maps


def write_table(folder: str | os.PathLike, rows: Sequence[tuple[str, dict[str, list[float | None]]]]) -> None:
    """``uncertainty.csv`` from (image name, `region_means`) pairs, in the given order."""
    from boneseg.submission import format_row

    with atomic_open(Path(folder) / CSV, "w", force=True) as fh:
        fh.write(format_row(*HEADER))
        for image, means in rows:
            for c, name in enumerate(CLASSES):
                cells = ["" if means[m][c] is None else f"{means[m][c]:.6f}" for m in MAPS]
                fh.write(format_row(Path(image).name, name, *cells))  # a name with a comma is quoted


def read_table(folder: str | os.PathLike, images: Sequence[str] | None = None) -> dict[str, dict[str, list]]:
    """``uncertainty.csv`` of `folder`: image name -> map -> the 29 class values (None for an absent map),
    every image with all 29 class rows. With `images`, only those (each must be in the table).

    Raises:
        DataError: no table, a wrong header, a malformed row or value outside [0, 1], an unknown class, a
            (image, class) pair given twice, an image lacking class rows or missing from the table.
    """
    import csv

    path = Path(folder) / CSV
    if not path.is_file():
        raise DataError(f"{folder}: no {CSV} (made by predict --save-uncertainty)")
    values: dict[str, dict[str, list]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        if tuple(next(reader, ())) != HEADER:
            raise DataError(f"{path}: header is not {','.join(HEADER)}")
        for line, row in enumerate(reader, start=2):
            try:
                cells = [None if v == "" and m != "entropy" else float(v) for m, v in zip(MAPS, row[2:], strict=True)]
            except ValueError:
                raise DataError(f"{path}: row {line}: expected image_name,class,{','.join(MAPS)} values") from None
            for m, v in zip(MAPS, cells):
                if v is not None and not 0.0 <= v <= 1.0:
                    raise DataError(f"{path}: row {line}: {m} {v} is not within [0, 1]")
            if row[1] not in CLASSES:
                from boneseg.errors import suggest

                raise DataError(f"{path}: row {line}: unknown class {row[1]!r}{suggest(row[1], CLASSES)}")
            c = CLASSES.index(row[1])
            image = values.setdefault(row[0], {m: [_UNSET] * NUM_CLASSES for m in MAPS})
            if image["entropy"][c] is not _UNSET:
                raise DataError(f"{path}: row {line}: image {row[0]!r}, class {row[1]!r} is given twice")
            for m, v in zip(MAPS, cells):
                image[m][c] = v
    for name, image in values.items():
        missing = [CLASSES[c] for c, v in enumerate(image["entropy"]) if v is _UNSET]
        if missing:  # read as certain, a truncated table would let doubtful images through
            raise DataError(f"{path}: image {name!r} lacks {len(missing)} class row(s): {', '.join(missing[:3])}")
    if images is None:
        return values
    absent = [n for n in images if n not in values]
    if absent:
        raise DataError(f"{path}: no row for image {absent[0]!r} (maps of other predictions?)")
    return {n: values[n] for n in images}


_UNSET = object()


def write_manifest(folder: str | os.PathLike, images: Sequence[str], maps: Sequence[str]) -> None:
    write_json(
        Path(folder) / MANIFEST,
        {"format": FORMAT, "version": 1, "classes": list(CLASSES), "images": list(images), "maps": list(maps)},
        force=True,
    )


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an uncertainty folder; `DataError` when it is not one."""
    doc = read_json(Path(folder) / MANIFEST)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("images"), list):
        raise DataError(f"{Path(folder) / MANIFEST}: not a boneseg uncertainty manifest")
    return doc
