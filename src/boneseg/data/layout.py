"""Discover the competition layout: images, labels, patients, hand side and metadata.

::

    DATA/train/DCM/ID001/image1661130828152_R.png
    DATA/train/outputs_json/ID001/image1661130828152_R.json
    DATA/test/DCM/ID040/image1661319116107.png
    DATA/meta_data.xlsx
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boneseg.classes import CLASS_INDEX, DIGITS
from boneseg.errors import DataError

IMAGE_DIR, LABEL_DIR = "DCM", "outputs_json"
IMAGE_SUFFIXES = (".png",)
_PATIENT = re.compile(r"ID(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    """One radiograph: `name` is its path relative to ``<split>/DCM`` (``ID001/image….png``)."""

    name: str
    image: Path
    label: Path | None = None

    @property
    def image_name(self) -> str:
        """The base name used in submissions."""
        return Path(self.name).name

    @property
    def patient(self) -> str:
        """The patient: the deepest folder of `name` named like ``ID001``, else its top folder (both hands
        in ``ID001/left/…`` and ``ID001/right/…`` stay one patient), else the file stem."""
        folders = Path(self.name).parts[:-1]
        named = [f for f in folders if _PATIENT.fullmatch(f)]
        return named[-1] if named else folders[0] if folders else Path(self.name).stem

    @property
    def suffix_side(self) -> str | None:
        """``"L"``/``"R"`` from an ``_L``/``_R`` file-name suffix, else None."""
        stem = Path(self.name).stem
        return stem[-1].upper() if len(stem) > 2 and stem[-2] == "_" and stem[-1] in "LRlr" else None


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files under `folder` whose suffix, in any case, is one of `suffixes`, relative to it. Symlinked
    folders are followed (each real folder once), so a dataset assembled from links is read whole."""
    found, seen = [], set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        found += [Path(top, f) for f in files if os.path.splitext(f)[1].lower() in suffixes]
    return [p.relative_to(folder) for p in found if p.is_file()]


def _relative_images(folder: Path) -> list[str]:
    return sorted(_utf8_name(p, folder) for p in _files(folder, IMAGE_SUFFIXES))


def _utf8_name(name: Path, folder: Path | None = None) -> str:
    """`name` as text; one that is not valid UTF-8 (it could not be written to a submission, splits file or
    report) is a `DataError` naming the file."""
    text = name.as_posix()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = (folder / text if folder else Path(text)).as_posix().encode("utf-8", "backslashreplace").decode()
        raise DataError(
            f"{shown}: file name is not valid UTF-8 (submissions and labels are UTF-8): rename it"
        ) from None
    return text


def discover(
    root: str | os.PathLike, split: str = "train", labels: bool | None = None, skip_bad: bool = False
) -> list[Sample]:
    """Samples of ``root/<split>`` in sorted relative-path order.

    With labels (default for ``train``), every image needs ``outputs_json/<same stem>.json`` and every
    label an image; a mismatch is a `DataError` listing the files, unless `skip_bad` drops them.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    images_dir = root / split / IMAGE_DIR
    if not images_dir.is_dir():
        raise DataError(f"{root}: no {split}/{IMAGE_DIR} folder (expected the competition layout, see docs/data.md)")
    names = _relative_images(images_dir)
    if not names:
        raise DataError(f"{images_dir}: no PNG images found")
    want_labels = (split == "train") if labels is None else labels
    if not want_labels:
        return [Sample(n, images_dir / n) for n in names]
    labels_dir = root / split / LABEL_DIR
    if not labels_dir.is_dir():
        raise DataError(f"{root}: no {split}/{LABEL_DIR} folder with the labels")
    label_files = {p.with_suffix("").as_posix(): p for p in _files(labels_dir, (".json",))}
    label_names = set(label_files)
    image_stems = {str(Path(n).with_suffix("").as_posix()) for n in names}
    no_label = [n for n in names if str(Path(n).with_suffix("").as_posix()) not in label_names]
    no_image = sorted(label_names - image_stems)
    if (no_label or no_image) and not skip_bad:
        parts = []
        if no_label:
            parts.append(f"{len(no_label)} image(s) without a label, e.g. {split}/{IMAGE_DIR}/{no_label[0]}")
        if no_image:
            parts.append(f"{len(no_image)} label(s) without an image, e.g. {split}/{LABEL_DIR}/{no_image[0]}.json")
        raise DataError(f"{root}: " + "; ".join(parts) + " (use --skip-bad to leave them out)")
    skip = set(no_label)
    return [
        Sample(n, images_dir / n, labels_dir / label_files[Path(n).with_suffix("").as_posix()])
        for n in names
        if n not in skip
    ]


def find_images(path: str | os.PathLike) -> list[Sample]:
    """Images to predict: a dataset root (its ``test/DCM``), any folder of PNGs (recursive), or one PNG."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: not a PNG image")
        return [Sample(_utf8_name(Path(path.name), path.parent), path)]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    if (path / "test" / IMAGE_DIR).is_dir():
        return discover(path, "test", labels=False)
    names = _relative_images(path)
    if not names:
        raise DataError(f"{path}: no PNG images found")
    return [Sample(n, path / n) for n in names]


