"""Shared plotting helpers: mask overlays, image grids, heat maps and atomic PNG output.

Matplotlib is used through its object API with the Agg canvas only (no pyplot, no global backend
switch), so plotting works headless and in worker processes; figures are released after saving.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from boneseg.classes import PALETTE
from boneseg.io import atomic_path
from boneseg.maskops import bbox

__all__ = [
    "overlay",
    "overlay_legend",
    "legend_panel",
    "overlay_compare",
    "overlay_errors",
    "save_png",
    "new_figure",
    "image_grid",
    "heatmap",
    "PRED_COLOUR",
    "GT_COLOUR",
]

PRED_COLOUR = (255, 60, 60)
"""Prediction colour in `overlay_compare` (red); overlap with the truth mixes to yellow."""
GT_COLOUR = (60, 220, 60)
"""Ground-truth colour in `overlay_compare` (green)."""


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")


def _blend(image: np.ndarray, layers: Sequence[tuple[np.ndarray, tuple[int, int, int]]], alpha: float) -> np.ndarray:
    """Alpha-blend coloured masks onto an image; where masks overlap their colours are averaged."""
    out = _rgb(image)
    h, w = out.shape[:2]
    colour = np.zeros((h, w, 3), np.float32)
    count = np.zeros((h, w), np.uint8)
    for mask, rgb in layers:
        mask = np.asarray(mask, bool)
        if mask.shape != (h, w):
            raise ValueError(f"mask shape {mask.shape} does not match the image {(h, w)}")
        box = bbox(mask)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        m = mask[y0:y1, x0:x1]
        colour[y0:y1, x0:x1][m] += np.asarray(rgb, np.float32)
        count[y0:y1, x0:x1] += m
    hit = count > 0
    mixed = colour[hit] / count[hit, None]
    out[hit] = np.clip((1 - alpha) * out[hit] + alpha * mixed, 0, 255).astype(np.uint8)
    return out


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Colour each class mask onto a grayscale (or RGB) uint8 image with `boneseg.classes.PALETTE`.

    Args:
        image: (H, W) or (H, W, 3) uint8.
        masks: (C, H, W) boolean-like, C <= 29 in class order (a single (H, W) mask uses the first colour).
        alpha: opacity of the colours.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if len(masks) > len(PALETTE):
        raise ValueError(f"at most {len(PALETTE)} masks, got {len(masks)}")
    return _blend(image, [(m, PALETTE[i]) for i, m in enumerate(masks)], alpha)


def legend_panel(
    entries: Sequence[tuple[str, tuple[int, int, int], bool]], height: int, title: str = "classes"
) -> np.ndarray:
    """A dark (H', W, 3) uint8 legend: one row per ``(name, rgb, present)``, a colour swatch then the name
    (grey and marked "none" where `present` is false). Rows are sized so that all of them fit in `height`
    pixels, but never smaller than 18 px, so H' may exceed `height`."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    row = max(18, height // (len(entries) + 2))
    scale = 0.55 * row / 22
    thick = max(1, round(row / 28))
    labels = [name if present else f"{name} (none)" for name, _, present in entries]
    text_w = max([cv2.getTextSize(t, font, scale, thick)[0][0] for t in [title, *labels]], default=0)
    width = int(row * 1.6 + text_w + row * 0.6)
    panel = np.full((max(height, row * (len(entries) + 2)), width, 3), 24, np.uint8)
    base = int(row * 0.72)
    cv2.putText(panel, title, (int(row * 0.4), base), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    for k, ((_, rgb, present), label) in enumerate(zip(entries, labels)):
        y = (k + 1) * row + row // 4
        side = int(row * 0.7)
        x0 = int(row * 0.4)
        if present:
            cv2.rectangle(panel, (x0, y + (row - side) // 2), (x0 + side, y + (row + side) // 2), rgb, -1)
        else:
            cv2.rectangle(panel, (x0, y + (row - side) // 2), (x0 + side, y + (row + side) // 2), rgb, thick)
        colour = (255, 255, 255) if present else (140, 140, 140)
        cv2.putText(panel, label, (int(row * 1.6), y + base), font, scale, colour, thick, cv2.LINE_AA)
    return panel


def overlay_legend(
    image: np.ndarray,
    masks: np.ndarray,
    names: Sequence[str] | None = None,
    alpha: float = 0.45,
    min_side: int = 0,
    title: str = "classes",
) -> np.ndarray:
    """`overlay` with a legend of the class colours beside it (classes with an empty mask greyed).

    The image keeps its size unless its longer side is below `min_side`: then it is enlarged by a whole
    factor (masks nearest-neighbour, the image bilinear) so that the picture is at least that big.

    Returns:
        (H', W + legend width, 3) uint8 RGB; below the image is black where the legend is taller.
    """
    from boneseg.classes import CLASSES

    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    names = list(CLASSES if names is None else names)[: len(masks)]
    h, w = masks.shape[1:]
    factor = -(-min_side // max(h, w)) if min_side > max(h, w) else 1
    if factor > 1:
        image = cv2.resize(np.asarray(image), (w * factor, h * factor), interpolation=cv2.INTER_LINEAR)
        masks = np.asarray(masks, bool).repeat(factor, axis=1).repeat(factor, axis=2)
    drawn = overlay(image, masks, alpha)
    present = [bbox(m) is not None for m in masks]
    panel = legend_panel(list(zip(names, PALETTE, present)), drawn.shape[0], title)
    out = np.zeros((max(drawn.shape[0], panel.shape[0]), drawn.shape[1] + panel.shape[1], 3), np.uint8)
    out[: drawn.shape[0], : drawn.shape[1]] = drawn
    out[: panel.shape[0], drawn.shape[1] :] = panel
    return out


def overlay_compare(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Prediction (red) against truth (green) on an image; agreement shows yellow.

    `pred` and `gt` are (H, W) masks or (C, H, W) stacks (any class counts).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    pred = np.asarray(pred.any(axis=0)) if pred.ndim == 3 else pred
    gt = np.asarray(gt.any(axis=0)) if gt.ndim == 3 else gt
    both = pred & gt
    return _blend(image, [(pred & ~both, PRED_COLOUR), (gt & ~both, GT_COLOUR), (both, (255, 230, 60))], alpha)


def overlay_errors(
    image: np.ndarray, pred: np.ndarray, ref: np.ndarray, colours: Sequence[tuple[int, int, int]], alpha: float = 0.5
) -> np.ndarray:
    """Per-class agreement of (C, H, W) `pred` with `ref` on an image, coloured ``colours`` = (both, only
    pred, only ref): a pixel one class gets right and another wrong shows the mix."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    return _blend(
        image,
        [
            ((pred & ref).any(axis=0), colours[0]),
            ((pred & ~ref).any(axis=0), colours[1]),
            ((ref & ~pred).any(axis=0), colours[2]),
        ],
        alpha,
    )


def new_figure(width: float = 8.0, height: float = 6.0, dpi: int = 100):
    """A matplotlib `Figure` on the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(obj, path: str | os.PathLike, force: bool = False, dpi: int | None = None) -> Path:
    """Write a matplotlib figure or an RGB/grayscale uint8 array as PNG, atomically.

    A figure is cleared and released after saving. Refuses an existing file unless `force`.
    """
    path = Path(path)
    with atomic_path(path, force) as tmp:
        if isinstance(obj, np.ndarray):
            array = obj if obj.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(obj), cv2.COLOR_RGB2BGR)
            ok, data = cv2.imencode(".png", array)
            if not ok:
                raise ValueError(f"cannot encode an array of shape {obj.shape} as PNG")
            tmp.write_bytes(data.tobytes())
        else:
            try:
                obj.savefig(tmp, format="png", dpi=dpi or obj.dpi, bbox_inches="tight")
            finally:
                obj.clear()
                pyplot = sys.modules.get("matplotlib.pyplot")
                if pyplot is not None:  # a figure made with pyplot: drop its registry reference too
                    pyplot.close(obj)
    return path


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str] = (),
    columns: int = 4,
    tile: float = 3.5,
    suptitle: str | None = None,
):
    """A figure showing RGB/grayscale images in a grid with optional titles."""
    n = max(len(images), 1)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig = new_figure(tile * columns, tile * rows + (0.4 if suptitle else 0))
    for i in range(rows * columns):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.axis("off")
        if i < len(images):
            img = images[i]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="antialiased")
            if i < len(titles):
                ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def heatmap(
    matrix: np.ndarray,
    labels: Sequence[str],
    title: str,
    colour_label: str = "",
    col_labels: Sequence[str] | None = None,
    log: bool = False,
    annotate: bool = False,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
):
    """A labelled heat map of a 2-D matrix (log colour scale for counts spanning decades)."""
    from matplotlib.colors import LogNorm

    matrix = np.asarray(matrix, np.float64)
    col_labels = list(labels) if col_labels is None else list(col_labels)
    side = max(4.0, 0.28 * max(matrix.shape) + 2)
    fig = new_figure(side + 1.5, side)
    ax = fig.add_subplot(1, 1, 1)
    if log:
        positive = matrix[matrix > 0]
        shown = np.where(matrix > 0, matrix, np.nan)
        norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
        im = ax.imshow(shown, cmap=cmap, norm=norm)
    else:
        im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title)
    if annotate:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(im, ax=ax, label=colour_label, shrink=0.8)
    fig.tight_layout()
    return fig
