"""The generic dataset: image + mask files, a LabelSpec, joint transforms and caches; and the train/val carve-out.

Every source (seg_pet.data.sources) yields `SplitFiles`; the dataset reads pixels file by file, so a
broken file is reported by name. A mask file is read into codes by the run's `LabelSpec`
(seg_pet.labels): a value or colour no class has is refused with one line naming the file.
"""

from __future__ import annotations

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

from seg_pet.config import Config
from seg_pet.config.numbers import check_split_sizes
from seg_pet.data.transforms import eval_cache_resize, eval_transforms, native_eval_transforms, train_cache_resize, train_transforms
from seg_pet.labels import LabelSpec
from seg_pet.runtime.errors import DataError, SegPetError
from seg_pet.runtime.paths import check_input


@dataclass(frozen=True)
class SplitFiles:
    """One split of a dataset on disk: parallel lists of image and mask paths, and optionally a group label
    per image (Pet: the breed) that the validation carve-out stratifies by; None: a plain seeded split."""

    name: str  # e.g. "trainval", for messages
    list_file: Path
    images: list[Path]
    masks: list[Path]
    groups: Optional[list[int]] = None
    # what each image belongs to, for per-group results (Pet: {"breed": ..., "species": ...}); None: no groups
    group_labels: Optional[list[dict[str, str]]] = None

    def __len__(self) -> int:
        return len(self.images)


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


def mask_word(spec: LabelSpec) -> str:
    return "trimap" if spec.coding == "trimap" else "mask"