def by_image_name(samples: Sequence[Sample], where: str | os.PathLike | None = None) -> dict[str, Sample]:
    """`samples` keyed by base name, the key of submission rows and probability files.

    Raises:
        DataError: two samples share a base name (naming both, prefixed by `where` when given).
    """
    out: dict[str, Sample] = {}
    for s in samples:
        if s.image_name in out:
            raise DataError(
                f"{str(where) + ': ' if where is not None else ''}two images named {s.image_name} "
                f"({out[s.image_name].name}, {s.name}); submission rows are keyed by base name"
            )
        out[s.image_name] = s
    return out


def image_files(images: str | os.PathLike, names: Sequence[str]) -> dict[str, Path]:
    """The image file of each of `names` (base names, as in a CSV) under `images` (a folder of PNGs or a
    dataset root: its ``test/DCM``), matched by base name as ``check --images`` matches them.

    Raises:
        DataError: naming ``--images``: no images, two sharing a base name, or some of `names` missing.
    """
    found = by_image_name(find_images(images), f"--images {images}")
    missing = [n for n in names if n not in found]
    if missing:
        more = f", … ({len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DataError(f"--images {images}: lacks {len(missing)} image(s): {', '.join(missing[:5])}{more}")
    return {n: found[n].image for n in names}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An 8-bit grayscale image (H, W): the one reader of every image boneseg uses.

    8-bit images are returned as stored; colour (RGB/RGBA) is converted to gray; 16-bit images are
    stretched from their own minimum..maximum to 0..255 (12-bit X-rays stored in 16 bits keep their
    contrast, see docs/data.md). Missing, unreadable or truncated files raise `DataError` naming the file.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(f"{path}: unreadable or corrupt image")
    if image.ndim == 3:
        channels = image.shape[2]
        image = (
            image[:, :, 0]
            if channels == 1
            else cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if channels == 4 else cv2.COLOR_BGR2GRAY)
        )
    if image.dtype == np.uint16:
        lo, hi = int(image.min()), int(image.max())
        scaled = (image.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1))
        image = np.rint(scaled).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {image.dtype} (8- or 16-bit images only)")
    return image


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) -> `size` (h, w): the one resize rule of model inputs (the training cache, the wrist
    crops, the predictor): area averaging when both sides shrink, else bilinear."""
    import cv2

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    interp = cv2.INTER_AREA if h < image.shape[0] and w < image.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def png_shape(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) from a PNG header, without decoding; None for an unreadable file or not a PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(height), int(width)


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image, from the PNG header when possible (no decoding).

    Raises:
        DataError: a missing or unreadable image.
    """
    return png_shape(path) or read_image(path).shape[:2]


def patient_number(patient: str) -> int | None:
    """``ID001`` -> 1; None when the folder name carries no number."""
    m = _PATIENT.fullmatch(patient) or _PATIENT.search(patient)
    return int(m.group(1)) if m else None


# -- metadata -------------------------------------------------------------------------------------

_META_COLUMNS = {
    "id": ("id",),
    "age": ("나이", "age"),
    "sex": ("성별", "sex", "gender"),
    "weight": ("체중", "몸무게", "weight"),
    "height": ("키", "신장", "height"),
}


def _clean_header(text: object) -> str:
    return re.sub(r"_x[0-9a-fA-F]{4}_|[\s\x00-\x1f]", "", str(text)).lower()


META_FILES = ("meta_data.xlsx", "meta_data.xls", "meta_data.csv")
"""The metadata file of a dataset root, first found first."""


