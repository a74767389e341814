"""The Oxford-IIIT Pet reader: files, splits, the dataset class, and the train/val carve-out.

torchvision's `OxfordIIITPet` owns the on-disk layout, the official split files and the
download; `split_files` is the one place that reads its file lists. Pixels are read here, file by
file, so that a broken file is reported by name (torchvision's own `__getitem__` would raise a
bare PIL error). The trimap remap itself is owned by `seg_pet.labels`.
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import OxfordIIITPet

from seg_pet.config import Config, DataConfig
from seg_pet.config.numbers import check_split_sizes
from seg_pet.data.transforms import eval_cache_resize, eval_transforms, native_eval_transforms, train_cache_resize, train_transforms
from seg_pet.labels import trimap_lut
from seg_pet.runtime.errors import DataError, SegPetError
from seg_pet.runtime.paths import check_input

PET_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"


def remap_trimap(trimap: torch.Tensor, border: str) -> torch.Tensor:
    """Trimap (uint8, values 1..3) -> int64 class indices 0..C-1 (or IGNORE_INDEX)."""
    return torch.from_numpy(trimap_lut(border))[trimap.long()]


@dataclass(frozen=True)
class SplitFiles:
    """One split of a dataset on disk: parallel lists of image and trimap paths, and a group label per
    image (the breed) that the validation carve-out stratifies by. Every dataset source yields these."""

    name: str  # e.g. "trainval", for messages
    list_file: Path
    images: list[Path]
    trimaps: list[Path]
    groups: list[int]
    # what each image belongs to, for per-group results (Pet: {"breed": ..., "species": ...}); None: no groups
    group_labels: Optional[list[dict[str, str]]] = None

    def __len__(self) -> int:
        return len(self.images)


def split_files(dataset: OxfordIIITPet, name: str) -> SplitFiles:
    """The file lists of one torchvision split.

    torchvision keeps them in private attributes (`_images`, `_segs`, `_labels`); this is the one
    place that reads them, and a unit test fails loudly if a torchvision release renames them.
    """
    try:
        images, trimaps, groups = list(dataset._images), list(dataset._segs), list(dataset._labels)
    except AttributeError as exc:  # pragma: no cover - only with an incompatible torchvision
        raise RuntimeError(f"this torchvision's OxfordIIITPet has no attribute {exc.name!r}: seg_pet needs an update") from None
    list_file = Path(dataset.root) / "oxford-iiit-pet" / "annotations" / f"{name}.txt"
    species = list(getattr(dataset, "_bin_labels", [])) or [None] * len(images)
    labels = [
        {
            "breed": " ".join(part.title() for part in path.stem.rsplit("_", 1)[0].split("_")),
            "species": ("cat", "dog")[s] if s in (0, 1) else "?",
        }
        for path, s in zip(images, species)
    ]
    return SplitFiles(name, list_file, images, trimaps, groups, labels)


# --------------------------------------------------------------------------- files


def open_split(root: str | Path, split: str, download: bool = False) -> SplitFiles:
    """The files of one official split (torchvision reads the list files), with its errors made one-line."""
    base = Path(root) / "oxford-iiit-pet"
    if download:
        created = [p for p in (base, Path(root)) if not p.exists()]
        try:
            return split_files(OxfordIIITPet(root, split=split, target_types="segmentation", download=True), split)
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
        return split_files(OxfordIIITPet(root, split=split, target_types="segmentation", download=False), split)
    except RuntimeError:
        raise DataError(
            f"Oxford-IIIT Pet not found: expected {base}/images and {base}/annotations; set data.download: true "
            f"on a machine with internet, or extract images.tar.gz and annotations.tar.gz from {PET_URL} there "
            "(data.root is the folder that holds oxford-iiit-pet/)"
        ) from None
    except FileNotFoundError as exc:
        raise DataError(f"split file missing: {exc.filename}") from None
    except ValueError:
        raise DataError(
            f"malformed split file: {base / 'annotations' / (split + '.txt')} (expected 'ID CLASS SPECIES BREED' lines)"
        ) from None


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


def preflight(split: SplitFiles) -> None:
    """Checks that are cheap before training: every listed file exists and each trimap matches its image size.

    Only headers are read here (PIL opens lazily); pixel problems are reported when the file is decoded.
    """
    for image_path, trimap_path in zip(split.images, split.trimaps):
        image_size, trimap_size = (_header_size(path, kind, split) for path, kind in ((image_path, "image"), (trimap_path, "trimap")))
        if image_size != trimap_size:
            raise DataError(f"trimap {trimap_path} is {trimap_size[0]}x{trimap_size[1]} but its image is {image_size[0]}x{image_size[1]}")


def _header_size(path: Path, kind: str, split: SplitFiles) -> tuple[int, int]:
    """(width, height) from the file's header: it exists, is readable, and is an image (pixels are not decoded)."""
    if not path.exists():
        raise DataError(f"{kind} file missing: {path} (listed in {split.list_file.name})")
    if not path.is_file():
        raise DataError(f"{kind} file {path}: is a folder, expected a file (listed in {split.list_file.name})")
    try:
        check_input(path, f"{kind} file")
        with Image.open(path) as im:
            return im.size
    except SegPetError as exc:
        raise DataError(str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise DataError(f"cannot read {path}: not an image file") from None


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
        split: SplitFiles,
        indices: list[int],
        border: str,
        transforms: Optional[Callable] = None,
        *,
        prepare: Optional[Callable] = None,
        native_masks: bool = False,
    ):
        self.images = [split.images[i] for i in indices]
        self.trimaps = [split.trimaps[i] for i in indices]
        self.breeds = [split.groups[i] for i in indices]
        self.group_labels = [split.group_labels[i] for i in indices] if split.group_labels is not None else None
        self.border = border
        self.transforms = transforms
        self.lut = torch.from_numpy(trimap_lut(border))
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

    def group(self, idx: int) -> Optional[dict[str, str]]:
        """What image `idx` belongs to (Pet: breed and species), or None for a source without groups."""
        return dict(self.group_labels[idx]) if self.group_labels is not None else None


