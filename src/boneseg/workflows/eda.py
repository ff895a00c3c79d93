"""Dataset report (``boneseg eda``): counts, image statistics, class areas, overlaps, metadata, label problems.

One pass over the labelled images through the mask cache (a second run reads only cached, bit-packed
masks). Per image the work follows the bones, not the 2048² frame: areas and the 406 class-pair overlaps
are counted inside polygon bounding boxes (pairs whose boxes do not meet are skipped), and polygon
self-intersection is a vectorised segment-crossing test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from boneseg.classes import CLASS_INDEX, CLASSES, NUM_CLASSES
from boneseg.errors import BonesegError, DataError
from boneseg.progress import SILENT, Reporter, track

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "EdaReport",
    "run_eda",
    "write_eda",
    "self_intersections",
    "polygon_boxes",
    "overlap_matrix",
    "EDA_FILES",
    "TINY_FRACTION",
]

EDA_FILES = {
    "json": "eda.json",
    "areas": "class_areas.png",
    "overlaps": "overlap_heatmap.png",
    "samples": "samples.png",
    "metadata": "metadata.png",
    "intensity": "intensity.png",
}
TINY_FRACTION = 0.1
"""A label whose filled area is below this fraction of its class's median area is reported as tiny."""


# -- geometry -------------------------------------------------------------------------------------


