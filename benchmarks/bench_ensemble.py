"""Hard-vote ensemble: boneseg's run-length vote vs the notebook way (decode all, sum, threshold, encode).

Workload: 5 submissions x 288 images x 29 classes at 2048², built from the real masks in
``../shared/data/real-masks`` (3 models x 10 images; inputs 4 and 5 are models 1 and 2 shifted by a few
pixels; the 10 images repeat under new names up to 288) or, without ``../shared``, from phantom masks.
The notebook way is timed on a subset of images and extrapolated linearly (it takes minutes in full).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REAL_MASKS, cpu_info, notebook_decode, notebook_encode, print_table, real_mask_files

from boneseg import rle
from boneseg.classes import CLASSES
from boneseg.workflows.ensemble import hard_vote

N_INPUTS, N_IMAGES, SUBSET = 5, 288, 12


def notebook_vote(csvs, height, width, rows=None):
    """The notebook ensemble: read every CSV, assume the same row order, decode, sum, threshold, encode."""
    import pandas as pd

    dfs = [pd.read_csv(f) for f in csvs]
    out = dfs[0][["image_name", "class"]].copy()
    n = len(dfs[0]) if rows is None else rows
    need = len(dfs) // 2 + 1
    result = []
    for i in range(n):
        total = np.zeros((height, width), np.uint8)
        for df in dfs:
            text = df.iloc[i]["rle"]
            if isinstance(text, str):
                total += notebook_decode(text, height, width)
        result.append(notebook_encode((total >= need).astype(np.uint8)))
    out = out.iloc[:n].copy()
    out["rle"] = result
    return out


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return np.roll(mask, (dy, dx), axis=(-2, -1))


def build_inputs(folder: Path) -> tuple[list[Path], str, int]:
    """Write the 5 input CSVs; returns (paths, source description, image side)."""
    files = real_mask_files()
    if files:
        models = sorted({Path(f).parent.name for f in files})
        stems = sorted({Path(f).stem for f in files})
        load = lambda m, s: np.load(REAL_MASKS / m / f"{s}.npz")["mask"].astype(bool)  # noqa: E731
        source = f"real masks ({len(models)} models x {len(stems)} images, ../shared/data/real-masks)"
    else:
        from boneseg.data.masks import rasterize
        from boneseg.data.synth import render_hand

        rng = np.random.default_rng(0)
        hands = [render_hand(rng, 2048)[1] for _ in range(4)]
        base = [rasterize({k: np.asarray(v) for k, v in p.items()}, (2048, 2048)) for p in hands]
        models, stems = ["m0", "m1", "m2"], [str(i) for i in range(len(base))]
        load = lambda m, s: _shift(base[int(s)], int(m[1]), -int(m[1]))  # noqa: E731
        source = f"synthetic phantom masks ({len(base)} images, 3 shifted copies)"
    variants = [
        (models[0], 0, 0),
        (models[1], 0, 0),
        (models[2 % len(models)], 0, 0),
        (models[0], 3, 2),
        (models[1 % len(models)], -2, 3),
    ]
    texts = {}  # (input, stem) -> 29 RLE texts
    side = 2048
    for s in stems:
        cache = {}
        for k, (m, dy, dx) in enumerate(variants):
            if m not in cache:
                cache[m] = load(m, s)
            mask = _shift(cache[m], dy, dx) if (dy or dx) else cache[m]
            side = mask.shape[-1]
            texts[k, s] = [rle.encode(c) for c in mask]
    paths = []
    for k in range(N_INPUTS):
        path = folder / f"input{k}.csv"
        with open(path, "w") as fh:
            fh.write("image_name,class,rle\n")
            for i in range(N_IMAGES):
                name = f"image{1661319000000 + i}.png"
                fh.writelines(f"{name},{c},{t}\n" for c, t in zip(CLASSES, texts[k, stems[i % len(stems)]]))
        paths.append(path)
    return paths, source, side


def main() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        paths, source, side = build_inputs(tmp)
        print(
            f"built {N_INPUTS} inputs ({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB) in "
            f"{time.perf_counter() - t:.1f}s from {source}; {cpu_info()}",
            file=sys.stderr,
        )

        t = time.perf_counter()
        hard_vote(paths, tmp / "ours2.csv", shape=(side, side), workers=2)
        t_ours2 = time.perf_counter() - t
        t = time.perf_counter()
        hard_vote(paths, tmp / "ours1.csv", shape=(side, side), workers=1)
        t_ours1 = time.perf_counter() - t

        t = time.perf_counter()
        ref = notebook_vote(paths, side, side, rows=SUBSET * len(CLASSES))
        t_nb_subset = time.perf_counter() - t
        t_nb = t_nb_subset * N_IMAGES / SUBSET

        import pandas as pd

        ours = pd.read_csv(tmp / "ours2.csv", keep_default_na=False)
        same = ours["rle"].iloc[: len(ref)].tolist() == ref["rle"].fillna("").tolist()
        assert same, "boneseg's vote differs from the notebook vote"
        assert (tmp / "ours1.csv").read_bytes() == (tmp / "ours2.csv").read_bytes()

    work = f"{N_INPUTS} CSVs x {N_IMAGES} images x {len(CLASSES)} classes at {side}², strict majority"
    rows = [
        {
            "method": f"notebook (decode, sum, threshold, encode; {SUBSET} images timed, x{N_IMAGES / SUBSET:.0f})",
            "seconds": t_nb,
            "speedup": 1.0,
        },
        {"method": "boneseg ensemble --vote hard, 1 process", "seconds": t_ours1, "speedup": t_nb / t_ours1},
        {"method": "boneseg ensemble --vote hard, 2 processes", "seconds": t_ours2, "speedup": t_nb / t_ours2},
    ]
    print_table(f"Hard-vote ensemble: {work}; {source}; outputs identical to the notebook's", rows)
    return rows


if __name__ == "__main__":
    main()
