"""Training/validation datasets over the mask cache, and a resumable, distributed batch sampler.

Randomness is a pure function of (seed, epoch, sample index): the sampler orders an epoch from
(seed, epoch) and hands each item its own seed, which fixes that item's augmentation. A run stopped
anywhere and resumed therefore sees exactly the batches an uninterrupted run would, with any number of
data-loader workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from boneseg.data.layout import Sample
from boneseg.data.masks import MaskCache
from boneseg.data.teacher import Teacher
from boneseg.data.transforms import augment
from boneseg.progress import SILENT, Reporter


class Loader(DataLoader):
    """A DataLoader whose workers' errors arrive as themselves: torch re-raises a worker's exception as
    ``DataError("Caught DataError in DataLoader worker process 0.\\nOriginal Traceback …")``; iterating a
    `Loader` raises ``DataError("<the original message>")`` instead."""

    def __iter__(self) -> Iterator:  # type: ignore[override]  # the same batches, through a generator
        try:
            yield from super().__iter__()
        except Exception as exc:
            original = worker_message(exc)
            if original is None:
                raise
            try:
                unwrapped = type(exc)(original)
            except Exception:  # noqa: BLE001 - a type that needs other arguments: keep torch's error
                raise exc from None
            raise unwrapped from None


def worker_message(exc: BaseException) -> str | None:
    """The original message of an exception a data-loader worker raised, None if `exc` is not one."""
    text = str(exc)
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return None
    kind = type(exc)
    for name in (f"{kind.__module__}.{kind.__qualname__}", kind.__qualname__):
        at = text.rfind(f"\n{name}: ")
        if at >= 0:
            return text[at + len(name) + 3 :].rstrip("\n")
    return None


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample `index` in `epoch` (a 32-bit int)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@dataclass(frozen=True)
class Item:
    """A sample and the cache that serves it (training data and each pseudo folder have their own), and
    the teacher whose probabilities are its soft target (distillation; None: none)."""

    sample: Sample
    cache: MaskCache
    teacher: Teacher | None = None


class SegDataset(Dataset):
    """Images (1, H, W) uint8 and masks (29, H, W) uint8 at `size`, augmented and side-unified.

    Indexed by ``(index, seed)`` pairs from `EpochBatchSampler` (plain ints use seed 0).

    Args:
        items: samples with their caches.
        size: the side the cache stores images at (None: original size).
        transform: albumentations Compose (or None) applied with the item's seed.
        unify_side: ``"R"``/``"L"`` mirrors every image of the other side (from its labels), None keeps all.
        channels: input-channel mode (`boneseg.data.channels`); CLAHE/edge modes give (C, H, W) images, made
            after augmentation.
        distance: clip of the signed distance maps to add as ``dist`` (29, H, W) uint8 (augmented with the
            masks), None for none.
        meta: {patient: `boneseg.data.meta.meta_vector`} to add ``meta`` (8,) and ``side`` (1 right, 0 left,
            NaN unknown, from the augmented masks); None for none. Patients without a row get zeros.
        soft: add ``teacher`` (29, H, W) uint8, the item's teacher probabilities (augmented with the masks;
            an item without a teacher gets its labels x 255), and ``labelled`` (bool); an unlabelled item's
            ``mask`` is all zeros. Its side, when its name and labels give none, is the teacher's.
    """

    def __init__(
        self,
        items: Sequence[Item],
        size: int | None,
        transform=None,
        unify_side: str | None = None,
        channels: str = "gray",
        distance: int | None = None,
        meta: dict | None = None,
        soft: bool = False,
    ):
        from boneseg.data.channels import is_derived

        self.items, self.size, self.transform, self.unify_side = list(items), size, transform, unify_side
        self.channels = channels if is_derived(channels) else None
        self.distance, self.meta, self.soft = distance, meta, soft

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        item = self.items[index]
        cached = item.cache.get(item.sample, self.size)
        image, masks = cached.image, cached.masks
        dist = (
            item.cache.distance(item.sample, self.size, self.distance)
            if (self.distance and masks is not None)
            else None
        )
        side, labelled, soft = cached.side, masks is not None, None
        if self.soft:
            if item.teacher is not None:
                soft = item.cache.soft_target(item.sample, self.size, item.teacher)
            else:
                assert masks is not None  # every unlabelled item of a distillation has a teacher
                soft = np.asarray(masks).view(np.uint8) * np.uint8(255)
            if masks is None:
                masks = np.zeros(soft.shape, np.uint8)
            if side not in ("L", "R"):
                from boneseg.data.layout import side_from_masks

                side = side_from_masks(soft, 127) or side
        if self.unify_side and side in ("L", "R") and side != self.unify_side:
            image, masks = image[:, ::-1], (masks[:, :, ::-1] if masks is not None else None)
            dist = dist[:, :, ::-1] if dist is not None else None
            soft = soft[:, :, ::-1] if soft is not None else None
        # distance maps and soft targets are warped with the masks (nearest), split off again after
        parts = [np.asarray(a).view(np.uint8) for a in (masks, dist, soft) if a is not None]
        stacked = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else None)
        image, stacked = augment(
            self.transform,
            np.ascontiguousarray(image),
            None if stacked is None else np.ascontiguousarray(stacked),
            seed,
        )
        if stacked is not None:
            n = len(stacked) // len(parts)
            masks = stacked[:n]
            dist = stacked[n : 2 * n] if dist is not None else None
            soft = stacked[-n:] if soft is not None else None
        image = np.ascontiguousarray(image)
        if self.channels:
            from boneseg.data.channels import make_channels

            out = {"image": torch.from_numpy(make_channels(image, self.channels)), "index": index}
        else:
            out = {"image": torch.from_numpy(image)[None], "index": index}
        if masks is not None:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(masks).view(np.uint8))
        if dist is not None:
            out["dist"] = torch.from_numpy(np.ascontiguousarray(dist))
        if soft is not None:
            out["teacher"] = torch.from_numpy(np.ascontiguousarray(soft))
            out["labelled"] = torch.tensor(labelled)
        if self.meta is not None:
            from boneseg.data.meta import META_DIM, side_target

            vec = self.meta.get(item.sample.patient)
            out["meta"] = torch.from_numpy(vec if vec is not None else np.zeros(META_DIM, np.float32))
            out["side"] = torch.tensor(side_target(masks) if masks is not None else float("nan"))
        return out


class EpochBatchSampler(Sampler):
    """Batches of ``(index, item_seed)`` for one rank, reproducible from (seed, epoch), resumable mid-epoch.

    Shuffled order comes from ``torch.randperm`` with a generator seeded by (seed, epoch). With
    ``world_size > 1`` the order is padded to a multiple of the world size (training) or not (validation:
    each image once overall) and split as ``order[rank::world_size]``, like DistributedSampler.

    Args:
        n: dataset length.
        batch_size: items per batch.
        seed: base seed.
        shuffle: shuffle each epoch (training) or keep order (validation).
        drop_last: drop a last incomplete batch (training; BatchNorm dislikes batches of 1).
        rank, world_size: this process's share.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last, self.rank, self.world_size = shuffle, drop_last, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select `epoch` and skip its first `start_batch` batches (resume)."""
        self.epoch, self.start = epoch, start_batch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world_size > 1:
            if self.shuffle and self.n % self.world_size:
                order += order[: self.world_size - self.n % self.world_size]
            order = order[self.rank :: self.world_size]
        return order

    def batches_per_epoch(self) -> int:
        """Batches in a whole epoch (for this rank)."""
        per_rank = len(self._indices())
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start)

    def __iter__(self):
        order = self._indices()
        for b in range(self.start, self.batches_per_epoch()):
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(i, item_seed(self.seed, self.epoch, i)) for i in chunk]


