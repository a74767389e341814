"""The Oxford-IIIT Pet segmentation data: class definitions, trimap remap, splits, loaders.

torchvision's `OxfordIIITPet` owns the on-disk layout, the official split files and the
download. Pixels are read here, file by file, so that a broken file is reported by name
(torchvision's own `__getitem__` would raise a bare PIL error).

Classes (the one place the trimap is remapped):
    trimap 1 (pet) -> 0 `pet`,  2 (background) -> 1 `background`,  3 (border) -> 2 `border`
with `data.border` choosing what happens to the thin border ring:
    class   3 classes (default)
    ignore  border pixels -> IGNORE_INDEX (255): excluded from loss and metrics, 2 classes
    pet     border merged into pet: the binary task of the smp Pet example, 2 classes
"""

from __future__ import annotations

import contextlib
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.datasets import OxfordIIITPet

from seg_pet.config import Config, DataConfig
from seg_pet.errors import DataError
from seg_pet.transforms import eval_cache_resize, eval_transforms, native_eval_transforms, train_cache_resize, train_transforms

IGNORE_INDEX = 255
PET_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"

_CLASS_NAMES = {
    "class": ("pet", "background", "border"),
    "ignore": ("pet", "background"),
    "pet": ("pet", "background"),
}
_BORDER_TARGET = {"class": 2, "ignore": IGNORE_INDEX, "pet": 0}


def class_names(border: str) -> list[str]:
    return list(_CLASS_NAMES[border])


def trimap_lut(border: str) -> torch.Tensor:
    """A 256-entry lookup table trimap value -> class index; anything but 1..3 maps to IGNORE_INDEX."""
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
    lut[1], lut[2], lut[3] = 0, 1, _BORDER_TARGET[border]
    return lut


def remap_trimap(trimap: torch.Tensor, border: str) -> torch.Tensor:
    """Trimap (uint8, values 1..3) -> int64 class indices 0..C-1 (or IGNORE_INDEX)."""
    return trimap_lut(border)[trimap.long()]


# --------------------------------------------------------------------------- files


def open_split(root: str | Path, split: str, download: bool = False) -> OxfordIIITPet:
    """The torchvision dataset object for one official split, with its errors made one-line."""
    base = Path(root) / "oxford-iiit-pet"
    if download:
        created = [p for p in (base, Path(root)) if not p.exists()]
        try:
            return OxfordIIITPet(root, split=split, target_types="segmentation", download=True)
        except Exception as exc:  # network errors come as URLError, OSError, RuntimeError...
            for folder in created:  # leave no empty dataset folder behind a failed download
                with contextlib.suppress(OSError):
                    folder.rmdir()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"could not download Oxford-IIIT Pet into {base} ({reason}); download images.tar.gz and "
                f"annotations.tar.gz from {PET_URL} and extract both into {base}, then set data.download: false"
            ) from None
    try:
        return OxfordIIITPet(root, split=split, target_types="segmentation", download=False)
    except RuntimeError:
        raise DataError(
            f"Oxford-IIIT Pet not found: expected {base}/images and {base}/annotations; set data.download: true "
            f"on a machine with internet, or extract images.tar.gz and annotations.tar.gz from {PET_URL} there "
            "(data.root is the folder that holds oxford-iiit-pet/)"
        ) from None
    except FileNotFoundError as exc:
        raise DataError(f"split file missing: {exc.filename}") from None
    except ValueError:
        raise DataError(f"malformed split file: {base / 'annotations' / (split + '.txt')} (expected 'ID CLASS SPECIES BREED' lines)") from None


