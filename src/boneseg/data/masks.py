"""Polygon labels -> 29-channel multilabel masks, and the cache that makes it a one-time cost.

The cache stores, per sample and size, the 8-bit image and each class's mask cropped to its bounding
box and bit-packed (a few hundred KB per 2048² sample instead of re-reading a PNG, parsing JSON and
filling 29 polygons every epoch). Entries are rebuilt when the image or label file changes and are
written atomically, so data-loader workers and DDP ranks can share one cache folder.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from boneseg.classes import CLASS_INDEX, CLASSES, NUM_CLASSES
from boneseg.data.layout import Sample, read_image, resize_image, side_from_polygons
from boneseg.data.teacher import Teacher
from boneseg.errors import DataError, quote, suggest
from boneseg.io import atomic_open, read_json
from boneseg.maskops import bbox

CACHE_VERSION = 4
"""Part of every entry's fingerprint: raised when the rules a label passes change (4: labels drawn for a smaller
image are refused), so no entry built under older rules skips the new checks."""
DIST_CLIP = 16
"""Default clip (pixels at the cached size) of the signed distance maps."""
DIST_ZERO = 128
"""The uint8 code of distance 0 (the boundary) in quantised distance maps."""
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly when polygons are scaled
MAX_COORD = 1 << 20
"""Label coordinates and stated image sizes must be below this (no radiograph is a million pixels wide;
larger values would overflow the integer polygon fill)."""


@dataclass
class Label:
    """A parsed label file: one polygon (N x 2 int32 [x, y]) per class present."""

    path: Path
    polygons: dict[str, np.ndarray]
    problems: list[str] = field(default_factory=list)

    @property
    def side(self) -> str | None:
        return side_from_polygons(self.polygons)


def load_label(path: str | os.PathLike, shape: tuple[int, int] | None = None, strict: bool = True) -> Label:
    """Parse a ``poly_seg`` label JSON.

    Raises `DataError` (naming the file) for malformed JSON, a missing ``annotations`` list, unknown class
    names, duplicate classes, polygons with fewer than 3 points, non-numeric points, and (given `shape` =
    (H, W)) points outside the image, a size in the file (``metadata``, see `_SIZE_KEYS`) other than
    `shape`, or polygons that all lie in the image's top-left quarter (`drawn_smaller`). Missing classes
    are not errors: they are listed in ``problems`` and give empty masks. With ``strict=False`` the fatal
    problems are collected in ``problems`` too and the offending polygons dropped.
    """
    path = Path(path)
    doc = read_json(path)
    anns = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(anns, list):
        raise DataError(f"{path}: no 'annotations' list")
    polygons: dict[str, np.ndarray] = {}
    fatal: list[str] = []
    declared = _declared_size(doc)
    if shape is not None and declared is not None and declared != tuple(shape):
        fatal.append(f"label is for a {declared[1]}x{declared[0]} image but the image is {shape[1]}x{shape[0]}")
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            fatal.append(f"annotation {i} is not an object")
            continue
        name, kind = ann.get("label"), ann.get("type", "poly_seg")
        if not isinstance(name, str):
            fatal.append(f"annotation {i}: 'label' is {_json_type(name)}, not a class name")
            continue
        if name not in CLASS_INDEX:
            fatal.append(f"annotation {i}: unknown class {quote(name)}{suggest(name, CLASSES, 3)}")
            continue
        if kind != "poly_seg":
            fatal.append(f"class {name!r}: annotation type {quote(kind)}, expected 'poly_seg'")
            continue
        if name in polygons:
            fatal.append(f"duplicate polygon for class {name!r}")
            continue
        raw = ann.get("points")
        if not isinstance(raw, list) or any(isinstance(v, bool) for p in raw if isinstance(p, list) for v in p):
            fatal.append(f"class {name!r}: points must be a list of [x, y] pairs")
            continue
        try:
            pts = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            fatal.append(f"class {name!r}: points are not numbers")
            continue
        if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
            fatal.append(f"class {name!r}: points must be a list of [x, y] pairs")
            continue
        if (np.abs(pts) >= MAX_COORD).any():
            fatal.append(f"class {name!r}: points beyond {MAX_COORD} pixels")
            continue
        if len(pts) < 3:
            fatal.append(f"class {name!r}: polygon has {len(pts)} point(s), needs at least 3")
            continue
        if shape is not None:
            h, w = shape
            if (pts < 0).any() or (pts[:, 0] >= w).any() or (pts[:, 1] >= h).any():
                fatal.append(f"class {name!r}: points outside the {w}x{h} image")
                continue
        polygons[name] = np.round(pts).astype(np.int32)
    if shape is not None and drawn_smaller(polygons, shape):
        fatal.append(
            f"every polygon lies in the top-left quarter of the {shape[1]}x{shape[0]} image "
            "(labels for a smaller image?)"
        )
    if fatal and strict:
        raise DataError(f"{path}: {fatal[0]}" + (f" (and {len(fatal) - 1} more problem(s))" if len(fatal) > 1 else ""))
    problems = fatal + [f"missing class {c!r}" for c in CLASSES if c not in polygons]
    return Label(path, polygons, problems)


def drawn_smaller(polygons: dict[str, np.ndarray], shape: tuple[int, int]) -> bool:
    """True when three or more polygons all lie within the top-left quarter of an image of `shape` (H, W): a
    hand fills more of its frame than that, so the labels were likely drawn on a smaller image."""
    if len(polygons) < 3:
        return False
    top = np.concatenate(list(polygons.values())).max(axis=0)
    return bool(top[0] < shape[1] / 2 and top[1] < shape[0] / 2)


def _json_type(value: object) -> str:
    """How a JSON value's type reads in a message (``a list``, ``null``, …)."""
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


