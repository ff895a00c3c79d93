"""Post-processing an existing CSV: ``boneseg postprocess --keep-largest`` vs a notebook ``denoise_csv.py``.

The notebook way reads the CSV with pandas and, row by row, decodes the full 2048² mask, labels it with
``cv2.connectedComponentsWithStats``, keeps the largest component and encodes the mask again. boneseg
decodes only the rows each bone covers and encodes from there (`boneseg.postprocess.clean_runs`).
Workload: the real masks in ``../shared/data/real-masks`` (30 predictions of 29 classes at 2048²) with a
few small islands added within 40 px of every bone, or phantom masks without ``../shared``. Both outputs are checked
to be identical.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from common import cpu_info, load_masks, notebook_decode, notebook_encode, print_table

from boneseg import rle
from boneseg.classes import CLASSES
from boneseg.maskops import bbox
from boneseg.workflows.postprocess_csv import postprocess_csv


def denoise_csv(src: Path, dst: Path, height: int, width: int) -> None:
    """A team's ``denoise_csv.py``: decode, keep the largest connected component, encode; row by row."""
    import pandas as pd

    df = pd.read_csv(src)
    out = []
    for text in df["rle"]:
        if not isinstance(text, str):
            out.append("")
            continue
        mask = notebook_decode(text, height, width)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n > 2:
            largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            mask = (labels == largest).astype(np.uint8)
        out.append(notebook_encode(mask))
    df["rle"] = out
    df.to_csv(dst, index=False)


def build_csv(path: Path) -> tuple[str, int, int]:
    masks, source = load_masks()
    rng = np.random.default_rng(0)
    with open(path, "w") as fh:
        fh.write("image_name,class,rle\n")
        for i, m in enumerate(masks):
            m = m.copy()
            h, w = m.shape[1:]
            for c in range(len(CLASSES)):  # three 3x3 islands near each bone, the noise a denoiser removes
                box = bbox(m[c])
                if box is None:
                    continue
                for _ in range(3):
                    y = int(np.clip(rng.integers(box[0] - 40, box[1] + 40), 0, h - 3))
                    x = int(np.clip(rng.integers(box[2] - 40, box[3] + 40), 0, w - 3))
                    m[c, y : y + 3, x : x + 3] = True
            fh.writelines(f"image{1661319000000 + i}.png,{c},{rle.encode(k)}\n" for c, k in zip(CLASSES, m))
    return source, h, w


def main() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source, h, w = build_csv(tmp / "in.csv")
        images = (len((tmp / "in.csv").read_text().splitlines()) - 1) // len(CLASSES)
        print(f"{images} images from {source}; {cpu_info()}", file=sys.stderr)
        t = time.perf_counter()
        denoise_csv(tmp / "in.csv", tmp / "nb.csv", h, w)
        t_nb = time.perf_counter() - t
        t = time.perf_counter()
        postprocess_csv(tmp / "in.csv", tmp / "ours.csv", keep_largest=True, size=h)
        t_ours = time.perf_counter() - t
        nb = [line.split(",")[2] for line in (tmp / "nb.csv").read_text().splitlines()[1:]]
        ours = [line.split(",")[2] for line in (tmp / "ours.csv").read_text().splitlines()[1:]]
        assert nb == ours, "boneseg postprocess differs from the notebook denoiser"
    rows = [
        {"method": "notebook denoise_csv.py (pandas, decode, connected components, encode)", "seconds": t_nb,
         "ms_per_mask": 1000 * t_nb / (images * len(CLASSES)), "speedup": 1.0},
        {"method": "boneseg postprocess --keep-largest", "seconds": t_ours,
         "ms_per_mask": 1000 * t_ours / (images * len(CLASSES)), "speedup": t_nb / t_ours},
    ]  # fmt: skip
    print_table(f"Keep the largest component of every mask: {images} images x 29 classes, {source}", rows)
    return rows


if __name__ == "__main__":
    main()
