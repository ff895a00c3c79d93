"""Patient-grouped cross-validation folds (``boneseg split``).

Both hands of a patient always land in the same fold, so validation never sees a patient the model
trained on. Folds are deterministic for a given seed and optionally stratified by hand side or wrist tilt.
The JSON form::

    {"folds": 5, "group_by": "patient", "seed": 0, "stratify": null,
     "assignments": {"ID001/image1661130828152_R.png": 3, ...}}     # keys relative to train/DCM
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from boneseg.data.layout import Sample
from boneseg.errors import DataError, UsageError, suggest
from boneseg.io import read_json

TILT_DEGREES = 10.0
"""Hand-axis angle (radius -> middle metacarpal, from vertical) above which a wrist counts as tilted."""


def sample_side(sample: Sample) -> str:
    """``"L"``/``"R"`` from the labels (else the file-name suffix), ``"unknown"`` when neither tells."""
    from boneseg.data.layout import hand_side
    from boneseg.data.masks import load_label

    polygons = load_label(sample.label, strict=False).polygons if sample.label else None
    return hand_side(sample, polygons)


def sample_tilt(sample: Sample) -> str:
    """``"tilted"`` when the hand axis leans more than `TILT_DEGREES` from vertical, else ``"straight"``."""
    from boneseg.data.masks import load_label

    if sample.label is None:
        return "unknown"
    polygons = load_label(sample.label, strict=False).polygons
    if "Radius" not in polygons or "finger-11" not in polygons:
        return "unknown"
    (x0, y0), (x1, y1) = polygons["Radius"].mean(0), polygons["finger-11"].mean(0)
    angle = np.degrees(np.arctan2(x1 - x0, y0 - y1))
    return "tilted" if abs(angle) > TILT_DEGREES else "straight"


STRATIFY: dict[str, Callable[[Sample], str] | None] = {"none": None, "side": sample_side, "tilt": sample_tilt}
"""Stratification keys for `make_splits`."""


MAX_SEED = 2**32 - 1
"""The largest seed (numpy's legacy generator, seeded by training, takes 32 bits)."""


def check_seed(seed: object) -> int:
    """`seed` as a seed: a whole number from 0 to `MAX_SEED`, the one rule for every ``--seed``.

    Raises:
        UsageError: anything else.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed {seed}: must be a whole number from 0 to {MAX_SEED} (2**32 - 1)")
    return seed


def check_split_options(folds: int, stratify: object = None, seed: int = 0) -> None:
    """Raise `UsageError` for fewer than 2 folds, an unknown `stratify` name or a bad seed (before any data is
    read)."""
    check_seed(seed)
    if folds < 2:
        raise UsageError(f"--folds {folds}: need at least 2 folds")
    if (isinstance(stratify, str) or stratify is None) and (stratify or "none") not in STRATIFY:
        raise UsageError(f"--stratify {stratify!r}: unknown key{suggest(str(stratify), STRATIFY)}")


def make_splits(
    samples: Sequence[Sample],
    folds: int = 5,
    seed: int = 0,
    stratify: str | Callable[[Sample], str] | Mapping[str, str] | None = None,
) -> dict:
    """Assign every image to one of `folds` patient-grouped folds.

    Args:
        samples: labelled samples (``discover(DATA)``).
        folds: number of folds K (2 <= K <= number of patients).
        seed: shuffling seed; the same inputs and seed always give the same folds.
        stratify: None/``"none"``, ``"side"``, ``"tilt"``, a function of a sample, or a mapping
            sample name -> stratum; strata are balanced across folds with sklearn's StratifiedGroupKFold.

    Returns:
        The splits dict (see the module docstring).

    Raises:
        UsageError: fewer than 2 folds, more folds than patients, an unknown `stratify` name or a bad seed.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    check_split_options(folds, stratify, seed)
    samples = sorted(samples, key=lambda s: s.name)
    if not samples:
        raise UsageError("no images to split")
    patients = sorted({s.patient for s in samples})
    if folds > len(patients):
        raise UsageError(
            f"--folds {folds}: only {len(patients)} patient(s) to split; use --folds {len(patients)} or fewer"
        )
    label = stratify if stratify is not None else "none"
    if isinstance(stratify, str) or stratify is None:
        fn = STRATIFY[str(label)]
    elif isinstance(stratify, Mapping):
        fn, label = (lambda s, m=stratify: str(m.get(s.name, "unknown"))), "custom"
    else:
        fn, label = stratify, getattr(stratify, "__name__", "custom")
    pid = {p: i for i, p in enumerate(patients)}
    groups = np.array([pid[s.patient] for s in samples])
    x = np.zeros((len(samples), 1))
    if fn is None:
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = splitter.split(x, groups=groups)
    else:
        strata = [fn(s) for s in samples]
        codes = np.unique(strata, return_inverse=True)[1]
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # "least populated class has only N members": expected on small sets
            warnings.simplefilter("ignore", UserWarning)
            parts = list(splitter.split(x, codes, groups=groups))
    fold_of = np.empty(len(samples), int)
    for k, (_, val) in enumerate(parts):
        fold_of[val] = k
    return {
        "folds": folds,
        "group_by": "patient",
        "seed": seed,
        "stratify": None if label == "none" else label,
        "assignments": {s.name: int(f) for s, f in zip(samples, fold_of)},
    }


def validate_splits(splits: object, source: str = "splits") -> dict:
    """Check the structure of a splits dict; returns it.

    Raises:
        DataError: missing keys, non-integer or out-of-range folds, or one patient in two folds.
    """
    if not isinstance(splits, dict) or not isinstance(splits.get("assignments"), dict):
        raise DataError(f"{source}: not a splits file (no 'assignments' object)")
    k = splits.get("folds")
    if not isinstance(k, int) or k < 1:
        raise DataError(f"{source}: 'folds' must be a positive integer")
    seen: dict[str, int] = {}
    for name, fold in splits["assignments"].items():
        if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < k:
            raise DataError(f"{source}: {name}: fold {fold!r} is not in 0..{k - 1}")
        if splits.get("group_by", "patient") == "patient":
            patient = Sample(name, Path(name)).patient
            if seen.setdefault(patient, fold) != fold:
                raise DataError(f"{source}: patient {patient} is in folds {seen[patient]} and {fold}")
    return splits


def load_splits(path: str | os.PathLike, samples: Sequence[Sample] | None = None) -> dict:
    """Read and validate a splits file; with `samples`, check it belongs to that dataset.

    Raises:
        DataError: malformed file, or (given `samples`) images the dataset does not have ("splits file
            from another dataset") or dataset images the file does not assign.
    """
    splits = validate_splits(read_json(path), str(path))
    if samples is not None:
        names = {s.name for s in samples}
        unknown = sorted(set(splits["assignments"]) - names)
        if unknown:
            raise DataError(
                f"{path}: splits file from another dataset ({len(unknown)} image(s) not in it, e.g. {unknown[0]})"
            )
        missing = sorted(names - set(splits["assignments"]))
        if missing:
            raise DataError(
                f"{path}: {len(missing)} image(s) of the dataset have no fold, e.g. {missing[0]} "
                "(splits file from another version of the dataset? run boneseg split again)"
            )
    return splits


def fold_samples(samples: Sequence[Sample], splits: Mapping, fold: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val) samples for `fold` (validation = the images assigned to it).

    Raises:
        UsageError: `fold` outside 0..K-1.
        DataError: a sample the splits do not assign.
    """
    k = splits["folds"]
    if not isinstance(fold, int) or not 0 <= fold < k:
        raise UsageError(f"--fold {fold}: the splits have {k} folds (0..{k - 1})")
    train: list[Sample] = []
    val: list[Sample] = []
    for s in samples:
        if s.name not in splits["assignments"]:
            raise DataError(f"{s.name}: not in the splits file (splits file from another dataset?)")
        (val if splits["assignments"][s.name] == fold else train).append(s)
    return train, val


def run_fold(
    samples: Sequence[Sample], splits: str | os.PathLike | None, folds: int, seed: int, fold: int
) -> tuple[list[Sample], list[Sample]]:
    """(train, val) samples of a training run's `fold`: from its splits file, else from `folds`
    patient-grouped folds (at most one per patient) made with `seed`, as ``boneseg train`` makes them."""
    if splits:
        assignment = load_splits(splits, samples)
    else:
        assignment = make_splits(samples, folds=min(folds, len({s.patient for s in samples})), seed=seed)
    return fold_samples(samples, assignment, fold)
