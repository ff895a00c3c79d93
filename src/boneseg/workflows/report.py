"""`boneseg report`: one self-contained HTML page that shows what the predictions do.

The page is static: ``index.html`` (Jinja2 template with the scores inlined as JSON), ``assets/`` (plain
CSS and JS from ``report_assets/``), ``thumbs/`` (gallery JPEGs with the first model's prediction drawn
on), ``full/`` (full-resolution JPEGs) and ``masks/`` (one script per image with the RLEs of every model
and of the labels). Full images and masks load only when an image is opened, as ``<img>`` and
``<script>`` elements: no fetch, no server, nothing from the network, so the folder opens from the file
system and can be zipped and shared. The scores come from `boneseg.workflows.analysis.analyze`.

With the folder of ``predict --save-uncertainty`` (`boneseg.uncertainty`), ``uncertainty/`` holds per image
and map a heat overlay (``NNNN-<map>.png``: the largest value over the 29 classes, transparent where the
prediction is sure, at most `HEAT_SIDE` a side) and the page shows the per-class table of
``uncertainty.csv``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from boneseg.classes import CLASSES, PALETTE
from boneseg.errors import BonesegWarning, DataError, OutputExistsError
from boneseg.io import check_not_over_inputs, publish_folder, staging_folder
from boneseg.progress import SILENT, Reporter, track
from boneseg.workflows.analysis import Analysis, analyze
from boneseg.workflows.audit import read_suspects

__all__ = [
    "AGREEMENT_COLOURS",
    "REPORT_DIR",
    "check_out",
    "THUMB_SIDE",
    "build_report",
    "write_report",
]

ASSETS = Path(__file__).with_name("report_assets")
REPORT_DIR = "report"
"""The report folder inside ``analyze --out`` and ``demo --out``."""
THUMB_SIDE = 256
"""Longest side of a gallery thumbnail in pixels."""
HEAT_SIDE = 1024
"""Longest side of an uncertainty heat overlay in pixels (the page stretches it over the image)."""
AGREEMENT_COLOURS = ((60, 200, 60), (255, 50, 50), (40, 110, 255))
"""(both, only the prediction, only the reference): true positive, false positive, false negative."""


def build_report(
    preds: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    gt: str | os.PathLike | None = None,
    *,
    fold: int | None = None,
    splits: str | os.PathLike | None = None,
    audit: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    uncertainty: str | os.PathLike | None = None,
    size: int = 2048,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
    reporter: Reporter = SILENT,
) -> Path:
    """Score prediction CSVs (see `analyze`) and write the report folder `out`; returns ``out/index.html``.

    Args:
        preds: submission CSVs (the first one's prediction is drawn on the gallery thumbnails).
        gt, fold, splits, size: as for `analyze` (with `gt` the images are its train images).
        audit: a ``boneseg audit`` output folder: its suspects are listed and linked.
        images: without `gt`, where the CSV's images are (a dataset root or a folder of PNGs): each image
            takes the size its PNG header gives (as ``check --images``); without either, the masks are
            drawn on black at `size`² and no ``full/`` images are written.
        uncertainty: a ``predict --save-uncertainty`` folder of the (first) predictions: heat overlays and the
            per-class table (see the module notes).

    Raises:
        OutputExistsError: `out` exists and `force` is false (checked before any work).
        UsageError, DataError: see `analyze`, `read_suspects`; images missing or of another size; an
            uncertainty folder that lacks an image or whose maps have another size.
    """
    check_out(Path(out), force)
    suspects = read_suspects(audit) if audit is not None else None
    if uncertainty is not None:
        from boneseg.uncertainty import read_manifest

        read_manifest(uncertainty)  # not an uncertainty folder: refused before the analysis
    result = analyze(
        preds, gt, fold=fold, splits=splits, size=size, images=images, cache_dir=cache_dir, reporter=reporter
    )
    return write_report(
        result,
        out,
        suspects=suspects,
        images=images,
        uncertainty=uncertainty,
        force=force,
        cache_dir=cache_dir,
        reporter=reporter,
    )


def write_report(
    result: Analysis,
    out: str | os.PathLike,
    *,
    suspects: list[dict] | None = None,
    images: str | os.PathLike | None = None,
    uncertainty: str | os.PathLike | None = None,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
    reporter: Reporter = SILENT,
) -> Path:
    """Write the report of an `Analysis` into the folder `out` (built beside it, then moved into place by
    `boneseg.io.publish_folder`); `uncertainty` as for `build_report`.

    Raises:
        OutputExistsError: `out` exists and `force` is false.
        DataError: an image is missing or its size differs from the one the CSVs were read at; see
            `build_report` for the uncertainty folder.
    """
    out = check_out(Path(out), force)
    check_not_over_inputs(out, [*result.inputs.paths, result.inputs.data, images, uncertainty], "--out")
    import jinja2

    sources = _image_sources(result, images)
    table = _uncertainty_table(result, uncertainty) if uncertainty is not None else None
    tmp = staging_folder(out)
    try:
        for sub in ("assets", "thumbs", "masks", *(("full",) if sources else ()), *(("uncertainty",) if table else ())):
            (tmp / sub).mkdir()
        for name in ("report.css", "report.js"):
            shutil.copyfile(ASSETS / name, tmp / "assets" / name)
        truth = _truth_loader(result, cache_dir)
        for i in track(range(len(result.inputs.images)), reporter, "report images", "img"):
            _write_image(result, i, sources[i] if sources else None, truth, tmp)
            if uncertainty is not None:
                _write_heat(result, i, uncertainty, tmp / "uncertainty")
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(ASSETS), autoescape=True)
        page = _page_data(result, suspects, sources, table)
        if page["suspects"] and page["suspects"]["outside"]:
            warnings.warn(
                f"{page['suspects']['outside']} audit suspect(s) name images outside the report",
                BonesegWarning,
                stacklevel=2,
            )
        data = json.dumps(page, separators=(",", ":"), allow_nan=False)
        html = env.get_template("index.html.j2").render(
            title=", ".join(Path(n).name for n in result.inputs.names),
            images=len(result.inputs.images),
            uncertainty=table is not None,
            data=data.replace("<", "\\u003c"),  # no "</script>" or "<!--" can end or derail the data block
        )
        (tmp / "index.html").write_text(html, encoding="utf-8")
        publish_folder(tmp, out, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone once published
    return out / "index.html"


# -- output folder --------------------------------------------------------------------------------


def check_out(out: Path, force: bool) -> Path:
    """Refuse an existing report folder unless `force` (a file in its place always)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists (use --force to overwrite)")
    return out


# -- images ---------------------------------------------------------------------------------------


def _image_sources(result: Analysis, images: str | os.PathLike | None) -> list[Path] | None:
    """The image file of each evaluated image, or None (no images: masks drawn on black)."""
    inputs = result.inputs
    if inputs.samples is not None:
        return [s.image for s in inputs.samples]
    if images is None:
        return None
    from boneseg.data.layout import image_files

    files = image_files(images, inputs.images)
    return [files[n] for n in inputs.images]


def _truth_loader(result: Analysis, cache_dir: str | os.PathLike | None):
    samples, data = result.inputs.samples, result.inputs.data
    if samples is None or data is None:
        return None
    from boneseg.data.masks import MaskCache, default_cache_dir

    cache = MaskCache(cache_dir or default_cache_dir(data))
    return lambda i: cache.get(samples[i]).masks


def _write_image(result: Analysis, i: int, source: Path | None, truth, folder: Path) -> None:
    """``thumbs/i.jpg``, ``full/i.jpg`` (only with an image) and ``masks/i.js`` of image `i`."""
    import cv2

    from boneseg import rle
    from boneseg.data.layout import read_image
    from boneseg.plots import overlay, overlay_errors

    inputs, name, shape = result.inputs, result.inputs.images[i], result.inputs.shapes[i]
    image = read_image(source) if source is not None else np.zeros(shape, np.uint8)
    if image.shape != tuple(shape):
        raise DataError(f"{source}: image is {image.shape[1]}x{image.shape[0]}, its header said {shape[1]}x{shape[0]}")
    pred = inputs.subs[0].masks(name, shape)
    gt = truth(i) if truth is not None else None
    drawn = overlay_errors(image, pred, gt, AGREEMENT_COLOURS) if gt is not None else overlay(image, pred)
    scale = THUMB_SIDE / max(shape)
    if scale < 1:
        drawn = cv2.resize(
            drawn, (max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale))), interpolation=cv2.INTER_AREA
        )
    stem = f"{i:04d}"
    _write_jpeg(folder / "thumbs" / f"{stem}.jpg", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), 80)
    if source is not None:  # without images the page draws the masks on black itself
        _write_jpeg(folder / "full" / f"{stem}.jpg", image, 90)
    masks = {
        "pred": [s.image_rles(name) for s in inputs.subs],
        "gt": [rle.encode(m) for m in gt] if gt is not None else None,
    }
    (folder / "masks" / f"{stem}.js").write_text(
        f"BonesegReport.masks({i},{json.dumps(masks, separators=(',', ':'))});\n", encoding="utf-8"
    )