def prepare_cache(
    items: Sequence[Item],
    size: int | None,
    workers: int = 0,
    reporter: Reporter = SILENT,
    description: str = "caching masks",
    skip_bad: bool = False,
) -> list[tuple[Item, str]]:
    """Build every missing or stale cache entry once (threads; OpenCV and zlib release the GIL).

    Every item is checked before training starts. A bad one (unreadable image, broken label) raises a
    `DataError` naming it and counting the others, unless `skip_bad`: then the bad items and their
    problems are returned (empty list when all are good).
    """
    from boneseg.errors import DataError

    def build(it: Item) -> str | None:
        try:
            it.cache.fresh(it.sample, size) or it.cache.get(it.sample, size)
        except DataError as exc:
            return str(exc)
        return None

    threads = max(1, workers or min(4, os.cpu_count() or 1))
    bad: list[tuple[Item, str]] = []
    with reporter.task(description, len(items), "img") as task, ThreadPoolExecutor(threads) as pool:
        for it, problem in zip(items, pool.map(build, items)):
            if problem:
                bad.append((it, problem))
            task.advance()
    if bad and not skip_bad:
        more = (
            f" (and {len(bad) - 1} more bad sample(s); --skip-bad leaves them out)"
            if len(bad) > 1
            else " (--skip-bad leaves it out)"
        )
        raise DataError(bad[0][1] + more)
    return bad


def collate(batch: list[dict]) -> dict:
    """Stack a list of dataset items (images and masks stay uint8)."""
    out = {"image": torch.stack([b["image"] for b in batch]), "index": torch.tensor([b["index"] for b in batch])}
    for key in ("mask", "dist", "meta", "side", "teacher", "labelled"):
        if all(key in b for b in batch):
            out[key] = torch.stack([b[key] for b in batch])
    return out
