"""The data of a run: the samples of its fold (pseudo-labelled and teacher images included), the mask cache
built once, the loss, and the loaders over an epoch sampler."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch

from boneseg.engine import distributed as D
from boneseg.errors import BonesegWarning, DataError, UsageError
from boneseg.progress import Reporter
from boneseg.runs.config import TrainConfig


class _ReadCheck:
    """Stands in for the mask cache in a dry run: each sample's image header is read and its label parsed
    and checked against the image size (`prepare_cache`'s messages and --skip-bad), nothing is written."""

    def fresh(self, sample, size) -> bool:
        return False

    def get(self, sample, size) -> None:
        from boneseg.data.layout import image_shape
        from boneseg.data.masks import load_label

        shape = image_shape(sample.image)
        if sample.label is not None:
            load_label(sample.label, shape)


def check_meta(cfg: TrainConfig, samples: Sequence) -> None:
    """A metadata model (``--meta aux|film``) needs the patients' metadata: refuse a dataset without a
    metadata file or whose file names none of its patients; warn about patients it lacks (they train with
    the no-metadata vector).

    Raises:
        DataError: no metadata file, or no patient of the dataset in it.
    """
    from boneseg.data.meta import find_meta_file, meta_table

    found = find_meta_file(cfg.data)
    if found is None:
        raise DataError(
            f"--meta {cfg.meta}: no patient metadata (meta_data.xlsx/.xls/.csv) in {cfg.data}; "
            "train with --meta none, or add the file"
        )
    table = meta_table(found)
    patients = sorted({s.patient for s in samples})
    lacking = [p for p in patients if p not in table]
    if len(lacking) == len(patients):
        raise DataError(
            f"{found}: names none of the dataset's {len(patients)} patients (e.g. {patients[0]!r}; the file "
            f"has {', '.join(map(repr, list(table)[:3])) or 'no rows'}): --meta {cfg.meta} would train without metadata"
        )
    if lacking:
        warnings.warn(
            f"{found}: no row for {len(lacking)} of {len(patients)} patients (e.g. {lacking[0]}): "
            "they train with the no-metadata vector",
            BonesegWarning,
            stacklevel=2,
        )


def build_data(cfg: TrainConfig, info: D.DistInfo, reporter: Reporter, check_only: bool = False):
    """(train items, val items) with the mask cache built once (rank 0 builds, the others wait); with
    `check_only` (a dry run) the images and labels are only checked (`_ReadCheck`)."""
    from boneseg.data.dataset import Item, prepare_cache
    from boneseg.data.exclude import exclude
    from boneseg.data.layout import discover
    from boneseg.data.masks import MaskCache, default_cache_dir
    from boneseg.data.split import run_fold

    samples = discover(cfg.data, skip_bad=cfg.skip_bad)
    if cfg.meta != "none":
        check_meta(cfg, samples)
    train_s, val_s = run_fold(samples, cfg.splits, cfg.folds, cfg.seed, cfg.fold)
    if cfg.exclude:  # out of training only: the validation fold stays comparable between runs
        kept = {s.name for s in exclude(samples, cfg.exclude)}
        train_s = [s for s in train_s if s.name in kept]
    if not val_s:
        source = f"--splits {cfg.splits}" if cfg.splits else f"--folds {cfg.folds}"
        raise DataError(
            f"{source}: fold {cfg.fold} has no images (nothing to validate on; "
            "choose another --fold or run boneseg split again)"
        )

    def cache_at(root: Path) -> MaskCache:  # a wrist model reads every sample, pseudo ones too, as wrist crops
        from boneseg.data.wrist import WristCache

        return WristCache(root, cfg.wrist_margin) if cfg.wrist else MaskCache(root)

    cache = cache_at(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(cfg.data))
    teacher, teacher_test = teachers(cfg)
    if teacher is not None and info.is_main:
        teacher.check(train_s)
    train_items = [Item(s, cache, teacher) for s in train_s]
    val_items = [Item(s, cache) for s in val_s]
    if teacher_test is not None:
        test_s = discover(cfg.data, "test")
        if info.is_main:
            teacher_test.check(test_s)
        train_items += [Item(s, cache, teacher_test) for s in test_s]
    for i, folder in enumerate(cfg.pseudo):
        pcache = cache_at(Path(cfg.cache_dir) / f"pseudo-{i}" if cfg.cache_dir else default_cache_dir(folder))
        train_items += [Item(s, pcache) for s in discover(folder, skip_bad=cfg.skip_bad)]
    bad_names: list[list[str] | None] = [None]
    if info.is_main:
        items = train_items + val_items
        if check_only:
            check = cast(MaskCache, _ReadCheck())  # duck-typed: prepare_cache calls only fresh and get
            items = [Item(it.sample, check) for it in items]
        bad = prepare_cache(
            items,
            cfg.size,
            cfg.workers,
            reporter,
            "checking images and labels" if check_only else "caching masks",
            skip_bad=cfg.skip_bad,
        )
        bad_names = [sorted({str(it.sample.image) for it, _ in bad})]
        if bad:
            reporter.message(f"--skip-bad: left out {len(bad)} sample(s):")
            for _, problem in bad:
                reporter.message(f"  {problem}")
    D.broadcast_object(bad_names, info)
    skipped = set(bad_names[0] or ())
    train_items = [it for it in train_items if str(it.sample.image) not in skipped]
    val_items = [it for it in val_items if str(it.sample.image) not in skipped]
    if not train_items:
        raise UsageError(f"--fold {cfg.fold}: no training images left")
    if not val_items:
        raise DataError(f"--fold {cfg.fold}: no validation images left after --skip-bad")
    return train_items, val_items


def teachers(cfg: TrainConfig):
    """The run's `boneseg.data.teacher.Teacher` of the train images and of the test images (None: none)."""
    from boneseg.data.teacher import make_teacher

    if not cfg.teacher:
        return None, None
    train = make_teacher(cfg.teacher, cfg.teacher_weights, "--teacher")
    test = make_teacher(cfg.teacher_test, cfg.teacher_weights, "--teacher-test") if cfg.teacher_test else None
    return train, test


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)