def stratified_split(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val), stratified by label, deterministic for a seed.

    Written by hand: torch has random_split but no stratified split, and scikit-learn is not a dependency.
    Each breed contributes round(val_fraction * n) images (at least one when it has two or more, none
    when val_fraction is 0).
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
        if len(members) >= 2 and val_fraction > 0:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return sorted(train), sorted(val)


def train_val_datasets(trainval: SplitFiles, cfg: Config, check_files: bool = True) -> dict[str, PetSegmentation]:
    """train / val datasets from the trainval files (val carved out, stratified by group)."""
    if check_files:
        preflight(trainval)
    if len(trainval) < 2:
        raise DataError(f"{trainval.list_file} lists {len(trainval)} images; need at least 2")
    train_idx, val_idx = stratified_split(trainval.groups, cfg.data.val_fraction, cfg.run.seed)
    check_split_sizes(cfg, len(train_idx), len(val_idx))
    size, border = cfg.data.image_size, cfg.data.border
    if cfg.data.augment:
        train = PetSegmentation(
            trainval, train_idx, border, train_transforms(size, cfg.data.crop_scale, cfg.data.rotation), prepare=train_cache_resize(size)
        )
    else:  # data.augment: false: resized like validation images, nothing random
        train = PetSegmentation(trainval, train_idx, border, eval_transforms(size), prepare=eval_cache_resize(size))
    return {"train": train, "val": eval_dataset(trainval, val_idx, cfg)}


def eval_dataset(split: SplitFiles, indices: list[int], cfg: Config) -> PetSegmentation:
    """Validation/test: resized to image_size; with eval.native_resolution the masks keep their original size."""
    size, native = cfg.data.image_size, cfg.eval.native_resolution
    transforms = native_eval_transforms(size) if native else eval_transforms(size)
    return PetSegmentation(split, indices, cfg.data.border, transforms, prepare=eval_cache_resize(size, native), native_masks=native)


def oxford_split(cfg: DataConfig, split: str) -> SplitFiles:
    """`data.source: oxford`: the official split files under data.root/oxford-iiit-pet."""
    return open_split(cfg.root, split, download=cfg.download)