def read_mask_codes(path: Path, spec: LabelSpec, expected_hw: Optional[tuple[int, int]] = None) -> np.ndarray:
    """A mask file's codes (uint8 (H, W), see seg_pet.labels), checked against the image size and the spec."""
    word = mask_word(spec)
    try:
        with Image.open(path) as im:
            if spec.coding == "color":
                im = im.convert("RGB")
            elif im.mode == "P":  # a palette PNG's pixels are its indices
                pass
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{word} file missing: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read {word} {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if spec.coding != "color" and arr.ndim != 2:
        fix = "" if spec.coding == "trimap" else "; for RGB colour masks set data.mask_format: color and data.class_colors"
        raise DataError(f"{word} {path} must be single-channel, got shape {arr.shape}{fix}")
    if expected_hw is not None and arr.shape[:2] != expected_hw:
        raise DataError(f"{word} {path} is {arr.shape[1]}x{arr.shape[0]} but its image is {expected_hw[1]}x{expected_hw[0]}")
    codes, bad = spec.to_codes(arr)
    if bad:
        if spec.coding == "trimap":
            raise DataError(f"trimap {path} has values {np.unique(arr).tolist()}; expected only {spec.describe_values()}")
        what = "colours" if spec.coding == "color" else "values"
        key = "data.ignore_colors" if spec.coding == "color" else "data.ignore_values"
        shown = [list(b) for b in bad[:5]] if spec.coding == "color" else bad[:10]
        raise DataError(
            f"mask {path} has {what} {shown} that no declared class has; allowed: {spec.describe_values()} "
            f"(fix the mask, or declare them in data.classes or {key})"
        )
    return codes


def read_mask(path: Path, spec: LabelSpec, expected_hw: Optional[tuple[int, int]] = None) -> tv_tensors.Mask:
    return tv_tensors.Mask(torch.from_numpy(read_mask_codes(path, spec, expected_hw)))


def preflight(split: SplitFiles, spec: LabelSpec) -> None:
    """Checks that are cheap before training: every listed file exists and each mask matches its image size.

    Only headers are read here (PIL opens lazily); pixel problems are reported when the file is decoded.
    """
    word = mask_word(spec)
    for image_path, mask_path in zip(split.images, split.masks):
        image_size, mask_size = (_header_size(path, kind, split) for path, kind in ((image_path, "image"), (mask_path, word)))
        if image_size != mask_size:
            raise DataError(f"{word} {mask_path} is {mask_size[0]}x{mask_size[1]} but its image is {image_size[0]}x{image_size[1]}")


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


class SegmentationDataset(Dataset):
    """Some images of one split, with joint transforms; yields (image float (3,H,W), mask int64 (H,W)).

    `indices` select from the split (used to carve validation out of trainval). `spec` reads the masks
    (codes) and `lut` maps codes to class ids. `prepare` is the deterministic resize a decoded-image
    cache stores (seg_pet.data.cache); it is applied only when `cache` is set, which holds
    prepare(load(i)) for every i. `native_masks`: the masks keep their original size
    (native-resolution evaluation), so batches need `collate_native`.
    """

    def __init__(
        self,
        split: SplitFiles,
        indices: list[int],
        spec: LabelSpec,
        transforms: Optional[Callable] = None,
        *,
        prepare: Optional[Callable] = None,
        native_masks: bool = False,
    ):
        self.images = [split.images[i] for i in indices]
        self.masks = [split.masks[i] for i in indices]
        self.group_labels = [split.group_labels[i] for i in indices] if split.group_labels is not None else None
        self.spec = spec
        self.transforms = transforms
        self.lut = torch.from_numpy(spec.lut())
        self.prepare = prepare
        self.native_masks = native_masks
        self.cache: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None  # set by seg_pet.data.cache.attach_cache

    def __len__(self) -> int:
        return len(self.images)

    def load(self, idx: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Decoded, untransformed (image uint8 (3,H,W), mask codes uint8 (H,W))."""
        image = read_image(self.images[idx])
        mask = read_mask(self.masks[idx], self.spec, expected_hw=tuple(image.shape[-2:]))
        return image, mask

    def load_cached(self, idx: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """prepare(load(idx)) from the cache: decoded (and for evaluation resized) once, uint8."""
        image, mask = self.cache[idx]  # type: ignore[index]
        return tv_tensors.Image(image), tv_tensors.Mask(mask)  # wrapping shares storage; transforms never write in place

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load_cached(idx) if self.cache is not None else self.load(idx)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image.as_subclass(torch.Tensor), self.lut[mask.as_subclass(torch.Tensor).long()]

    def labels(self, idx: int) -> torch.Tensor:
        """Class ids (int64 (H, W)) of one image's mask at its original size, read from the file."""
        return self.lut[read_mask(self.masks[idx], self.spec).as_subclass(torch.Tensor).long()]

    def name(self, idx: int) -> str:
        return self.images[idx].stem

    def group(self, idx: int) -> Optional[dict[str, str]]:
        """What image `idx` belongs to (Pet: breed and species), or None for a source without groups."""
        return dict(self.group_labels[idx]) if self.group_labels is not None else None


def stratified_split(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val), stratified by label, deterministic for a seed.

    Written by hand: torch has random_split but no stratified split, and scikit-learn is not a dependency.
    Each label contributes round(val_fraction * n) images (at least one when it has two or more, none
    when val_fraction is 0). One label for all images is a plain seeded split.
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


def train_val_datasets(
    trainval: SplitFiles, cfg: Config, spec: LabelSpec, check_files: bool = True, val: Optional[SplitFiles] = None
) -> dict[str, SegmentationDataset]:
    """train / val datasets: `val` when the source has its own validation files, else carved out of
    trainval (stratified by group when the source has groups, a plain seeded split otherwise)."""
    if check_files:
        preflight(trainval, spec)
        if val is not None:
            preflight(val, spec)
    if val is not None:
        train_idx, val_idx, val_split = list(range(len(trainval))), list(range(len(val))), val
        if not len(trainval) or not len(val):
            empty = trainval if not len(trainval) else val
            raise DataError(f"{empty.list_file}: the {empty.name} split has no images")
    else:
        if len(trainval) < 2:
            raise DataError(f"{trainval.list_file} lists {len(trainval)} images; need at least 2")
        groups = trainval.groups if trainval.groups is not None else [0] * len(trainval)
        train_idx, val_idx = stratified_split(groups, cfg.data.val_fraction, cfg.run.seed)
        val_split = trainval
    check_split_sizes(cfg, len(train_idx), len(val_idx))
    size = cfg.data.image_size
    if cfg.data.augment:
        transforms = train_transforms(size, cfg.data.crop_scale, cfg.data.rotation, mask_fill=spec.fill_code)
        train = SegmentationDataset(trainval, train_idx, spec, transforms, prepare=train_cache_resize())
    else:  # data.augment: false: resized like validation images, nothing random
        train = SegmentationDataset(trainval, train_idx, spec, eval_transforms(size), prepare=eval_cache_resize(size))
    return {"train": train, "val": eval_dataset(val_split, val_idx, cfg, spec)}


def eval_dataset(split: SplitFiles, indices: list[int], cfg: Config, spec: LabelSpec) -> SegmentationDataset:
    """Validation/test: resized to image_size; with eval.native_resolution the masks keep their original size."""
    size, native = cfg.data.image_size, cfg.eval.native_resolution
    transforms = native_eval_transforms(size) if native else eval_transforms(size)
    return SegmentationDataset(split, indices, spec, transforms, prepare=eval_cache_resize(size, native), native_masks=native)
