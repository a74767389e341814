"""`data.source: folder`: your own images and masks, matched by file stem, with the classes the config declares.

Layouts under data.root, recognised in this order (docs/your_data.md):

    split folders  images/{train,val,test}/ + masks/{train,val,test}/   (val optional: then carved out of train)
    split lists    images/ + masks/ + train.txt, test.txt (val.txt optional): one file stem per line
    one pool       images/ + masks/: a fixed seeded share (data.test_fraction) becomes the test split

Masks are read by the config's label spec (seg_pet.config.label_spec). Everything that can be found
without a training step is found here, before a run folder exists: missing partners, duplicate stems,
empty splits (here), sizes that differ (preflight), mask values no class has and classes that never
occur (`scan_masks`, which reads every mask once).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from seg_pet.config import DataConfig
from seg_pet.data.segmentation import SplitFiles, read_mask_codes
from seg_pet.labels import IGNORE_INDEX, LabelSpec
from seg_pet.runtime.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless: a JPEG mask has values between the classes
SPLITS = ("train", "val", "test")
POOL_TEST_SEED = 0  # the pool's test split does not move with run.seed: every run is tested on the same images


def _by_stem(folder: Path, suffixes: tuple[str, ...], kind: str) -> dict[str, Path]:
    """stem -> file for the files of `folder` with one of `suffixes` (hidden files skipped); duplicate stems refused."""
    if not folder.is_dir():
        raise DataError(f"data.root: expected a folder {folder} with the {kind} files (docs/your_data.md lists the layouts)")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DataError(f"duplicate stem {path.stem!r} in {folder}: {found[path.stem].name} and {path.name}; keep one file per name")
        found[path.stem] = path
    return found


def _pairs(
    image_dir: Path, mask_dir: Path, stems: Optional[list[str]] = None, listed_in: Optional[Path] = None
) -> tuple[list[Path], list[Path]]:
    """Images and masks matched by stem (all of them, or the `stems` a list file names)."""
    images = _by_stem(image_dir, IMAGE_SUFFIXES, "image")
    masks = _by_stem(mask_dir, MASK_SUFFIXES, "mask")
    if stems is None:
        for stem, path in images.items():
            if stem not in masks:
                raise DataError(f"image {path} has no mask: expected {mask_dir / stem}.png (masks are matched by file name)")
        for stem, path in masks.items():
            if stem not in images:
                raise DataError(f"mask {path} has no image: expected an image named {stem} in {image_dir}, or remove the mask")
        stems = sorted(images)
    for stem in stems:
        where = f" (listed in {listed_in})" if listed_in else ""
        if stem not in images:
            raise DataError(f"no image named {stem!r} in {image_dir}{where}")
        if stem not in masks:
            raise DataError(f"image {images[stem]} has no mask: expected {mask_dir / stem}.png{where}")
    return [images[s] for s in stems], [masks[s] for s in stems]


def _read_list(path: Path) -> list[str]:
    stems = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else Path(name).name
        stems.append(stem)
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise DataError(f"{path} lists {dup!r} twice; list each image once")
    return stems


def layout(root: Path) -> str:
    """`folders`, `lists` or `pool` (see the module docstring)."""
    if (root / "images" / "train").is_dir():
        return "folders"
    if (root / "train.txt").is_file() or (root / "test.txt").is_file():
        return "lists"
    return "pool"


def _pool_split(root: Path, test_fraction: float) -> dict[str, list[int]]:
    images, _ = _pairs(root / "images", root / "masks")
    n = len(images)
    order = list(range(n))
    random.Random(POOL_TEST_SEED).shuffle(order)
    n_test = max(1, round(test_fraction * n))
    if n - n_test < 2:
        raise DataError(
            f"{root / 'images'} holds {n} images; need at least {n_test + 2} (train, validation and data.test_fraction's test share)"
        )
    return {"test": sorted(order[:n_test]), "trainval": sorted(order[n_test:])}


def folder_split(cfg: DataConfig, split: str) -> Optional[SplitFiles]:
    """The files of split `trainval` (training, and validation unless the data has its own), `val` (None when
    carved out of trainval) or `test`."""
    root = Path(cfg.root)
    kind = layout(root)
    if kind == "folders":
        name = "train" if split == "trainval" else split
        image_dir, mask_dir = root / "images" / name, root / "masks" / name
        if split == "val" and not image_dir.is_dir():
            return None
        if not image_dir.is_dir():
            raise DataError(
                f"data.root: {image_dir} is missing; the split folders layout needs images/train and images/test (val optional)"
            )
        images, masks = _pairs(image_dir, mask_dir)
        if not images:
            raise DataError(f"the {name} split is empty: {image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return SplitFiles(name, image_dir, images, masks)
    if kind == "lists":
        name = "train" if split == "trainval" else split
        list_file = root / f"{name}.txt"
        if split == "val" and not list_file.is_file():
            return None
        if not list_file.is_file():
            raise DataError(f"data.root: {list_file} is missing; the split lists layout needs train.txt and test.txt (val.txt optional)")
        stems = _read_list(list_file)
        if not stems:
            raise DataError(f"the {name} split is empty: {list_file} lists no images")
        images, masks = _pairs(root / "images", root / "masks", stems, list_file)
        return SplitFiles(name, list_file, images, masks)
    if split == "val":
        return None
    indices = _pool_split(root, cfg.test_fraction)[split]
    images, masks = _pairs(root / "images", root / "masks")
    return SplitFiles(split, root / "images", [images[i] for i in indices], [masks[i] for i in indices])


def scan_masks(splits: list[SplitFiles], spec: LabelSpec, log: Callable[[str], None] = print) -> list[int]:
    """Read every mask once: each value must be a declared class or ignore value (DataError naming the file).
    Warns about a declared class that occurs in no mask. Returns the pixel count per class over all splits."""
    counts = np.zeros(spec.num_classes, dtype=np.int64)
    lut = spec.lut()
    for split in splits:
        for path in split.masks:
            labels = lut[read_mask_codes(path, spec)]
            counts += np.bincount(labels[labels != IGNORE_INDEX].ravel(), minlength=spec.num_classes)[: spec.num_classes]
    for name, count in zip(spec.names, counts):
        if count == 0:
            where = "/".join(s.name for s in splits)
            log(f"WARNING: data.classes: class {name!r} occurs in no mask ({where}); check the class list and the mask values")
    return counts.tolist()
