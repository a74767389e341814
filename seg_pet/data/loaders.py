"""Batches: DataLoaders with seeded shuffles, device-resident batches, worker counts, pixel counts.

Every epoch gets a fresh loader seeded from (run seed, epoch), so a resumed run replays exactly
the batches and augmentations an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from seg_pet.config import Config
from seg_pet.data.cache import DeviceBatches, DeviceCache
from seg_pet.labels import IGNORE_INDEX
from seg_pet.data.oxford import PetSegmentation, read_trimap
from seg_pet.data.transforms import BatchAugment
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.errors import ConfigError
from seg_pet.runtime.seeding import epoch_seed
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


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int,
    seed: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffling and worker augmentation RNG depend only on `seed`.

    Training builds one per epoch with seed = f(run seed, epoch), so a resumed run replays
    exactly the batches and augmentations an uninterrupted run would have seen. That is also
    why workers are not persistent: persistent workers keep their RNG streams across epochs,
    so epoch k after a resume would differ. The price is a worker start per epoch
    (docs/performance.md, measured by scripts/benchmark.py as `epoch_start_s`).
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        drop_last=drop_last,
        prefetch_factor=4 if num_workers > 0 else None,
        collate_fn=collate_native if getattr(dataset, "native_masks", False) else None,
        worker_init_fn=worker_signals if num_workers > 0 else None,
    )


def count_pixels(dataset: PetSegmentation, num_classes: int) -> list[int]:
    """Pixel count per class over a dataset's original-resolution trimaps (ignored pixels not counted)."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for idx in range(len(dataset)):
        trimap = read_trimap(dataset.trimaps[idx])
        labels = dataset.lut[trimap.as_subclass(torch.Tensor).long()]
        labels = labels[labels != IGNORE_INDEX]
        counts += torch.bincount(labels.flatten(), minlength=num_classes)[:num_classes]
    return counts.tolist()


def move_caches_to_device(datasets: dict[str, PetSegmentation], device: torch.device, log) -> dict[str, DeviceCache]:
    """data.cache: device: the train and val memory caches moved to the training device (DeviceCache)."""
    try:
        moved = {split: DeviceCache(datasets[split], device) for split in ("train", "val")}
    except torch.OutOfMemoryError:
        raise ConfigError(f"data.cache: device: the decoded train and val images do not fit in the memory of {device} "
                          "next to the model; use data.cache: memory") from None
    log(f"cache: train and val moved to {device}, {sum(c.nbytes() for c in moved.values()) / 2**20:.0f} MiB; "
        "training batches are augmented there (BatchAugment)")
    return moved


def epoch_train_loader(cfg: Config, dataset: PetSegmentation, on_device: Optional[dict[str, DeviceCache]], batch_size: int,
                       workers: int, epoch: int, runtime: Runtime) -> Iterable:
    """One epoch's training batches: a fresh DataLoader, or DeviceBatches with data.cache: device.

    Reseeding torch's global RNG and the order from (seed, epoch) first makes a resumed run replay
    the same shuffles and augmentations."""
    seed = epoch_seed(cfg.run.seed, epoch)
    torch.manual_seed(seed)
    if on_device is not None:
        return DeviceBatches(on_device["train"], batch_size, shuffle=True, drop_last=True, augment=BatchAugment(cfg.data.image_size), seed=seed)
    return make_loader(dataset, batch_size, shuffle=True, num_workers=workers, seed=seed, pin_memory=runtime.pin_memory, drop_last=True)


def val_loader_for(dataset: PetSegmentation, on_device: Optional[dict[str, DeviceCache]], batch_size: int, workers: int,
                   runtime: Runtime) -> Iterable:
    """The validation batches: a DataLoader, or slices of the device cache with data.cache: device."""
    if on_device is not None:
        return DeviceBatches(on_device["val"], batch_size, shuffle=False)
    return make_loader(dataset, batch_size, shuffle=False, num_workers=workers, pin_memory=runtime.pin_memory)