def read_image(path: Path) -> tv_tensors.Image:
    """RGB uint8 (3, H, W). Some real files named .jpg are GIF or RGBA PNG, some grayscale: convert all to RGB."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image file missing: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return tv_tensors.Image(torch.from_numpy(rgb.copy()).permute(2, 0, 1))


def read_trimap(path: Path, expected_hw: Optional[tuple[int, int]] = None) -> tv_tensors.Mask:
    """Trimap uint8 (H, W) with values 1..3, checked against the image size."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"trimap file missing: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read trimap {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if arr.ndim != 2:
        raise DataError(f"trimap {path} must be single-channel, got shape {arr.shape}")
    if expected_hw is not None and arr.shape != expected_hw:
        raise DataError(f"trimap {path} is {arr.shape[1]}x{arr.shape[0]} but its image is {expected_hw[1]}x{expected_hw[0]}")
    values = np.unique(arr)
    if values.min() < 1 or values.max() > 3:
        raise DataError(f"trimap {path} has values {values.tolist()}; expected only 1 (pet), 2 (background), 3 (border)")
    return tv_tensors.Mask(torch.from_numpy(arr.astype(np.uint8)))


def preflight(split: OxfordIIITPet) -> None:
    """Checks that are cheap before training: every listed file exists and each trimap matches its image size.

    Only headers are read here (PIL opens lazily); pixel problems are reported when the file is decoded.
    """
    for image_path, trimap_path in zip(split._images, split._segs):
        for path, kind in ((image_path, "image"), (trimap_path, "trimap")):
            if not path.is_file():
                raise DataError(f"{kind} file missing: {path} (listed in {split._split}.txt)")
        try:
            with Image.open(image_path) as im:
                image_size = im.size
            with Image.open(trimap_path) as tm:
                trimap_size = tm.size
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read {exc.filename or image_path}: not an image file") from None
        if image_size != trimap_size:
            raise DataError(
                f"trimap {trimap_path} is {trimap_size[0]}x{trimap_size[1]} but its image is {image_size[0]}x{image_size[1]}"
            )


# --------------------------------------------------------------------------- dataset


class PetSegmentation(Dataset):
    """Some images of one official split, with joint transforms; yields (image float (3,H,W), mask int64 (H,W)).

    `indices` select from the split (used to carve validation out of trainval).
    `prepare` is the deterministic resize a decoded-image cache stores (seg_pet.cache); it is applied
    only when `cache` is set, which holds prepare(load(i)) for every i. `native_masks`: the masks keep
    their original size (native-resolution evaluation), so batches need `collate_native`.
    """

    def __init__(
        self,
        split: OxfordIIITPet,
        indices: list[int],
        border: str,
        transforms: Optional[Callable] = None,
        *,
        prepare: Optional[Callable] = None,
        native_masks: bool = False,
    ):
        self.images = [split._images[i] for i in indices]
        self.trimaps = [split._segs[i] for i in indices]
        self.breeds = [split._labels[i] for i in indices]
        self.border = border
        self.transforms = transforms
        self.lut = trimap_lut(border)
        self.prepare = prepare
        self.native_masks = native_masks
        self.cache: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None  # set by seg_pet.cache.attach_cache

    def __len__(self) -> int:
        return len(self.images)

    def load(self, idx: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Decoded, untransformed (image uint8 (3,H,W), trimap uint8 (H,W))."""
        image = read_image(self.images[idx])
        trimap = read_trimap(self.trimaps[idx], expected_hw=tuple(image.shape[-2:]))
        return image, trimap

    def load_cached(self, idx: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """prepare(load(idx)) from the cache: decoded (and for evaluation resized) once, uint8."""
        image, trimap = self.cache[idx]  # type: ignore[index]
        return tv_tensors.Image(image), tv_tensors.Mask(trimap)  # wrapping shares storage; transforms never write in place

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, trimap = self.load_cached(idx) if self.cache is not None else self.load(idx)
        if self.transforms is not None:
            image, trimap = self.transforms(image, trimap)
        return image.as_subclass(torch.Tensor), self.lut[trimap.as_subclass(torch.Tensor).long()]

    def name(self, idx: int) -> str:
        return self.images[idx].stem


def stratified_split(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val), stratified by label, deterministic for a seed.

    Written by hand: torch has random_split but no stratified split, and scikit-learn is not a dependency.
    Each breed contributes round(val_fraction * n) images (at least one when it has two or more).
    """
    by_label: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_label):
        members = sorted(by_label[label])
        rng.shuffle(members)
        n_val = round(val_fraction * len(members))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return sorted(train), sorted(val)


def prepare_root(cfg: DataConfig) -> Path:
    """The dataset root; for `data.source: synthetic` the synthetic dataset is generated there first."""
    root = Path(cfg.root)
    if cfg.source == "synthetic":
        from seg_pet.synthetic import make_synthetic_dataset

        make_synthetic_dataset(root, num_images=cfg.synthetic_images, seed=0)
    return root


def build_datasets(cfg: Config, check_files: bool = True) -> dict[str, PetSegmentation]:
    """train / val datasets from trainval (val carved out, stratified by breed). The test split is separate."""
    root = prepare_root(cfg.data)
    trainval = open_split(root, "trainval", download=cfg.data.download)
    if check_files:
        preflight(trainval)
    if len(trainval) < 2:
        raise DataError(f"{root}/oxford-iiit-pet/annotations/trainval.txt lists {len(trainval)} images; need at least 2")
    train_idx, val_idx = stratified_split(trainval._labels, cfg.data.val_fraction, cfg.run.seed)
    size, border = cfg.data.image_size, cfg.data.border
    return {
        "train": PetSegmentation(trainval, train_idx, border, train_transforms(size), prepare=train_cache_resize(size)),
        "val": _eval_dataset(trainval, val_idx, cfg),
    }


def _eval_dataset(split: OxfordIIITPet, indices: list[int], cfg: Config) -> PetSegmentation:
    """Validation/test: resized to image_size; with eval.native_resolution the masks keep their original size."""
    size, native = cfg.data.image_size, cfg.eval.native_resolution
    transforms = native_eval_transforms(size) if native else eval_transforms(size)
    return PetSegmentation(split, indices, cfg.data.border, transforms, prepare=eval_cache_resize(size, native), native_masks=native)


def build_test_dataset(cfg: Config, check_files: bool = True) -> PetSegmentation:
    root = prepare_root(cfg.data)
    test = open_split(root, "test", download=cfg.data.download)
    if check_files:
        preflight(test)
    return _eval_dataset(test, list(range(len(test))), cfg)


def usable_cpus() -> int:
    """CPUs this process may run on (taskset, cgroup cpusets), not the host's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_num_workers(setting: int | str) -> int:
    """`auto`: one worker per usable CPU, minus one for the main process, at most 16.

    Issue #6's reference loader figures (256 px, no cache) are ~100-120 images/s per worker, so an
    H100 step at ~1,400 images/s needs 12 or more; the cap keeps prefetch memory bounded on big hosts.
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
    (docs: Performance, measured by scripts/benchmark.py as `epoch_start_s`).
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


def worker_signals(worker_id: int) -> None:
    """In a DataLoader worker: leave Ctrl-C to the main process, die plainly on SIGTERM.

    Workers are forked with the main process's Python signal handlers (training's "stop after this
    step", the CLI's SIGTERM -> exit 143). Ctrl-C in a terminal reaches every process of the group;
    the main process alone decides how to stop and then shuts its workers down.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def count_pixels(dataset: PetSegmentation, num_classes: int) -> list[int]:
    """Pixel count per class over a dataset's original-resolution trimaps (ignored pixels not counted)."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for idx in range(len(dataset)):
        trimap = read_trimap(dataset.trimaps[idx])
        labels = dataset.lut[trimap.as_subclass(torch.Tensor).long()]
        labels = labels[labels != IGNORE_INDEX]
        counts += torch.bincount(labels.flatten(), minlength=num_classes)[:num_classes]
    return counts.tolist()
