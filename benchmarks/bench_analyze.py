"""`boneseg analyze` at competition scale: run-length Dice vs the notebook decode-and-compare.

Workload: 5 models x 288 images x 29 classes at 2048², the size of the real test set. The CSVs are built
from real predictions (three models on ten test images in ../shared/data/real-masks; two more models are
one of them dilated / eroded by one pixel) with the ten images repeated under new names. Both ways
compute the same thing -- Dice of every (image, class) for all 10 model pairs -- and must agree exactly.

The notebook way (pandas rows, decode each mask into a 2048² array, compare) is timed on
``--baseline-images`` images and scaled to 288 (its cost is linear in the images); the table says so.

    python benchmarks/bench_analyze.py [--images 288] [--baseline-images 12]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_masks, print_table, real_mask_files  # noqa: E402

from boneseg import CLASSES, rle  # noqa: E402
from boneseg.submission import SubmissionWriter  # noqa: E402
from boneseg.workflows.analysis import analyze  # noqa: E402


def notebook_decode(rle_text, height, width):
    """The competition notebooks' decoder."""
    img = np.zeros(height * width, dtype=np.uint8)
    if isinstance(rle_text, str) and rle_text:
        s = rle_text.split()
        starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
        starts -= 1
        for lo, hi in zip(starts, starts + lengths):
            img[lo:hi] = 1
    return img.reshape(height, width)


def notebook_dice(y_true, y_pred):
    """The notebooks' per-mask Dice (1.0 when both are empty, as the competition scores it)."""
    total = y_true.sum() + y_pred.sum()
    return 2.0 * (y_true & y_pred).sum() / total if total else 1.0


def notebook_pairwise(csvs: list[Path], images: list[str], h: int, w: int) -> np.ndarray:
    """Dice of every model pair, image and class: pandas + decode + numpy, as a notebook does it."""
    import pandas as pd

    frames = [pd.read_csv(p).set_index(["image_name", "class"]) for p in csvs]
    pairs = list(combinations(range(len(csvs)), 2))
    out = np.zeros((len(pairs), len(images), len(CLASSES)))
    for n, image in enumerate(images):
        for c, cls in enumerate(CLASSES):
            masks = [notebook_decode(f.loc[(image, cls), "rle"], h, w) for f in frames]
            for k, (i, j) in enumerate(pairs):
                out[k, n, c] = notebook_dice(masks[i], masks[j])
    return out


def build_models() -> tuple[list[list[list[str]]], list[str], tuple[int, int], str]:
    """RLE texts [model][image][class] of five models on the same images (one mask in memory at a time)."""
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    extra = {0: cv2.dilate, 1: cv2.erode}  # two more models: one pixel fatter / thinner than models 0 and 1
    files = real_mask_files()
    if files:
        folders = sorted({Path(f).parent for f in files})[:3]
        names = sorted(p.stem for p in folders[0].glob("*.npz"))
        source = f"real masks: {len(folders)} models x {len(names)} images"
        load = lambda m, n: np.load(folders[m] / f"{n}.npz")["mask"]  # noqa: E731
    else:  # no ../shared: phantom masks, three shifted copies as three "models"
        masks, source = load_masks(limit=4)
        folders, names = range(3), [f"phantom{i}" for i in range(len(masks))]
        load = lambda m, n: np.roll(masks[names.index(n)], m, axis=2).astype(np.uint8)  # noqa: E731
    texts = [[] for _ in range(len(folders) + len(extra))]
    for m in range(len(folders)):
        for n in names:
            image = load(m, n)
            texts[m].append([rle.encode(x) for x in image])
            if m in extra:
                texts[len(folders) + m].append([rle.encode(extra[m](x, kernel)) for x in image])
    return texts, names, image.shape[1:], source + " (+2 dilated/eroded)"


def write_csvs(texts, names, n_images: int, folder: Path) -> tuple[list[Path], list[str]]:
    images = [f"image{j:04d}_{names[j % len(names)]}.png" for j in range(n_images)]
    paths = []
    for m, model in enumerate(texts):
        path = folder / f"model{m}.csv"
        with SubmissionWriter(path) as w:
            for j, image in enumerate(images):
                w.write_rles(image, model[j % len(names)])
        paths.append(path)
    return paths, images


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=288)
    ap.add_argument("--baseline-images", type=int, default=12)
    args = ap.parse_args([] if argv is None else argv)  # main() from run_all.py: the defaults
    texts, names, (h, w), source = build_models()
    with tempfile.TemporaryDirectory() as tmp:
        csvs, images = write_csvs(texts, names, args.images, Path(tmp))
        t = time.perf_counter()
        result = analyze(csvs, size=h)
        t_runs = time.perf_counter() - t
        pairs = list(combinations(range(len(csvs)), 2))
        ours = np.stack([result.similarity[i, j] for i, j in pairs])
        b = min(args.baseline_images, args.images)
        t = time.perf_counter()
        theirs = notebook_pairwise(csvs, images[:b], h, w)
        t_nb = time.perf_counter() - t
    diff = float(np.abs(ours[:, :b] - theirs).max())
    assert diff < 1e-12, f"run-length Dice differs from the decoded one by {diff}"
    t_nb_full = t_nb * args.images / b
    work = f"{len(csvs)} models x {args.images} images x {len(CLASSES)} classes at {w}x{h}, {len(pairs)} model pairs"
    rows = [
        {
            "method": "notebook: pandas + decode + compare",
            "images_timed": b,
            "seconds": t_nb,
            f"seconds_{args.images}_images": t_nb_full,
            "speedup": 1.0,
        },
        {
            "method": "boneseg analyze (run-length space)",
            "images_timed": args.images,
            "seconds": t_runs,
            f"seconds_{args.images}_images": t_runs,
            "speedup": t_nb_full / t_runs,
        },
    ]
    print_table(f"Pairwise Dice, {work}; {source}; max |difference| {diff:.1e}", rows)
    if b < args.images:
        print(f"(notebook time for {args.images} images scaled linearly from {b})")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