def build_criterion(cfg: TrainConfig):
    """The run's segmentation loss, every setting from the config (terms, weights, distance clip)."""
    from boneseg.modelling.losses import build_loss

    return build_loss(cfg.loss, cfg.distance_clip)


def make_sampler(n_items: int, cfg: TrainConfig, info: D.DistInfo, train: bool):
    """The `EpochBatchSampler` of this rank over `n_items` (training: shuffled, incomplete last batch dropped)."""
    from boneseg.data.dataset import EpochBatchSampler

    return EpochBatchSampler(
        n_items,
        cfg.batch_size,
        cfg.seed,
        shuffle=train,
        drop_last=train and n_items >= cfg.batch_size * info.world_size,
        rank=info.rank,
        world_size=info.world_size,
    )


def epoch_steps(n_items: int, sampler, cfg: TrainConfig, info: D.DistInfo) -> int:
    """Optimizer steps per epoch of the training `sampler` over `n_items` images; warns when a rank gets
    fewer images than ``--batch-size`` (its one batch per epoch is that much smaller than asked)."""
    per_rank = -(-n_items // info.world_size)
    if per_rank < cfg.batch_size and info.is_main:
        warnings.warn(
            f"--batch-size {cfg.batch_size}: only {per_rank} training image(s) per "
            f"{'rank' if info.enabled else 'epoch'}, so each step takes {per_rank} (the batch is smaller than asked)",
            BonesegWarning,
            stacklevel=2,
        )
    return -(-sampler.batches_per_epoch() // cfg.accumulate)


def make_loader(items, cfg: TrainConfig, info: D.DistInfo, train: bool):
    """A DataLoader over `items` driven by an `EpochBatchSampler` (returns loader, sampler)."""
    from boneseg.data.dataset import Loader, SegDataset, collate
    from boneseg.data.transforms import build_augmentation
    from boneseg.modelling.heads import meta_table

    transform = build_augmentation(cfg.aug, cfg.crop, flip=cfg.unify_side is None) if train else None
    distance = cfg.distance_clip if build_criterion(cfg).needs_distance else None
    meta = meta_table(cfg.data) if cfg.meta != "none" else None
    soft = train and bool(cfg.teacher)
    dataset = SegDataset(items, cfg.size, transform, cfg.unify_side, cfg.channels, distance, meta, soft)
    sampler = make_sampler(len(items), cfg, info, train)
    loader = Loader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=info.device.type == "cuda",
        persistent_workers=cfg.workers > 0,
        worker_init_fn=_worker_init if cfg.workers > 0 else None,
        generator=torch.Generator(),
    )  # never touches the global RNG (resume exactness)
    return loader, sampler