def _uncertainty_table(result: Analysis, folder: str | os.PathLike) -> dict:
    """The page's uncertainty data: the maps present and, per map, the (images, 29) table of
    ``uncertainty.csv`` (None for an absent map) in the report's image order."""
    from boneseg.uncertainty import read_manifest, read_table

    names = list(result.inputs.images)
    maps = [str(m) for m in read_manifest(folder).get("maps", ["entropy"])]
    rows = read_table(folder, names)
    return {
        "maps": maps,
        "table": {m: [[None if v is None else round(v, 4) for v in rows[n][m]] for n in names] for m in maps},
    }


def _write_heat(result: Analysis, i: int, folder: str | os.PathLike, out: Path) -> None:
    """``out/NNNN-<map>.png`` of image `i`: per map, the largest value over the classes as an RGBA heat
    overlay (inferno colours, alpha rising with the value: sure pixels are transparent)."""
    import cv2

    from boneseg.uncertainty import load

    name, shape = result.inputs.images[i], tuple(result.inputs.shapes[i])
    for key, stack in load(folder, name).items():
        if stack.shape[1:] != shape:
            raise DataError(
                f"{folder}: {key} map of {name} is {stack.shape[2]}x{stack.shape[1]}, the image is "
                f"{shape[1]}x{shape[0]} (maps of other predictions?)"
            )
        u = stack.max(axis=0)
        scale = HEAT_SIDE / max(shape)
        if scale < 1:
            size = (max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale)))
            u = cv2.resize(u, size, interpolation=cv2.INTER_AREA)
        bgra = cv2.cvtColor(cv2.applyColorMap(u, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2BGRA)
        bgra[..., 3] = np.minimum(255, u.astype(np.uint16) * 2 // 3 + (u > 0) * 64).astype(np.uint8)
        ok, buf = cv2.imencode(".png", bgra)
        if not ok:
            raise DataError(f"cannot encode the {key} heat map of {name} as PNG")
        (out / f"{i:04d}-{key}.png").write_bytes(buf.tobytes())


def _write_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError(f"cannot encode {path} as JPEG")
    path.write_bytes(buf.tobytes())


# -- page data ------------------------------------------------------------------------------------


def _round(values: np.ndarray, digits: int = 4) -> list:
    return np.round(np.asarray(values, np.float64), digits).tolist()


def _page_data(
    result: Analysis, suspects: list[dict] | None, sources: list[Path] | None, uncertainty: dict | None = None
) -> dict:
    """Everything the page draws, as JSON-ready lists (scores rounded to 4 digits)."""
    inputs = result.inputs
    index = {n: i for i, n in enumerate(inputs.images)}
    listed = [dict(s, image=index[s["image"]]) for s in suspects or [] if s["image"] in index]
    data = {
        "classes": list(CLASSES),
        "palette": [list(c) for c in PALETTE],
        "agreement": [list(c) for c in AGREEMENT_COLOURS],
        "models": [Path(n).name for n in inputs.names],
        "paths": list(inputs.names),
        "images": list(inputs.images),
        "shapes": [list(s) for s in inputs.shapes],
        "labels": result.dice is not None,
        "has_images": sources is not None,
        "notes": list(inputs.notes),
        "pred_area": result.pred_area.tolist(),
        "gt_area": None if result.gt_area is None else result.gt_area.tolist(),
        "dice": None if result.dice is None else _round(result.dice),
        "similarity": None,
        "suspects": None,
    }
    if uncertainty is not None:  # only then: a report without maps stays as it was
        data["uncertainty"] = uncertainty
    matrices = result.similarity_matrices()
    if result.similarity is not None and matrices is not None:
        mean, per_class = matrices
        pairwise = result.pairwise_dice()
        assert pairwise is not None  # with the similarity
        data["similarity"] = {
            "mean": _round(mean),
            "per_class": _round(per_class),
            "per_image": _round(pairwise),
        }  # (N, 29) mean pairwise Dice
    if suspects is not None:
        data["suspects"] = {"rows": listed, "outside": len(suspects) - len(listed)}
    return data
