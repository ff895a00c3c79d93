"""RLE encode/decode: boneseg.rle vs the common notebook functions, on real 2048² bone masks."""

from __future__ import annotations

import numpy as np
from common import load_masks, notebook_decode, notebook_encode, print_table, race

from boneseg import rle

NOTE = """\
Decoding one mask is bounded by memory, not by the decoder: a fresh 2048² mask is 4 MB, and the kernel
must fault in and zero every page the object's rows touch. The indented row times only that, the way the
notebook allocates (`np.zeros`, one byte written per run, no parsing): it is most of the notebook's time,
so no decoder that returns a fresh array can be many times faster per mask. boneseg gets below that
figure by taking a fresh mapping and faulting the object's pages in with one system call (Linux), then
parses in C and paints each run with one memoryview copy. Decoding an image's 29 classes into one
(29, H, W) array, which is what the notebooks' decode-and-`np.stack` does and what anything working on
a whole image needs, is where the difference shows. The hot paths (ensemble, analyze, check) never
decode: they work on the runs."""


def _memory_floor(runs: list[tuple[np.ndarray, np.ndarray]], h: int, w: int) -> list[np.ndarray]:
    """Fresh zeroed masks with one byte written in every row an object covers: the cost of the output alone."""
    out = []
    for starts, _ in runs:
        mask = np.zeros(h * w, np.uint8)
        mask[starts] = 1
        out.append(mask)
    return out


def main() -> list[dict]:
    images, source = load_masks(limit=6)
    h, w = images[0].shape[1:]
    texts = [[notebook_encode(m.astype(np.uint8)) for m in image] for image in images]
    assert all(rle.encode(m) == t for image, ts in zip(images, texts) for m, t in zip(image, ts))
    assert all(np.array_equal(rle.decode_stack(ts, (h, w)), image) for image, ts in zip(images, texts))
    n_masks = sum(len(i) for i in images)
    runs = [rle.parse(t, h * w) for ts in texts for t in ts]

    times = race(
        {
            "nb_enc": lambda: [notebook_encode(m) for image in images for m in image],
            "enc": lambda: [rle.encode(m) for image in images for m in image],
            "nb_dec": lambda: [notebook_decode(t, h, w) for ts in texts for t in ts],
            "dec": lambda: [rle.decode(t, (h, w)) for ts in texts for t in ts],
            "floor": lambda: _memory_floor(runs, h, w),
            # per image, as the notebooks decode a submission: all 29 classes stacked into one (29, H, W) array
            "nb_img": lambda: [np.stack([notebook_decode(t, h, w) for t in ts]) for ts in texts],
            "img": lambda: [rle.decode_stack(ts, (h, w)) for ts in texts],
        }
    )
    t_nb_enc, t_enc, t_nb_dec, t_dec, t_floor, t_nb_img, t_img = times.values()
    per_mask = lambda t: 1e3 * t / n_masks  # noqa: E731
    rows = [
        {
            "operation": "encode one mask",
            "notebook_ms": per_mask(t_nb_enc),
            "boneseg_ms": per_mask(t_enc),
            "speedup": t_nb_enc / t_enc,
        },
        {
            "operation": "decode one mask",
            "notebook_ms": per_mask(t_nb_dec),
            "boneseg_ms": per_mask(t_dec),
            "speedup": t_nb_dec / t_dec,
        },
        {
            "operation": "  of which a fresh array with the object's rows written (no decoding)",
            "notebook_ms": per_mask(t_floor),
            "boneseg_ms": "",
            "speedup": "",
        },
        {
            "operation": "decode an image (29 masks -> 29xHxW)",
            "notebook_ms": 1e3 * t_nb_img / len(images),
            "boneseg_ms": 1e3 * t_img / len(images),
            "speedup": t_nb_img / t_img,
        },
    ]
    print_table(f"RLE at {h}x{w}, {source}", rows)
    return rows


if __name__ == "__main__":
    main()