def meta_file(root: str | os.PathLike) -> Path | None:
    """The metadata file in `root` (`META_FILES`), None when there is none."""
    return next((Path(root) / n for n in META_FILES if (Path(root) / n).is_file()), None)


def read_meta(root: str | os.PathLike, path: str | os.PathLike | None = None):
    """The metadata (`meta_file` of `root`, or `path`) as a DataFrame indexed by patient (``ID001``) with
    columns age, sex ("M"/"F"), weight, height (floats, NaN when missing). Korean or English headers;
    junk characters tolerated. Returns None when there is no such file.
    """
    import pandas as pd

    file = Path(path) if path else meta_file(root)
    if file is None or not file.exists():
        return None
    try:
        raw = pd.read_excel(file) if file.suffix.lower() in (".xlsx", ".xls") else pd.read_csv(file)
    except Exception as exc:  # openpyxl/pandas raise many types for broken files
        raise DataError(f"{file}: cannot read metadata ({type(exc).__name__}: {exc})") from None
    found: dict[str, str] = {}
    for col in raw.columns:
        key = _clean_header(col)
        for name, aliases in _META_COLUMNS.items():
            if name not in found and any(key.startswith(a) for a in aliases):
                found[name] = col
    if "id" not in found:
        raise DataError(f"{file}: no ID column (columns: {', '.join(map(str, raw.columns))})")
    out = pd.DataFrame(index=pd.Index([], name="patient"))
    ids = pd.to_numeric(raw[found["id"]].astype(str).str.extract(r"(\d+)")[0], errors="coerce")
    keep = ids.notna()
    out = pd.DataFrame({"patient": [f"ID{int(i):03d}" for i in ids[keep]]})
    for name in ("age", "weight", "height"):
        col = raw.loc[keep, found[name]] if name in found else None
        out[name] = (
            pd.to_numeric(col.astype(str).str.extract(r"(-?\d+(?:\.\d+)?)")[0], errors="coerce").values
            if col is not None
            else np.nan
        )
    if "sex" in found:
        sex = raw.loc[keep, found["sex"]].astype(str).str.replace(r"_x[0-9a-fA-F]{4}_", "", regex=True).str.strip()
        out["sex"] = sex.map(
            lambda s: "M" if s[:1] in ("남", "M", "m") else "F" if s[:1] in ("여", "F", "f") else None
        ).values
    else:
        out["sex"] = None
    return out.drop_duplicates("patient").set_index("patient")


# -- hand side ------------------------------------------------------------------------------------


def _side(thumb: float | None, little: float | None) -> str | None:
    """The hand-side rule on the thumb's and the little finger's x centres (None: unknown)."""
    if thumb is None or little is None or thumb == little:
        return None
    return "R" if thumb < little else "L"


def side_from_polygons(polygons: dict[str, np.ndarray]) -> str | None:
    """``"R"`` when the thumb (finger-1..3) lies left of the little finger (finger-16..19) in the image,
    ``"L"`` when right of it, None when the labels do not tell."""

    def mean_x(names):
        xs = [polygons[n][:, 0].mean() for n in names if n in polygons and len(polygons[n])]
        return float(np.mean(xs)) if xs else None

    return _side(mean_x(DIGITS["thumb"]), mean_x(DIGITS["little"]))


def side_from_masks(masks, threshold: float = 0.5) -> str | None:
    """`side_from_polygons` for (29, H, W) masks or probabilities (positive above `threshold`), numpy or
    torch (on any device): a digit's x centre is the mean column of its pixels."""
    import torch

    m = torch.from_numpy(np.ascontiguousarray(masks)) if isinstance(masks, np.ndarray) else masks

    def centre(names):
        cols = (m[[CLASS_INDEX[n] for n in names]] > threshold).any(0).sum(0).double()
        n = cols.sum()
        xs = torch.arange(cols.numel(), device=cols.device, dtype=torch.float64)
        return float((cols * xs).sum() / n) if n > 0 else None

    return _side(centre(DIGITS["thumb"]), centre(DIGITS["little"]))


def hand_side(sample: Sample, polygons: dict[str, np.ndarray] | None = None) -> str:
    """``"R"``, ``"L"`` or ``"unknown"``: from the labels when given, else the ``_L``/``_R`` suffix."""
    side = side_from_polygons(polygons) if polygons else None
    return side or sample.suffix_side or "unknown"
