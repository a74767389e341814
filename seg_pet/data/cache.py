"""Decoded-image cache (`data.cache: none | memory | disk | device`): decode every image once.

Stores `dataset.prepare(*dataset.load(i))` for every image, as uint8 (see transforms.CacheResize), so a
memory or disk cache changes no sample: every batch is bit-identical with and without it.

memory  built once in the main process (decoding spread over DataLoader workers); the per-epoch workers
        are forked and read it copy-on-write.
disk    the same tensors in one file per dataset under `<data.root>/.seg_pet_cache/`, or the run
        folder's `cache/` when data.root is read-only; the file name hashes the cached step and every
        source file's path, size and mtime, so a changed input selects a new file.
device  the memory cache moved once to the training device; batches are cut from it with no DataLoader
        (DeviceBatches), training batches augmented whole on the device (transforms.BatchAugment).

The test split is never cached: it is read once per run. Written by hand: neither torch nor torchvision
has a decoded-dataset cache. What each mode costs and gives: docs/performance.md.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from seg_pet.data.transforms import normalise_batch
from seg_pet.runtime.distributed import shard
from seg_pet.runtime.errors import DataError
from seg_pet.runtime.fileio import atomic_path
from seg_pet.runtime.paths import is_writable_dir
from seg_pet.runtime.runpaths import RunPaths

FORMAT_VERSION = 1  # bump when what is stored changes, so old files are not read
CACHE_DIRNAME = ".seg_pet_cache"
Entries = list[tuple[torch.Tensor, torch.Tensor]]


def cache_key(dataset: Any) -> str:
    """Hash of the format, the resize setting, and each source file's path, size and mtime."""
    h = hashlib.sha256(f"seg_pet cache v{FORMAT_VERSION}\n{dataset.prepare!r}\n".encode())
    spec = getattr(dataset, "spec", None)
    if spec is not None and spec.coding == "color":  # colour masks are cached as class ids: the key holds the coding
        h.update(f"{spec.coding}\t{spec.codes!r}\n".encode())
    for image, mask in zip(dataset.images, dataset.masks):
        for path in (Path(image), Path(mask)):
            try:
                st = path.stat()
            except FileNotFoundError:
                raise DataError(f"file missing: {path}") from None
            h.update(f"{path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def cache_file_name(dataset: Any) -> str:
    prepare = dataset.prepare
    size = f"-{prepare.size}px" if prepare.size else ""
    return f"{prepare.mode}{size}-{len(dataset)}img-{cache_key(dataset)}.pt"


def disk_cache_dir(data_root: str | Path, run_dir: Optional[str | Path] = None) -> Path:
    """`<data.root>/.seg_pet_cache`, or `<run_dir>/cache` when data.root is read-only."""
    data_root = Path(data_root)
    inside_root = data_root / CACHE_DIRNAME
    # is_writable_dir: a folder without any write bit was marked read-only on purpose (a shared dataset), even for root.
    if is_writable_dir(inside_root) or (not inside_root.exists() and is_writable_dir(data_root)):
        return inside_root
    if run_dir is None:
        raise DataError(f"data.cache: disk: {data_root} is read-only and there is no run folder to hold the cache; use data.cache: memory")
    return RunPaths(run_dir).cache


class _Prepared(Dataset):
    """prepare(load(i)) as plain uint8 tensors: what the cache holds."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset.prepare(*self.dataset.load(idx))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t


def decode_all(dataset: Any, num_workers: int = 0) -> Entries:
    """Every (image, mask) decoded and resized once, in order; the work is spread over `num_workers`."""
    loader = DataLoader(_Prepared(dataset), batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_keep)
    entries = []
    for image, mask in loader:
        if num_workers:
            # Tensors from workers live in shared-memory segments, one file descriptor each;
            # thousands of them exhaust the descriptor limit. A private copy releases them.
            image, mask = image.clone(), mask.clone()
        entries.append((image, mask))
    return entries


def _nbytes(entries: Entries) -> int:
    return sum(t.numel() * t.element_size() for pair in entries for t in pair)


def _read_disk(path: Path, key: str, count: int) -> Optional[Entries]:
    """The entries of a cache file, or None when it is unreadable or does not match (then it is rebuilt)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a truncated or foreign file: rebuild rather than fail
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION or payload.get("key") != key:
        return None
    images, masks = payload.get("images"), payload.get("masks")
    if not isinstance(images, list) or not isinstance(masks, list) or len(images) != count or len(masks) != count:
        return None
    return list(zip(images, masks))


def attach_cache(
    dataset: Any,
    mode: str,
    *,
    data_root: str | Path,
    run_dir: Optional[str | Path] = None,
    num_workers: int = 0,
    log: Callable[[str], None] = print,
    name: str = "dataset",
) -> Optional[Path]:
    """Fill `dataset.cache` (mode memory or disk; none clears it). Returns the disk cache file, if any."""
    if mode == "none":
        dataset.cache = None
        return None
    if mode == "device":  # decoded into memory here; DeviceCache moves it to the device
        mode = "memory"
    if mode not in ("memory", "disk"):
        raise ValueError(f"unknown cache mode {mode!r}")
    if dataset.prepare is None:
        raise ValueError("this dataset has no `prepare` resize, so there is nothing to cache")
    dataset.cache = None  # never build from an older cache
    started = time.perf_counter()
    if mode == "memory":
        entries = decode_all(dataset, num_workers)
        dataset.cache = entries
        log(
            f"cache: {name}: {len(entries)} images decoded into memory, {_nbytes(entries) / 2**20:.0f} MiB, {time.perf_counter() - started:.1f}s"
        )
        return None
    folder = disk_cache_dir(data_root, run_dir)
    file_name = cache_file_name(dataset)
    key = file_name.rsplit("-", 1)[1].removesuffix(".pt")
    path = folder / file_name
    entries = _read_disk(path, key, len(dataset)) if path.is_file() else None
    if entries is None:
        built = decode_all(dataset, num_workers)
        payload = {
            "format": FORMAT_VERSION,
            "key": key,
            "prepare": repr(dataset.prepare),
            "files": [Path(p).name for p in dataset.images],
            "images": [image for image, _ in built],
            "masks": [mask for _, mask in built],
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        del built, payload
        entries = _read_disk(path, key, len(dataset))  # mmap'd: file-backed pages, shared by workers
        if entries is None:
            raise DataError(f"data.cache: could not read back the cache file just written: {path}")
        log(
            f"cache: {name}: {len(entries)} images decoded into {path} ({path.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - started:.1f}s)"
        )
    else:
        log(f"cache: {name}: reading {path}")
    dataset.cache = entries
    return path


def cache_datasets(
    cfg: Any, datasets: dict[str, Any], run_dir: Optional[Path], num_workers: int, log: Callable[[str], None] = print
) -> None:
    """Apply `data.cache` to the train and val datasets (before any training loader is created)."""
    for split in ("train", "val"):
        if split in datasets:
            attach_cache(
                datasets[split], cfg.data.cache, data_root=cfg.data.root, run_dir=run_dir, num_workers=num_workers, log=log, name=split
            )


# --------------------------------------------------------------------------- data.cache: device


class DeviceCache:
    """A dataset's memory cache on `device`: uint8 images and uint8 class labels (mask codes mapped once).

    Validation entries all have the same size and are stacked into one tensor, so a batch is a slice;
    training entries are the originals (differing sizes) and stay a list for BatchAugment.
    The dataset's host copy is released (`dataset.cache = None`): overlays then decode their few
    images from the files.
    """

    def __init__(self, dataset: Any, device: torch.device):
        if dataset.cache is None:
            raise ValueError("DeviceCache needs the dataset's memory cache (attach_cache) first")
        lut = dataset.lut.to(torch.uint8)  # 0..C-1 and IGNORE_INDEX 255 all fit in uint8
        self.images = [image.to(device) for image, _ in dataset.cache]
        self.labels = [lut[mask.long()].to(device) for _, mask in dataset.cache]
        self.device, self.native_masks = device, dataset.native_masks
        dataset.cache = None
        self.stacked = len({tuple(image.shape) for image in self.images}) == 1
        if self.stacked:
            self.images = torch.stack(self.images)  # type: ignore[assignment]
            if not self.native_masks:
                self.labels = torch.stack(self.labels)  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.images)

    def nbytes(self) -> int:
        tensors = [self.images] if self.stacked else list(self.images)
        tensors += [self.labels] if isinstance(self.labels, torch.Tensor) else list(self.labels)
        return sum(t.numel() * t.element_size() for t in tensors)


class DeviceBatches:
    """One pass over a DeviceCache in batches that are already on the device: a DataLoader stand-in for the engine.

    Order: shuffled by a generator seeded with `seed` (as data.make_loader). With `augment`
    (training) each batch goes through BatchAugment; without it (evaluation, or data.augment: false)
    images are the cached size and only converted to float and normalised, as eval_transforms does
    after its resize. `shard` = (rank, world): under torchrun each process takes its share of the
    order (runtime.distributed.shard; equal shares when batches drop the last, incomplete one).
    """

    def __init__(
        self,
        cache: DeviceCache,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool = False,
        augment: Optional[Callable] = None,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ):
        self.cache, self.batch_size, self.shuffle, self.drop_last = cache, batch_size, shuffle, drop_last
        self.augment, self.seed, self.shard = augment, seed, shard
        if augment is None and not cache.stacked:
            raise ValueError("batches without augmentation need cached images of one size (an evaluation cache)")

    def __len__(self) -> int:
        rank, world = self.shard
        n = len(self.cache) // world if self.drop_last else len(range(rank, len(self.cache), world))  # this process's share
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> torch.Tensor:
        """This process's cache indices for one pass, in order."""
        n = len(self.cache)
        # train seeds torch's global RNG, which BatchAugment draws from, with the same `seed`: the order
        # gets a scrambled seed so that it does not replay the augmentation's random stream.
        order_seed = (self.seed * 6364136223846793005 + 1442695040888963407) % 2**63
        order = torch.randperm(n, generator=torch.Generator().manual_seed(order_seed)) if self.shuffle else torch.arange(n)
        return shard(order, *self.shard, equal=self.drop_last)

    def __iter__(self):
        order = self.order()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            picked = order[start : start + self.batch_size]
            labels = self.cache.labels
            if self.augment is not None:
                ids = picked.tolist()
                yield self.augment([self.cache.images[i] for i in ids], [labels[i] for i in ids])
                continue
            rows = picked.to(self.cache.device)
            images = normalise_batch(self.cache.images[rows].float().div_(255))  # type: ignore[index]
            if isinstance(labels, torch.Tensor):
                yield images, labels[rows].long()
            else:
                yield images, [labels[i].long() for i in picked.tolist()]
