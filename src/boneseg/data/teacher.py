"""Soft targets of distillation: a teacher ensemble's saved probabilities, read one image at a time.

A `Teacher` is one or more probability folders (`boneseg.probs`: ``predict --save-probs`` or
``oof --save-probs``) with per-class weights: an image's target is their weighted mean by the soft
vote's rule (`boneseg.probs.weighted_mean`), resized to the training size by the one resize rule of
model inputs (`boneseg.data.layout.resize_image`). Nothing is held between images: the training
dataset asks for each image's target when it needs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boneseg import probs as probs_mod
from boneseg.classes import NUM_CLASSES
from boneseg.data.layout import Sample, image_shape, resize_image
from boneseg.errors import DataError, quote


@dataclass(frozen=True)
class Teacher:
    """Probability folders and their (29, n) per-class weights (None: equal weights)."""

    folders: tuple[str, ...]
    weights: tuple[tuple[float, ...], ...] | None = None
    option: str = "--teacher"  # the option that gave the folders, for messages

    def weight_matrix(self) -> np.ndarray:
        if self.weights is None:
            return np.ones((NUM_CLASSES, len(self.folders)))
        return np.asarray(self.weights, np.float64)

    def used(self) -> list[bool]:
        """Per folder: whether any class weighs it (a folder no class uses is never read)."""
        w = self.weight_matrix()
        return [bool(w[:, i].any()) for i in range(w.shape[1])]

    def check(self, samples: Iterable[Sample]) -> None:
        """Every sample has probabilities in every folder the weights use, stored at its image's size
        (read from the file headers and the image headers, nothing decoded).

        Raises:
            DataError: a folder that is not a probability folder, an image it lacks (with the count of
                the others), or probabilities of another size than the image.
        """
        samples = list(samples)
        hint = "boneseg predict DATA -m …" if self.option == "--teacher-test" else "boneseg oof RUN_f0 RUN_f1 …"
        for folder, use in zip(self.folders, self.used()):
            if not use:
                continue
            listed = {Path(str(i)).name for i in probs_mod.read_manifest(folder)["images"]}
            missing = [s for s in samples if s.image_name not in listed]
            if missing:
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                raise DataError(
                    f"{self.option} {folder}: no probabilities of image {quote(missing[0].name)}{more} "
                    f"(give a probability folder over these images, e.g. `{hint} --save-probs`)"
                )
            for s in samples:
                stored = probs_mod.stored_shape(folder, s.image_name)
                shape = image_shape(s.image)
                if stored != (NUM_CLASSES, *shape):
                    raise DataError(
                        f"{self.option} {folder}: probabilities of {s.image_name} are {stored[1:]} pixels, the "
                        f"image {s.image} is {shape} (probabilities of another dataset?)"
                    )

    def fingerprint(self, image_name: str) -> str:
        """What one image's target depends on: the folders, the weights and each file read (size, times)."""
        parts = [repr(self.weights)]
        for folder, use in zip(self.folders, self.used()):
            path = probs_mod.prob_path(folder, image_name)
            try:
                st = path.stat() if use else None
            except FileNotFoundError:
                raise DataError(f"{path}: probability file not found (image {image_name})") from None
            parts.append(f"{os.path.abspath(folder)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}" if st else "-")
        return "|".join(parts)

    def target(self, image_name: str, size: int | None) -> np.ndarray:
        """The (29, size, size) uint8 soft target of one image (the original size when `size` is None)."""
        qs = [probs_mod.load(f, image_name) if use else None for f, use in zip(self.folders, self.used())]
        shapes = {q.shape for q in qs if q is not None}
        if len(shapes) > 1:
            raise DataError(f"{self.option}: image {image_name!r}: the folders' probabilities differ in size {shapes}")
        mean = probs_mod.weighted_mean(qs, self.weight_matrix())
        if size is None or mean.shape[1:] == (size, size):
            return mean
        return np.stack([resize_image(m, (size, size)) for m in mean])  # per class: OpenCV takes 4 channels


def make_teacher(
    folders: Sequence[str | os.PathLike], weights: Sequence[Sequence[float]] | None, option: str = "--teacher"
) -> Teacher:
    """A `Teacher`, its weights checked: one row per class, one finite weight >= 0 per folder, some weight
    for every class.

    Raises:
        DataError: weights of another shape, or a class without weight.
    """
    w = None
    if weights is not None:
        arr = np.asarray(weights, np.float64)
        if arr.shape != (NUM_CLASSES, len(folders)) or not np.isfinite(arr).all() or (arr < 0).any():
            raise DataError(f"{option}: expected {NUM_CLASSES} rows of {len(folders)} finite weights >= 0")
        if (arr.sum(axis=1) <= 0).any():
            raise DataError(f"{option}: a class with no weight on any folder")
        w = tuple(tuple(float(v) for v in row) for row in arr)
    return Teacher(tuple(str(f) for f in folders), w, option)