def self_intersections(points: np.ndarray, chunk: int = 1 << 20) -> int:
    """Number of pairs of polygon edges that cross each other properly (0 for a simple polygon).

    Edges sharing a vertex, and points merely touching, do not count; repeated consecutive points are
    ignored. All edge pairs are tested at once (in chunks of about `chunk` pairs).
    """
    p = np.asarray(points, np.float64).reshape(-1, 2)
    if len(p) > 1:
        keep = np.any(p != np.roll(p, 1, axis=0), axis=1)
        p = p[keep] if keep.any() else p[:1]
    n = len(p)
    if n < 4:
        return 0
    a, d = p, np.roll(p, -1, axis=0) - p  # edge i runs from a[i] to a[i] + d[i]

    def cross(u, v):
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    found, rows = 0, max(1, chunk // n)
    for i0 in range(0, n, rows):
        ai, di = a[i0 : i0 + rows, None], d[i0 : i0 + rows, None]
        s1, s2 = cross(di, a[None] - ai), cross(di, a[None] + d[None] - ai)
        s3, s4 = cross(d[None], ai - a[None]), cross(d[None], ai + di - a[None])
        crossing = (s1 * s2 < 0) & (s3 * s4 < 0)
        j = np.arange(n)[None]
        i = np.arange(i0, min(i0 + rows, n))[:, None]
        found += int(np.count_nonzero(crossing & (j > i)))
    return found


def polygon_boxes(polygons: dict[str, np.ndarray], shape: tuple[int, int], margin: int = 1) -> np.ndarray:
    """(29, 4) boxes y0, y1, x0, x1 around each class polygon (all zero when absent), clipped to `shape`."""
    h, w = shape
    boxes = np.zeros((NUM_CLASSES, 4), np.int64)
    for name, pts in polygons.items():
        x0, y0 = pts.min(axis=0) - margin
        x1, y1 = pts.max(axis=0) + 1 + margin
        boxes[CLASS_INDEX[name]] = (max(0, y0), min(h, y1), max(0, x0), min(w, x1))
    return boxes


def overlap_matrix(masks: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Areas (29,) and pairwise intersections (29, 29) of masks, counted inside their boxes only."""
    areas = np.array(
        [np.count_nonzero(m[y0:y1, x0:x1]) for m, (y0, y1, x0, x1) in zip(masks, boxes.tolist())], np.int64
    )
    inter = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    y0, y1, x0, x1 = boxes.T
    top, bottom = np.maximum(y0[:, None], y0[None]), np.minimum(y1[:, None], y1[None])
    left, right = np.maximum(x0[:, None], x0[None]), np.minimum(x1[:, None], x1[None])
    meet = (top < bottom) & (left < right) & (areas[:, None] > 0) & (areas[None] > 0)
    for i, j in zip(*np.nonzero(np.triu(meet, 1))):
        t, b, lo, hi = top[i, j], bottom[i, j], left[i, j], right[i, j]
        inter[i, j] = inter[j, i] = np.count_nonzero(masks[i, t:b, lo:hi] & masks[j, t:b, lo:hi])
    return areas, inter


# -- the report -----------------------------------------------------------------------------------


@dataclass
class EdaReport:
    """What `run_eda` measured; `to_json()` gives the stable JSON form (docs/eda.md)."""

    root: Path
    images: list[dict] = field(default_factory=list)  # one record per labelled train image
    test_images: list[dict] = field(default_factory=list)
    areas: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_CLASSES), np.int64))  # (N, 29) filled pixels
    overlap_sum: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    overlap_images: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    overlap_max: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    histogram: dict[str, np.ndarray] = field(default_factory=dict)  # split -> 256-bin intensity counts
    problems: list[dict] = field(default_factory=list)
    meta: pd.DataFrame | None = None
    sample_names: list[str] = field(default_factory=list)  # images shown in samples.png
    present: np.ndarray = field(
        default_factory=lambda: np.zeros((0, NUM_CLASSES), bool)
    )  # (N, 29) class polygon present

    def class_areas(self) -> dict:
        out = {}
        for c, name in enumerate(CLASSES):
            a = self.areas[self.present[:, c], c]
            stats: dict[str, float] = {"count": int(a.size), "missing": int(len(self.images) - a.size)}
            if a.size:
                q = np.percentile(a, [5, 50, 95])
                stats.update(
                    mean=float(a.mean()),
                    std=float(a.std()),
                    min=int(a.min()),
                    p5=float(q[0]),
                    median=float(q[1]),
                    p95=float(q[2]),
                    max=int(a.max()),
                )
            out[name] = stats
        return out

    def overlap_pairs(self) -> list[dict]:
        n = max(len(self.images), 1)
        rows = [
            {
                "a": CLASSES[i],
                "b": CLASSES[j],
                "images": int(self.overlap_images[i, j]),
                "mean_px": float(self.overlap_sum[i, j] / self.overlap_images[i, j]),
                "mean_px_all": float(self.overlap_sum[i, j] / n),
                "max_px": int(self.overlap_max[i, j]),
            }
            for i, j in zip(*np.nonzero(np.triu(self.overlap_images, 1)))
        ]
        return sorted(rows, key=lambda r: -r["mean_px_all"])

    def to_json(self) -> dict:
        sides = {"L": 0, "R": 0, "unknown": 0}
        for r in self.images:
            sides[r["side"]] = sides.get(r["side"], 0) + 1
        problem_counts: dict[str, int] = {}
        for p in self.problems:
            problem_counts[p["kind"]] = problem_counts.get(p["kind"], 0) + 1
        return {
            "data": str(self.root),
            "counts": {
                "patients": len({r["patient"] for r in self.images}),
                "images": len(self.images),
                "test_patients": len({r["patient"] for r in self.test_images}),
                "test_images": len(self.test_images),
                "sides": sides,
            },
            "image_sizes": {"train": _size_counts(self.images), "test": _size_counts(self.test_images)},
            "intensity": {
                split: _histogram_stats(h, list(self.images if split == "train" else self.test_images))
                for split, h in self.histogram.items()
            },
            "class_areas": self.class_areas(),
            "overlaps": self.overlap_pairs(),
            "metadata": _meta_summary(
                self.meta, {r["patient"] for r in self.images}, {r["patient"] for r in self.test_images}
            ),
            "problems": {"counts": problem_counts, "items": self.problems},
            "images": self.images,
            "test_images": self.test_images,
        }


def _size_counts(records: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        key = f"{r['width']}x{r['height']}"
        out[key] = out.get(key, 0) + 1
    return out


def _histogram_stats(hist: np.ndarray, records: list[dict]) -> dict:
    total = hist.sum()
    if not total:
        return {}
    cdf = np.cumsum(hist) / total
    pct = {f"p{q}": int(np.searchsorted(cdf, q / 100)) for q in (1, 5, 50, 95, 99)}
    means = np.array([r["mean"] for r in records])
    return {
        **_mean_std(hist),
        **pct,
        "image_mean": {"min": float(means.min()), "mean": float(means.mean()), "max": float(means.max())},
        "histogram": hist.astype(int).tolist(),
    }


def _meta_summary(meta, train_patients: set[str], test_patients: set[str]) -> dict | None:
    if meta is None:
        return None
    out: dict[str, object] = {
        "patients": int(len(meta)),
        "train_patients_with_meta": len(train_patients & set(meta.index)),
        "test_patients_with_meta": len(test_patients & set(meta.index)),
    }
    for col in ("age", "height", "weight"):
        v = meta[col].dropna().astype(float)
        out[col] = {
            "count": int(v.size),
            **(
                {"mean": float(v.mean()), "std": float(v.std(ddof=0)), "min": float(v.min()), "max": float(v.max())}
                if v.size
                else {}
            ),
        }
    sex = meta["sex"].fillna("unknown").value_counts()
    out["sex"] = {str(k): int(v) for k, v in sex.items()}
    return out


def _problem_kind(text: str) -> str:
    if text.startswith("missing class"):
        return "missing_class"
    if "outside the" in text:
        return "out_of_image"
    if text.startswith("label is for a"):
        return "size_mismatch"
    if text.startswith("every polygon lies in the top-left quarter"):
        return "wrong_scale"
    return "invalid_annotation"


def _class_of(text: str) -> str | None:
    for quote in ("'", '"'):
        for part in text.split(quote)[1::2]:
            if part in CLASS_INDEX:
                return part
    return None


def run_eda(
    root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    show: int = 4,
    reporter: Reporter = SILENT,
    exclude: str | os.PathLike | None = None,
) -> EdaReport:
    """Measure a dataset in the competition layout.

    Args:
        root: dataset folder (``train/DCM``, ``train/outputs_json``, optional ``test/DCM``, ``meta_data.xlsx``).
        cache_dir: mask cache folder (default: `boneseg.data.masks.default_cache_dir`).
        show: how many images `write_eda` overlays in ``samples.png``.
        reporter: its progress (`boneseg.progress`).
        exclude: a list of train images to leave out (`boneseg.data.exclude`, e.g. audit's suspects.csv).

    Raises:
        DataError: no train images, images without labels, an unreadable metadata file. Problems inside
            label files (bad polygons, missing classes, points outside the image) are reported, not raised.
    """
    from boneseg.data.exclude import exclude as leave_out
    from boneseg.data.layout import (
        discover,
        hand_side,
        png_shape,
        read_image,
        read_meta,
    )
    from boneseg.data.masks import MaskCache, default_cache_dir, load_label, rasterize

    root = Path(root)
    samples = leave_out(discover(root, "train", skip_bad=False), exclude)
    cache = MaskCache(cache_dir or default_cache_dir(root))
    report = EdaReport(root)
    report.histogram["train"] = np.zeros(256, np.int64)
    areas, present = [], []
    for sample in track(samples, reporter, "train images", "img"):
        assert sample.label is not None  # discover: every train image has one
        shape = png_shape(sample.image)
        try:
            label = load_label(sample.label, shape, strict=False) if shape else None
        except BonesegError as exc:  # malformed JSON: one problem among the others, not the end of the report
            report.problems.append({"image": sample.name, "class": None, "kind": "unreadable", "detail": str(exc)})
            continue
        fatal = label is None or any(_problem_kind(p) != "missing_class" for p in label.problems)
        try:
            if fatal:  # the cache refuses broken labels: rasterise what is usable ourselves
                image = read_image(sample.image)
                label = load_label(sample.label, image.shape, strict=False)
                masks = rasterize(label.polygons, image.shape)
            else:
                assert label is not None  # else fatal
                item = cache.get(sample)
                assert item.masks is not None  # a labelled sample
                image, masks = item.image, item.masks
        except BonesegError as exc:
            report.problems.append({"image": sample.name, "class": None, "kind": "unreadable", "detail": str(exc)})
            continue
        broken = {_class_of(t) for t in label.problems if _problem_kind(t) != "missing_class"}
        for text in label.problems:
            if _problem_kind(text) == "missing_class" and _class_of(text) in broken:
                continue  # already reported as the reason the polygon was dropped
            report.problems.append(
                {"image": sample.name, "class": _class_of(text), "kind": _problem_kind(text), "detail": text}
            )
        for name, pts in label.polygons.items():
            crossings = self_intersections(pts)
            if crossings:
                report.problems.append(
                    {
                        "image": sample.name,
                        "class": name,
                        "kind": "self_intersection",
                        "detail": f"class {name!r}: {crossings} pair(s) of polygon edges cross",
                    }
                )
        a, inter = overlap_matrix(masks, polygon_boxes(label.polygons, image.shape))
        report.overlap_sum += inter
        report.overlap_images += inter > 0
        np.maximum(report.overlap_max, inter, out=report.overlap_max)
        hist = np.bincount(image.ravel(), minlength=256)
        report.histogram["train"] += hist
        areas.append(a)
        present.append([c in label.polygons for c in CLASSES])
        report.images.append(
            {
                "name": sample.name,
                "patient": sample.patient,
                "side": hand_side(sample, label.polygons),
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                **_mean_std(hist),
                "areas": a.tolist(),
                "label_ok": not fatal,
            }
        )
    report.areas = np.array(areas, np.int64).reshape(-1, NUM_CLASSES)
    report.present = np.array(present, bool).reshape(-1, NUM_CLASSES)
    _flag_tiny(report)
    if (root / "test" / "DCM").is_dir():
        report.histogram["test"] = np.zeros(256, np.int64)
        try:
            tests = discover(root, "test", labels=False)
        except DataError:  # an empty test folder: nothing to measure
            tests = []
        for sample in track(tests, reporter, "test images", "img"):
            try:
                image = read_image(sample.image)
            except BonesegError as exc:
                report.problems.append(
                    {"image": f"test/{sample.name}", "class": None, "kind": "unreadable", "detail": str(exc)}
                )
                continue
            hist = np.bincount(image.ravel(), minlength=256)
            report.histogram["test"] += hist
            report.test_images.append(
                {
                    "name": sample.name,
                    "patient": sample.patient,
                    "height": int(image.shape[0]),
                    "width": int(image.shape[1]),
                    **_mean_std(hist),
                }
            )
    report.meta = read_meta(root)
    report.sample_names = _pick_samples(report.images, show)
    return report


def _mean_std(hist: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation of the pixel values from their 256-bin histogram."""
    values, total = np.arange(hist.size), max(int(hist.sum()), 1)
    mean = float((hist * values).sum() / total)
    return {"mean": mean, "std": float(np.sqrt((hist * (values - mean) ** 2).sum() / total))}


def _flag_tiny(report: EdaReport) -> None:
    """Report labels far smaller than their class's median (a stray click, a polygon at the wrong scale)."""
    for c, name in enumerate(CLASSES):
        a = report.areas[report.present[:, c], c]
        if not a.size:
            continue
        limit = TINY_FRACTION * float(np.median(a))
        for i in np.flatnonzero(report.present[:, c] & (report.areas[:, c] < limit)):
            report.problems.append(
                {
                    "image": report.images[i]["name"],
                    "class": name,
                    "kind": "tiny",
                    "detail": f"class {name!r}: {int(report.areas[i, c])} px, under "
                    f"{TINY_FRACTION:.0%} of the class median ({np.median(a):.0f} px)",
                }
            )


def _pick_samples(images: list[dict], show: int) -> list[str]:
    """Up to `show` images with usable labels, spread evenly over the set, alternating hand sides."""
    from itertools import zip_longest

    pools = [[r["name"] for r in images if r["side"] == s and r["label_ok"]] for s in ("R", "L", "unknown")]
    mixed = [n for group in zip_longest(*pools) for n in group if n is not None]
    if show <= 0 or not mixed:
        return []
    return [mixed[i] for i in np.unique(np.linspace(0, len(mixed) - 1, min(show, len(mixed))).round().astype(int))]


# -- plots ----------------------------------------------------------------------------------------


def _areas_figure(report: EdaReport):
    from boneseg.plots import new_figure

    fig = new_figure(10, 0.28 * NUM_CLASSES + 1.5)
    ax = fig.add_subplot(1, 1, 1)
    data = [report.areas[report.present[:, c], c] for c in range(NUM_CLASSES)]
    import inspect

    horizontal = (
        {"orientation": "horizontal"} if "orientation" in inspect.signature(ax.boxplot).parameters else {"vert": False}
    )  # matplotlib >= 3.10 / older
    ax.boxplot(data, positions=range(1, NUM_CLASSES + 1), flierprops={"markersize": 2}, **horizontal)
    ax.set_yticks(range(1, NUM_CLASSES + 1), CLASSES)
    ax.invert_yaxis()
    ax.set_xlabel("filled area (pixels at the image's own size)")
    ax.set_title(f"class areas over {len(report.images)} images")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def _overlaps_figure(report: EdaReport):
    from boneseg.plots import heatmap

    mean = report.overlap_sum / max(len(report.images), 1)
    return heatmap(mean, CLASSES, "mean overlap between classes (pixels per image)", "pixels", log=True)


def _samples_figure(report: EdaReport, cache, max_side: int = 512):
    from boneseg.data.layout import discover
    from boneseg.plots import image_grid, overlay

    by_name = {s.name: s for s in discover(report.root, "train")}
    tiles, titles = [], []
    for name in report.sample_names:
        record = next(r for r in report.images if r["name"] == name)
        size = max_side if max(record["height"], record["width"]) > max_side else None
        item = cache.get(by_name[name], size)
        tiles.append(overlay(item.image, item.masks))
        titles.append(f"{name} ({record['side']})")
    return image_grid(tiles, titles, columns=min(4, len(tiles)), suptitle="labels") if tiles else None


def _metadata_figure(report: EdaReport):
    from boneseg.plots import new_figure

    meta = report.meta
    assert meta is not None  # drawn only with metadata
    fig = new_figure(12, 3.2)
    for k, (col, unit) in enumerate((("age", "years"), ("height", "cm"), ("weight", "kg"))):
        ax = fig.add_subplot(1, 4, k + 1)
        v = meta[col].dropna().astype(float)
        ax.hist(v, bins=min(20, max(5, v.size // 5)) if v.size else 5, color="tab:blue")
        ax.set_title(f"{col} (n={v.size})")
        ax.set_xlabel(unit)
    ax = fig.add_subplot(1, 4, 4)
    sex = meta["sex"].fillna("unknown").value_counts()
    ax.bar([str(s) for s in sex.index], sex.values, color="tab:orange")
    ax.set_title("sex")
    fig.tight_layout()
    return fig


def _intensity_figure(report: EdaReport):
    from boneseg.plots import new_figure

    fig = new_figure(8, 4)
    ax = fig.add_subplot(1, 1, 1)
    for split, hist in report.histogram.items():
        if hist.sum():
            ax.plot(np.arange(256), hist / hist.sum(), label=split)
    ax.set_yscale("log")
    ax.set_xlabel("pixel value")
    ax.set_ylabel("fraction of pixels")
    ax.set_title("intensity histogram")
    ax.legend()
    fig.tight_layout()
    return fig


def write_eda(
    report: EdaReport, out_dir: str | os.PathLike, force: bool = False, cache_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Write ``eda.json`` and the plots into `out_dir`; returns the files written.

    ``metadata.png`` only when ``meta_data.xlsx`` exists. Raises `OutputExistsError` (before writing
    anything) when a file exists and `force` is false.
    """
    from boneseg.data.masks import MaskCache, default_cache_dir
    from boneseg.io import check_output, hold, publishing, write_json
    from boneseg.plots import save_png

    out = Path(out_dir)
    cache = MaskCache(cache_dir or default_cache_dir(report.root))
    makers = {
        EDA_FILES["areas"]: lambda: _areas_figure(report),
        EDA_FILES["overlaps"]: lambda: _overlaps_figure(report),
        EDA_FILES["samples"]: lambda: _samples_figure(report, cache),
        EDA_FILES["intensity"]: lambda: _intensity_figure(report),
    }
    if report.meta is not None:
        makers[EDA_FILES["metadata"]] = lambda: _metadata_figure(report)
    for name in [EDA_FILES["json"], *makers]:
        check_output(out / name, force)
    written = [out / EDA_FILES["json"]]
    with hold(out), publishing(force) as pub:  # the files are one unit: all new, or all as they were
        write_json(pub.file(out / EDA_FILES["json"]), report.to_json(), force=True)
        for name, make in makers.items():
            fig = make()
            if fig is not None:
                save_png(fig, pub.file(out / name), force=True)
                written.append(out / name)
    return written
