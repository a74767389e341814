"""Batches: DataLoaders with seeded shuffles, device-resident batches, worker counts, pixel counts.

Every epoch gets a fresh loader seeded from (run seed, epoch), so a resumed run replays exactly
the batches and augmentations an uninterrupted run would have seen.

Under torchrun every process draws the same seeded order and takes its own share of it (ShardSampler,
DeviceBatches' `shard`), as DistributedSampler does: disjoint shares of the training images every
epoch, and evaluation images each scored once by one process (no padding duplicates).
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterable
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from seg_pet.config import Config
from seg_pet.data.cache import DeviceBatches, DeviceCache
from seg_pet.data.segmentation import SegmentationDataset
from seg_pet.data.transforms import BatchAugment, CutMixBatches
from seg_pet.labels import IGNORE_INDEX
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.distributed import rank, shard, world_size
from seg_pet.runtime.errors import ConfigError
from seg_pet.runtime.seeding import epoch_seed, process_seed
from seg_pet.runtime.signals import worker_signals


def usable_cpus() -> int:
    """CPUs this process may run on (taskset, cgroup cpusets), not the host's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_num_workers(setting: int | str) -> int:
    """`auto`: one worker per usable CPU, minus one for the main process, at most 16.

    A fast GPU step needs many decoding workers; the cap keeps prefetch memory bounded on big hosts.
    """
    if setting == "auto":
        return min(16, max(0, usable_cpus() - 1))
    return int(setting)


def collate_native(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images (all image_size) stacked; masks of differing original sizes kept as a list."""
    return torch.stack([image for image, _ in batch]), [mask for _, mask in batch]


class ShardSampler(Sampler[int]):
    """Process `rank`'s share of one pass over `size` items (runtime.distributed.shard), as DistributedSampler.

    Shuffled, the order is torch.randperm(size, generator): drawn exactly as DataLoader's RandomSampler
    draws it from the loader's generator, so with one process this is plain `shuffle=True`; every process
    seeds its generator alike, so all of them cut the same order. `equal` (training): equal shares, the
    tail dropped; otherwise (evaluation) every item once.
    """

    def __init__(self, size: int, rank: int, world: int, *, generator: Optional[torch.Generator] = None, equal: bool):
        self.size, self.rank, self.world, self.generator, self.equal = size, rank, world, generator, equal

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator) if self.generator is not None else torch.arange(self.size)
        return iter(shard(order, self.rank, self.world, equal=self.equal).tolist())

    def __len__(self) -> int:
        return self.size // self.world if self.equal else len(range(self.rank, self.size, self.world))


def worker_start(worker_id: int, rank: int = 0) -> None:
    """A DataLoader worker's first step: signals to the main process; its own augmentation stream on ranks > 0.

    DataLoader seeds worker k with the loader generator's base seed + k, the same in every process
    under torchrun (they share the shuffle seed); process_seed gives each rank different crops.
    """
    worker_signals(worker_id)
    if rank:
        seed = process_seed(torch.initial_seed(), rank)
        torch.manual_seed(seed)
        random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int,
    seed: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> DataLoader:
    """A DataLoader whose shuffling and worker augmentation RNG depend only on `seed`.

    Training builds one per epoch with seed = f(run seed, epoch), so a resumed run replays
    exactly the batches and augmentations an uninterrupted run would have seen. That is also
    why workers are not persistent: persistent workers keep their RNG streams across epochs,
    so epoch k after a resume would differ. The price is a worker start per epoch
    (docs/performance.md, measured by scripts/benchmark.py as `epoch_start_s`).
    `shard` = (rank, world): this process's share of the images (ShardSampler; equal shares with drop_last).
    """
    generator = torch.Generator().manual_seed(seed)
    rank, world = shard
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank, world, generator=generator if shuffle else None, equal=drop_last),
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        drop_last=drop_last,
        prefetch_factor=4 if num_workers > 0 else None,
        collate_fn=collate_native if getattr(dataset, "native_masks", False) else None,
        worker_init_fn=functools.partial(worker_start, rank=rank) if num_workers > 0 else None,
    )


def count_pixels(dataset: SegmentationDataset, num_classes: int) -> list[int]:
    """Pixel count per class over a dataset's original-resolution masks (ignored pixels not counted)."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for idx in range(len(dataset)):
        labels = dataset.labels(idx)
        labels = labels[labels != IGNORE_INDEX]
        counts += torch.bincount(labels.flatten(), minlength=num_classes)[:num_classes]
    return counts.tolist()


def move_caches_to_device(datasets: dict[str, SegmentationDataset], device: torch.device, log) -> dict[str, DeviceCache]:
    """data.cache: device: the train and val memory caches moved to the training device (DeviceCache)."""
    try:
        moved = {split: DeviceCache(datasets[split], device) for split in ("train", "val")}
    except torch.OutOfMemoryError:
        raise ConfigError(
            f"data.cache: device: the decoded train and val images do not fit in the memory of {device} "
            "next to the model; use data.cache: memory"
        ) from None
    log(
        f"cache: train and val moved to {device}, {sum(c.nbytes() for c in moved.values()) / 2**20:.0f} MiB; "
        "training batches are augmented there (BatchAugment)"
    )
    return moved


def epoch_train_loader(
    cfg: Config,
    dataset: SegmentationDataset,
    on_device: Optional[dict[str, DeviceCache]],
    batch_size: int,
    workers: int,
    epoch: int,
    runtime: Runtime,
) -> Iterable:
    """One epoch's training batches (this process's share): a fresh DataLoader, or DeviceBatches with data.cache: device.

    Reseeding torch's global RNG and the order from (seed, epoch) first makes a resumed run replay
    the same shuffles and augmentations. The order's seed is the same in every process; the
    augmentation's is the process's own (process_seed)."""
    seed = epoch_seed(cfg.run.seed, epoch)
    torch.manual_seed(process_seed(seed, rank()))
    if on_device is not None:
        augment = BatchAugment(cfg.data.image_size, cfg.data.crop_scale, cfg.data.rotation) if cfg.data.augment else None
        loader = DeviceBatches(on_device["train"], batch_size, shuffle=True, drop_last=True, augment=augment, seed=seed, shard=this_shard())
    else:
        loader = make_loader(
            dataset,
            batch_size,
            shuffle=True,
            num_workers=workers,
            seed=seed,
            pin_memory=runtime.pin_memory,
            drop_last=True,
            shard=this_shard(),
        )
    if cfg.data.augment and cfg.data.cutmix > 0:
        return CutMixBatches(loader, cfg.data.cutmix, process_seed(seed, rank()))
    return loader


def val_loader_for(
    dataset: SegmentationDataset, on_device: Optional[dict[str, DeviceCache]], batch_size: int, workers: int, runtime: Runtime
) -> Iterable:
    """This process's validation batches: a DataLoader, or slices of the device cache with data.cache: device."""
    if on_device is not None:
        return DeviceBatches(on_device["val"], batch_size, shuffle=False, shard=this_shard())
    return make_loader(dataset, batch_size, shuffle=False, num_workers=workers, pin_memory=runtime.pin_memory, shard=this_shard())


def this_shard() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without torchrun."""
    return rank(), world_size()