_SIZE_KEYS = (
    ("metadata", "height", "width"),
    (None, "imageHeight", "imageWidth"),
    (None, "height", "width"),
    ("image", "height", "width"),
)
"""Where label files state their image's size: ``metadata`` (competition, synth, pseudo), LabelMe's
``imageHeight``/``imageWidth``, top-level or ``image`` ``height``/``width``."""


def _declared_size(doc: dict) -> tuple[int, int] | None:
    """The (H, W) a label document says its image has, None when it does not say."""
    for parent, hk, wk in _SIZE_KEYS:
        where = doc.get(parent) if parent else doc
        if not isinstance(where, dict):
            continue
        h, w = where.get(hk, 0), where.get(wk, 0)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < MAX_COORD for v in (h, w)):
            return int(h), int(w)
    return None


def rasterize(
    polygons: dict[str, np.ndarray], shape: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Fill each class polygon into its own channel: (29, H, W) bool, overlaps kept.

    `scale` = (sx, sy) maps label coordinates to `shape` (e.g. 2048 -> 512 labels at 0.25), with
    sub-pixel precision.
    """
    h, w = shape
    masks = np.zeros((NUM_CLASSES, h, w), np.uint8)
    sx, sy = scale
    factor = np.array([sx, sy]) * (1 << _SHIFT)
    for name, pts in polygons.items():
        fixed = np.round((pts + 0.5) * factor - 0.5 * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(masks[CLASS_INDEX[name]], [fixed.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return masks.view(np.bool_)


# -- cache ----------------------------------------------------------------------------------------


def default_cache_dir(root: str | os.PathLike) -> Path:
    """``DATA/.boneseg-cache`` when DATA is writable, else ``~/.cache/boneseg/<hash of DATA>``."""
    root = Path(root).resolve()
    if os.access(root, os.W_OK):
        return root / ".boneseg-cache"
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "boneseg" / digest


def _fingerprint(sample: Sample, size: int | None) -> str:
    parts = [f"v{CACHE_VERSION}", str(size)]
    for p in (sample.image, sample.label):
        if p is None:
            parts.append("-")
            continue
        try:
            st = p.stat()
        except FileNotFoundError:
            raise DataError(f"{p}: file not found") from None
        parts.append(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}")  # ctime: also copies that keep mtime
    return "|".join(parts)


def pack_masks(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes (C, 4: y0, y1, x0, x1) and the concatenated bit-packed crops of (C, H, W) masks."""
    boxes = np.zeros((len(masks), 4), np.int32)
    chunks = []
    for c, m in enumerate(masks):
        box = bbox(m)
        if box is None:
            continue
        y0, y1, x0, x1 = boxes[c] = box
        chunks.append(np.packbits(m[y0:y1, x0:x1], axis=None))
    bits = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return boxes, bits


def unpack_masks(boxes: np.ndarray, bits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of `pack_masks`: (C, H, W) bool."""
    out = np.zeros((len(boxes), *shape), np.bool_)
    offset = 0
    for c, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        n = (y1 - y0) * (x1 - x0)
        if n == 0:
            continue
        nbytes = (n + 7) // 8
        crop = np.unpackbits(bits[offset : offset + nbytes], count=n).reshape(y1 - y0, x1 - x0)
        out[c, y0:y1, x0:x1] = crop.view(np.bool_)
        offset += nbytes
    return out


@dataclass
class CachedSample:
    """What the cache holds for one sample at one size."""

    image: np.ndarray  # (H, W) uint8
    masks: np.ndarray | None  # (29, H, W) bool, None for unlabelled samples
    side: str  # "L", "R" or "unknown"
    original_shape: tuple[int, int]


class MaskCache:
    """Images and masks per (sample, size), built once and reused across epochs, workers and ranks."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.dir = Path(cache_dir)

    def _entry(self, sample: Sample, size: int | None) -> Path:
        stem = sample.name.replace("/", "__").rsplit(".", 1)[0]
        return self.dir / f"{stem}@{size or 'full'}.npz"

    def get(self, sample: Sample, size: int | None = None) -> CachedSample:
        """The sample resized to `size`² (None: original size), from the cache or built and stored."""
        entry, fp = self._entry(sample, size), _fingerprint(sample, size)
        cached = _load_entry(
            entry,
            fp,
            lambda z: CachedSample(
                z["image"],
                unpack_masks(z["boxes"], z["bits"], z["image"].shape) if z["labelled"] else None,
                str(z["side"]),
                tuple(z["original_shape"].tolist()),
            ),
        )
        if cached is not None:
            return cached
        item = self._build(sample, size)
        boxes, bits = (
            pack_masks(item.masks) if item.masks is not None else (np.zeros((0, 4), np.int32), np.zeros(0, np.uint8))
        )
        self._store(
            entry,
            fp,
            np.savez,
            image=item.image,
            boxes=boxes,
            bits=bits,
            labelled=np.array(item.masks is not None),
            side=np.array(item.side),
            original_shape=np.array(item.original_shape),
        )
        return item

    def _build(self, sample: Sample, size: int | None) -> CachedSample:
        """Build an entry (subclasses such as `boneseg.data.wrist.WristCache` change what is stored)."""
        return build_sample(sample, size)

    def fresh(self, sample: Sample, size: int | None = None) -> bool:
        """True when the entry of `sample` at `size` exists and matches the current image and label files
        (reads only its fingerprint)."""
        fp = _fingerprint(sample, size)
        return bool(_load_entry(self._entry(sample, size), fp, lambda z: True))

    def distance(self, sample: Sample, size: int | None = None, clip: int = DIST_CLIP) -> np.ndarray:
        """The signed, clipped distance maps of the sample's masks at `size` (see `distance_maps`),
        computed once and stored next to the mask entry."""
        entry = self._entry(sample, size)
        entry = entry.with_name(entry.name[: -len(".npz")] + f".dist{clip}.npz")
        fp = _fingerprint(sample, size) + f"|{type(self).__name__}"
        dist = _load_entry(entry, fp, lambda z: z["dist"])
        if dist is not None:
            return dist
        masks = self.get(sample, size).masks
        if masks is None:
            raise DataError(f"{sample.image}: no labels, so no distance maps")
        dist = distance_maps(masks, clip)
        self._store(entry, fp, np.savez_compressed, dist=dist)
        return dist

    def soft_target(self, sample: Sample, size: int | None, teacher: Teacher) -> np.ndarray:
        """The teacher's (29, H, W) uint8 target of `sample` at `size` (`Teacher.target`): read from the
        teacher's folders once, then stored next to the mask entry (one entry per teacher, rebuilt when
        the image or a probability file changes)."""
        entry = self._entry(sample, size)
        key = teacher.fingerprint(sample.image_name)
        entry = entry.with_name(
            entry.name[: -len(".npz")] + f".teacher-{hashlib.sha1(key.encode()).hexdigest()[:10]}.npz"
        )
        fp = _fingerprint(sample, size) + "|" + key
        q = _load_entry(entry, fp, lambda z: z["probs"])
        if q is not None:
            return q
        q = teacher.target(sample.image_name, size)
        self._store(entry, fp, np.savez_compressed, probs=q)
        return q

    def _store(self, entry: Path, fp: str, save, **arrays: np.ndarray) -> None:
        """Write `arrays` and their fingerprint to `entry` with `save` (``np.savez``/``np.savez_compressed``),
        atomically; a read-only or full cache only costs speed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_open(entry, "wb", force=True) as fh:
                save(fh, fingerprint=np.array(fp), **arrays)
        except (OSError, DataError):
            pass


def _load_entry(entry: Path, fp: str, read: Callable):
    """`read(arrays)` of the cache file `entry` when its fingerprint is `fp`; None when it is missing,
    stale or unreadable (then the caller builds it again)."""
    try:
        with np.load(entry, allow_pickle=False) as z:
            if str(z["fingerprint"]) == fp:
                return read(z)
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error):
        pass  # missing, truncated or corrupt: rebuilt by the caller
    return None


def build_sample(sample: Sample, size: int | None = None) -> CachedSample:
    """Read and (optionally) resize a sample's image and rasterise its labels, without the cache."""
    image = read_image(sample.image)
    h, w = image.shape
    masks, side = None, sample.suffix_side or "unknown"
    if sample.label is not None:
        label = load_label(sample.label, (h, w))
        side = label.side or side
    if size is not None:
        image = resize_image(image, (size, size))
    if sample.label is not None:
        out_h, out_w = image.shape
        masks = rasterize(label.polygons, (out_h, out_w), (out_w / w, out_h / h))
    return CachedSample(image, masks, side, (h, w))


def distance_maps(masks: np.ndarray, clip: int = DIST_CLIP) -> np.ndarray:
    """Signed distance to each class's boundary, clipped to ``[-clip, clip]`` and stored as uint8.

    Positive inside the mask (distance to the nearest background pixel), negative outside (minus the
    distance to the nearest mask pixel); code ``u = DIST_ZERO + round(d)``, so decode with
    ``clip(u - DIST_ZERO, -clip, clip)`` (0, the padding of geometric augmentations, decodes to -clip: far
    outside). An empty class is -clip everywhere.
    """
    if not 1 <= clip <= 127:
        raise ValueError(f"distance clip must be in 1..127, got {clip}")
    out = np.empty(masks.shape, np.uint8)
    for c, m in enumerate(masks):
        m8 = np.ascontiguousarray(m, dtype=np.uint8)
        if not m8.any():
            out[c] = DIST_ZERO - clip
            continue
        inside = cv2.distanceTransform(m8, cv2.DIST_L2, 3)
        outside = cv2.distanceTransform(1 - m8, cv2.DIST_L2, 3)
        out[c] = np.clip(np.rint(inside - outside), -clip, clip).astype(np.int16) + DIST_ZERO
    return out


def decode_distance(codes, clip: int = DIST_CLIP):
    """uint8 codes (numpy or torch) -> signed distances in pixels (float32 / the tensor's float)."""
    if isinstance(codes, np.ndarray):
        return np.clip(codes.astype(np.float32) - DIST_ZERO, -clip, clip)
    return (codes.float() - DIST_ZERO).clamp_(-clip, clip)
