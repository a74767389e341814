"""The Oxford-IIIT Pet reader: its files and official splits, with the breed as each image's group.

torchvision's `OxfordIIITPet` owns the on-disk layout, the official split files and the
download; `split_files` is the one place that reads its file lists. Pixels are read by the generic
dataset (seg_pet.data.segmentation), file by file, with the Pet label spec (seg_pet.labels.pet_spec:
the trimap codes and `data.border`), so that a broken file is reported by name (torchvision's own
`__getitem__` would raise a bare PIL error).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

from torchvision import tv_tensors
from torchvision.datasets import OxfordIIITPet

from seg_pet.config import DataConfig
from seg_pet.data.segmentation import SplitFiles, read_image, read_mask, stratified_split
from seg_pet.labels import pet_spec
from seg_pet.runtime.errors import DataError

__all__ = ["SplitFiles", "open_split", "oxford_split", "read_image", "read_trimap", "split_files", "stratified_split"]

PET_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"


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


def read_trimap(path: Path, expected_hw: Optional[tuple[int, int]] = None) -> tv_tensors.Mask:
    """Trimap uint8 (H, W) with values 1..3, checked against the image size."""
    return read_mask(path, pet_spec(), expected_hw)


def oxford_split(cfg: DataConfig, split: str) -> SplitFiles:
    """`data.source: oxford`: the official split files under data.root/oxford-iiit-pet."""
    return open_split(cfg.root, split, download=cfg.download)
