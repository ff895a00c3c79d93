"""`boneseg postprocess`: the post-processing `predict` applies, on an existing submission CSV.

Per class: an optional morphological closing (`boneseg.postprocess.close_mask`), then keep the largest
component and/or drop islands under ``min_area`` pixels (`boneseg.postprocess.clean_mask`), with per-class
rules from a ``postprocess.json`` (a run's, from ``train --fit-postprocess``) combined with the global
options as ``predict`` combines them (`boneseg.postprocess.rules_list`). The CSV is rewritten image by
image in run-length space: each mask's covered rows are decoded, cleaned and encoded again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boneseg.classes import CLASSES, NUM_CLASSES
from boneseg.errors import DataError, UsageError
from boneseg.progress import SILENT, Reporter, track

__all__ = ["PostprocessResult", "postprocess_csv", "read_rules"]


@dataclass
class PostprocessResult:
    """What `postprocess_csv` changed: per class, masks changed and pixels removed / added."""

    images: int
    rules: str | None
    changed: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))
    removed: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))
    added: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))

    def to_json(self) -> dict:
        return {
            "images": self.images,
            "rules": self.rules,
            "changed_masks": int(self.changed.sum()),
            "pixels_removed": int(self.removed.sum()),
            "pixels_added": int(self.added.sum()),
            "per_class": {
                c: {"changed_masks": int(a), "pixels_removed": int(r), "pixels_added": int(d)}
                for c, a, r, d in zip(CLASSES, self.changed, self.removed, self.added)
            },
        }


def read_rules(path: str | os.PathLike) -> tuple[dict, str]:
    """A rules document and where it came from: a ``postprocess.json`` file, or a run folder holding one.

    Raises:
        DataError: no such file, a run folder without rules, malformed JSON.
    """
    from boneseg.io import read_json
    from boneseg.runs.files import POSTPROCESS

    path = Path(path)
    if path.is_dir():
        if not (path / POSTPROCESS).is_file():
            raise DataError(f"--rules {path}: no {POSTPROCESS} in this folder (train --fit-postprocess writes it)")
        path = path / POSTPROCESS
    elif not path.is_file():
        raise DataError(f"--rules {path}: file not found")
    return read_json(path), str(path)


def postprocess_csv(
    source: str | os.PathLike,
    output: str | os.PathLike | None,
    *,
    rules: str | os.PathLike | None = None,
    min_area: int = 0,
    keep_largest: bool = False,
    close: int = 0,
    images: str | os.PathLike | None = None,
    size: int = 2048,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> PostprocessResult:
    """Rewrite the submission `source` into `output` (``-``: standard output) with every mask post-processed.

    Args:
        rules: a ``postprocess.json`` file or a run folder holding one; its per-class rules are combined with
            `keep_largest` (OR) and `min_area` (the larger) as ``predict`` does.
        min_area: drop components smaller than this many pixels (0: keep all).
        keep_largest: keep only each class's largest component.
        close: side of the ellipse of a morphological closing applied first (0: none).
        images: image folder or dataset root: each image's size from its PNG header (as ``check --images``).
        size: image side without `images`.

    Raises:
        UsageError: a negative `min_area`, a `close` outside [0, MAX_CLOSE], a non-positive `size`; nothing to do.
        DataError: an unreadable CSV or rules file, malformed RLE, images missing from `images`.
        OutputExistsError: `output` exists and `force` is false (checked before any work).
    """
    from boneseg import rle
    from boneseg.io import check_output, is_stdout
    from boneseg.postprocess import MAX_CLOSE, clean_runs, rules_list
    from boneseg.rle_dice import overlap
    from boneseg.submission import SubmissionWriter, read_submission

    if min_area < 0:
        raise UsageError(f"--min-area must be 0 or more, got {min_area}")
    if not 0 <= close <= MAX_CLOSE:
        raise UsageError(f"--close must be 0 (off) or a kernel side in pixels up to {MAX_CLOSE}, got {close}")
    from boneseg.submission import check_image_side

    check_image_side(size)
    doc, where = read_rules(rules) if rules is not None else (None, None)
    per_class = (
        rules_list(doc, keep_largest, min_area, str(where))
        if doc is not None
        else [(keep_largest, min_area)] * NUM_CLASSES
    )
    if close <= 1 and not any(k or a > 1 for k, a in per_class):
        raise UsageError("nothing to do: give --rules, --min-area, --keep-largest or --close")
    if not is_stdout(output):
        assert output is not None
        check_output(output, force)
    sub = read_submission(source)
    names = sorted(sub.images)
    shapes: dict[str, tuple[int, int]] = {}
    if images is not None:
        from boneseg.data.layout import image_files, image_shape

        shapes = {n: image_shape(f) for n, f in image_files(images, names).items()}
    result = PostprocessResult(len(names), where)
    with SubmissionWriter(output, force=force) as writer:
        for name in track(names, reporter, "postprocess", "img"):
            h, w = shapes.get(name, (size, size))
            texts = []
            for c, (cls, text) in enumerate(zip(CLASSES, sub.image_rles(name))):
                try:
                    starts, ends = rle.parse(text, h * w)
                except DataError as exc:
                    raise DataError(f"{source}: image {name!r}, class {cls!r}: {exc}") from None
                keep, area = per_class[c]
                s, e = clean_runs(starts, ends, (h, w), keep, area, close)
                if s is starts:
                    texts.append(text)
                    continue
                if np.array_equal(s, starts) and np.array_equal(e, ends):
                    texts.append(text)
                    continue
                kept = overlap(starts, ends, s, e)
                removed, added = int((ends - starts).sum()) - kept, int((e - s).sum()) - kept
                if not removed and not added:  # the same pixels in other runs (adjacent runs merged): unchanged
                    texts.append(text)
                    continue
                result.changed[c] += 1
                result.removed[c] += removed
                result.added[c] += added
                texts.append(rle.runs_to_rle(s, e))
            writer.write_rles(name, texts)
    return result
