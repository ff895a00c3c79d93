"""RLE encode/decode: boneseg.rle vs the common notebook functions, on real 2048² bone masks."""
from __future__ import annotations

import numpy as np

from boneseg import rle
from common import best_of, load_masks, notebook_decode, notebook_encode, print_table


def main() -> list[dict]:
    images, source = load_masks(limit=6)
    h, w = images[0].shape[1:]
    texts = [[notebook_encode(m.astype(np.uint8)) for m in image] for image in images]
    assert all(rle.encode(m) == t for image, ts in zip(images, texts) for m, t in zip(image, ts))
    n_masks = sum(len(i) for i in images)

    t_nb_enc = best_of(lambda: [notebook_encode(m) for image in images for m in image])
    t_enc = best_of(lambda: [rle.encode(m) for image in images for m in image])
    t_nb_dec = best_of(lambda: [notebook_decode(t, h, w) for ts in texts for t in ts])
    t_dec = best_of(lambda: [rle.decode(t, (h, w)) for ts in texts for t in ts])
    # per image, as used by analysis/ensembles: all 29 classes into one (29, H, W) array
    t_nb_img = best_of(lambda: [np.stack([notebook_decode(t, h, w) for t in ts]) for ts in texts])
    t_img = best_of(lambda: [rle.decode_stack(ts, (h, w)) for ts in texts])
    rows = [
        {"operation": "encode one mask", "notebook_ms": 1e3 * t_nb_enc / n_masks, "boneseg_ms": 1e3 * t_enc / n_masks,
         "speedup": t_nb_enc / t_enc},
        {"operation": "decode one mask", "notebook_ms": 1e3 * t_nb_dec / n_masks, "boneseg_ms": 1e3 * t_dec / n_masks,
         "speedup": t_nb_dec / t_dec},
        {"operation": "decode an image (29 masks -> 29xHxW)", "notebook_ms": 1e3 * t_nb_img / len(images),
         "boneseg_ms": 1e3 * t_img / len(images), "speedup": t_nb_img / t_img},
    ]
    print_table(f"RLE at {h}x{w}, {source}", rows)
    return rows


if __name__ == "__main__":
    main()
