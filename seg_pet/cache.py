"""Decoded-image cache (`data.cache: none | memory | disk`): decode every image once (and resize once for evaluation).

What is stored, per dataset, is `dataset.prepare(*dataset.load(i))` for every image i, as uint8:
    train       the decoded original, not resized: random crop, flip and jitter then see exactly
                the pixels they would see without a cache (a shrunk copy measurably changed
                results, see transforms.CacheResize);
    val         image_size x image_size, exactly the first step of eval_transforms, which then
                has nothing left to resize: cached evaluation is bit-identical to uncached;
    native      (eval.native_resolution) image at image_size, trimap at its original size.
So a cache changes no sample: with the same seeds and worker count, every batch of training
and evaluation is bit-identical with and without it (tests/test_cache.py).

memory  built once in the main process (decoding spread over DataLoader workers) before any
        training loader exists. The per-epoch loader workers are forked from the main process
        and read the same pages copy-on-write; the tensor data is never written, so nothing is
        copied and nothing is rebuilt per worker or per epoch.
disk    the same tensors in one file per dataset, `<data.root>/.seg_pet_cache/<name>.pt`, or
        `<run folder>/cache/` when data.root is read-only (nothing is written anywhere else).
        The file name holds a hash of the cached step (validation: its resize size) and of every
        source file's path, size and mtime, so a changed image or trimap, or a new image_size
        for validation, selects a new file and the cache is rebuilt. Files are written atomically and loaded with mmap, so workers share
        the OS page cache. Old files are never deleted automatically: removing the folder is
        always safe.

The test split is never cached: it is read once per run.
Written by hand: neither torch nor torchvision has a decoded-dataset cache.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from seg_pet.errors import DataError
from seg_pet.fileio import atomic_path

FORMAT_VERSION = 1  # bump when what is stored changes, so old files are not read
CACHE_DIRNAME = ".seg_pet_cache"
Entries = list[tuple[torch.Tensor, torch.Tensor]]


def cache_key(dataset: Any) -> str:
    """Hash of the format, the resize setting, and each source file's path, size and mtime."""
    h = hashlib.sha256(f"seg_pet cache v{FORMAT_VERSION}\n{dataset.prepare!r}\n".encode())
    for image, trimap in zip(dataset.images, dataset.trimaps):
        for path in (Path(image), Path(trimap)):
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


def _writable(folder: Path) -> bool:
    # root passes os.access for every folder; a folder without any write bit has been marked
    # read-only on purpose (e.g. a shared dataset), so that is respected even as root.
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and bool(mode & 0o222) and os.access(folder, os.W_OK)


def disk_cache_dir(data_root: str | Path, run_dir: Optional[str | Path] = None) -> Path:
    """`<data.root>/.seg_pet_cache`, or `<run_dir>/cache` when data.root is read-only."""
    data_root = Path(data_root)
    inside_root = data_root / CACHE_DIRNAME
    if _writable(inside_root) or (not inside_root.exists() and _writable(data_root)):
        return inside_root
    if run_dir is None:
        raise DataError(f"data.cache: disk: {data_root} is read-only and there is no run folder to hold the cache; use data.cache: memory")
    return Path(run_dir) / "cache"


class _Prepared(Dataset):
    """prepare(load(i)) as plain uint8 tensors: what the cache holds."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, trimap = self.dataset.prepare(*self.dataset.load(idx))
        return image.as_subclass(torch.Tensor), trimap.as_subclass(torch.Tensor)


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t


def decode_all(dataset: Any, num_workers: int = 0) -> Entries:
    """Every (image, trimap) decoded and resized once, in order; the work is spread over `num_workers`."""
    loader = DataLoader(_Prepared(dataset), batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_keep)
    entries = []
    for image, trimap in loader:
        if num_workers:
            # Tensors from workers live in shared-memory segments, one file descriptor each;
            # thousands of them exhaust the descriptor limit. A private copy releases them.
            image, trimap = image.clone(), trimap.clone()
        entries.append((image, trimap))
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
    images, trimaps = payload.get("images"), payload.get("trimaps")
    if not isinstance(images, list) or not isinstance(trimaps, list) or len(images) != count or len(trimaps) != count:
        return None
    return list(zip(images, trimaps))


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
    if mode not in ("memory", "disk"):
        raise ValueError(f"unknown cache mode {mode!r}")
    if dataset.prepare is None:
        raise ValueError("this dataset has no `prepare` resize, so there is nothing to cache")
    dataset.cache = None  # never build from an older cache
    started = time.perf_counter()
    if mode == "memory":
        entries = decode_all(dataset, num_workers)
        dataset.cache = entries
        log(f"cache: {name}: {len(entries)} images decoded into memory, {_nbytes(entries) / 2**20:.0f} MiB, {time.perf_counter() - started:.1f}s")
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
            "trimaps": [trimap for _, trimap in built],
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        del built, payload
        entries = _read_disk(path, key, len(dataset))  # mmap'd: file-backed pages, shared by workers
        if entries is None:
            raise DataError(f"data.cache: could not read back the cache file just written: {path}")
        log(f"cache: {name}: {len(entries)} images decoded into {path} ({path.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - started:.1f}s)")
    else:
        log(f"cache: {name}: reading {path}")
    dataset.cache = entries
    return path


def cache_datasets(cfg: Any, datasets: dict[str, Any], run_dir: Optional[Path], num_workers: int, log: Callable[[str], None] = print) -> None:
    """Apply `data.cache` to the train and val datasets (before any training loader is created)."""
    for split in ("train", "val"):
        if split in datasets:
            attach_cache(datasets[split], cfg.data.cache, data_root=cfg.data.root, run_dir=run_dir,
                         num_workers=num_workers, log=log, name=split)
