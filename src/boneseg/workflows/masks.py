"""`boneseg masks`: files a person opens -- per image a 29-layer mask file and a colour overlay with a legend.

From a submission CSV (masks at each image's size: ``--images`` PNG headers, else ``--size``) or from a
``predict --save-probs`` folder (binarised with the threshold rule of `boneseg.probs.binarize`). Per image:

- ``<stem>.npz``: ``mask`` (29, H, W) uint8 0/1 in class order, ``classes``, ``image_name``
  (``np.load(f)["mask"]``; nnU-Net/MONAI users stack or `nibabel`-wrap it in two lines), or with
  ``fmt="tiff"`` ``<stem>.tif``: a 29-page 8-bit TIFF (0/255, page k = class k), which Fiji, napari and
  Pillow open;
- ``<stem>.png``: the masks in class colours on the image (``images``) or on black, at the original size,
  with a legend beside it;
- ``masks.json``: the classes, and per image its files, size and per-class pixel counts.

The folder is written beside `out` and moved into place only when complete (`boneseg.io.publish_folder`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from boneseg.classes import CLASSES
from boneseg.errors import DataError, UsageError
from boneseg.progress import SILENT, Reporter, track

__all__ = ["FORMATS", "MANIFEST", "read_mask_file", "write_masks"]

FORMATS = ("npz", "tiff")
"""Mask file formats: compressed numpy (default) or a multi-page TIFF."""
MANIFEST = "masks.json"


def write_masks(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    size: int = 2048,
    threshold: float | str | os.PathLike | None = None,
    fmt: str = "npz",
    overlays: bool = True,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> Path:
    """Write the mask files (and overlays) of every image of `source` into the folder `out`; returns `out`.

    Args:
        source: a submission CSV or a ``--save-probs`` folder.
        images: a folder of PNGs or a dataset root (its ``test/DCM``): the overlays are drawn on these
            images, and a CSV's masks take each image's own size (read from the PNG header, as ``check
            --images`` does). Every image of `source` must be there.
        size: image side of a CSV without `images`.
        threshold: probabilities only: a number, or a per-class JSON file (see `boneseg.probs.read_thresholds`).
        fmt: ``npz`` or ``tiff`` (see the module docstring).
        overlays: also write the ``<stem>.png`` overlays.

    Raises:
        UsageError: a bad `size`, `fmt`, or a `threshold` given with a CSV.
        DataError: an unreadable source, images missing from `images` or of another size than the
            probabilities, two images sharing a file stem.
        OutputExistsError: `out` exists and `force` is false (checked before any work).
    """
    import shutil

    from boneseg.io import check_not_over_inputs, publish_folder, staging_folder, write_json
    from boneseg.workflows.report import check_out

    if fmt not in FORMATS:
        from boneseg.errors import suggest

        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}{suggest(fmt, FORMATS)}")
    from boneseg.submission import check_image_side

    check_image_side(size)
    out = check_out(Path(out), force)
    check_not_over_inputs(out, [source, images], "--out")
    source = Path(source)
    is_probs = source.is_dir()
    if threshold is not None and not is_probs:
        raise UsageError("--threshold applies to a probability folder, not to a CSV")
    names, masks_of = _probs_source(source, threshold) if is_probs else _csv_source(source, images, size)
    _check_stems(names)
    pictures = _pictures(images, names)
    tmp = staging_folder(out)
    try:
        entries = {}
        for name in track(names, reporter, "masks", "img"):
            masks = masks_of(name)
            entries[name] = _write_one(tmp, name, masks, fmt, pictures[name] if pictures else None, overlays)
        write_json(
            tmp / MANIFEST,
            {
                "format": "boneseg-masks",
                "version": 1,
                "source": str(source),
                "mask_format": fmt,
                "classes": list(CLASSES),
                "images": entries,
            },
        )
        publish_folder(tmp, out, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone once published
    return out


def read_mask_file(path: str | os.PathLike) -> np.ndarray:
    """The (29, H, W) bool masks of a ``.npz`` or ``.tif`` file written by `write_masks`.

    Raises:
        DataError: a missing or unreadable file, or one without 29 layers.
    """
    import cv2

    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                masks = z["mask"] != 0
        else:
            ok, pages = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
            if not ok:
                raise DataError(f"{path}: unreadable TIFF")
            masks = np.stack(pages) != 0
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: unreadable mask file ({exc})") from None
    if masks.ndim != 3 or len(masks) != len(CLASSES):
        raise DataError(f"{path}: expected {len(CLASSES)} layers, got shape {masks.shape}")
    return masks


# -- sources ------------------------------------------------------------------------------------


def _pictures(images: str | os.PathLike | None, names: list[str]) -> dict[str, Path] | None:
    from boneseg.data.layout import image_files

    return image_files(images, names) if images is not None else None


def _csv_source(path: Path, images: str | os.PathLike | None, size: int):
    from boneseg.data.layout import image_shape
    from boneseg.predictions import CsvPredictions

    src = CsvPredictions(path)
    names = sorted(src.images)
    if not names:
        raise DataError(f"{path}: no rows")
    files = _pictures(images, names) or {}
    shapes = {n: image_shape(f) for n, f in files.items()}
    return names, lambda name: src.masks(name, shapes.get(name, (size, size)))[0]


def _probs_source(folder: Path, threshold):
    from boneseg.predictions import ProbPredictions

    src = ProbPredictions(folder, threshold)
    return sorted(src.images), lambda name: src.binarize(src.quantized(name, None))


def _check_stems(names: list[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        stem = Path(name).stem
        if stem in seen:
            raise DataError(f"images {seen[stem]} and {name} would share the mask files {stem}.*")
        seen[stem] = name


# -- one image ----------------------------------------------------------------------------------


def _write_one(folder: Path, name: str, masks: np.ndarray, fmt: str, picture: Path | None, overlays: bool) -> dict:
    import cv2

    from boneseg.plots import overlay_legend, save_png

    stem = Path(name).stem
    h, w = masks.shape[1:]
    layers = masks.astype(np.uint8)
    if fmt == "npz":
        mask_file = f"{stem}.npz"
        with open(folder / mask_file, "wb") as fh:
            np.savez_compressed(fh, mask=layers, classes=np.array(CLASSES), image_name=np.array(name))
    else:
        mask_file = f"{stem}.tif"
        params = [cv2.IMWRITE_TIFF_COMPRESSION, 8]  # deflate
        if not cv2.imwritemulti(str(folder / mask_file), list(layers * np.uint8(255)), params):
            raise DataError(f"cannot write {folder / mask_file} as TIFF")
    entry = {
        "mask": mask_file,
        "height": int(h),
        "width": int(w),
        "area": {c: int(v) for c, v in zip(CLASSES, masks.reshape(len(masks), -1).sum(axis=1))},
    }
    if overlays:
        image = _background(picture, (h, w))
        save_png(overlay_legend(image, masks, title=name if len(name) <= 28 else "classes"), folder / f"{stem}.png")
        entry["overlay"] = f"{stem}.png"
    return entry


def _background(picture: Path | None, shape: tuple[int, int]) -> np.ndarray:
    if picture is None:
        return np.zeros(shape, np.uint8)
    from boneseg.data.layout import read_image

    image = read_image(picture)
    if image.shape != shape:
        raise DataError(f"{picture}: image is {image.shape[1]}x{image.shape[0]}, the masks are {shape[1]}x{shape[0]}")
    return image
