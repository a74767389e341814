"""`DATASETS`: where each `data.source` finds its files, and the datasets built from them.

A source is a function (DataConfig, split name) -> SplitFiles for "trainval" (training, and
validation carved out of it) and "test"; for "val" it returns the source's own validation files, or
None when validation is carved out of trainval. A new dataset is one reader module that returns
SplitFiles plus one entry here; its masks are read by the config's label spec (seg_pet.config.label_spec).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

from seg_pet.config import Config, DataConfig, allowed, builders_for, label_spec
from seg_pet.data.folder import folder_split, scan_masks
from seg_pet.data.oxford import oxford_split
from seg_pet.data.segmentation import SegmentationDataset, SplitFiles, eval_dataset, preflight, train_val_datasets
from seg_pet.data.synthetic import synthetic_split
from seg_pet.runtime.paths import check_input, check_name, check_output


def _official(read: Callable[[DataConfig, str], SplitFiles]) -> Callable[[DataConfig, str], Optional[SplitFiles]]:
    """Oxford-style sources: official trainval and test lists; validation is always carved out of trainval."""
    return lambda data, split: None if split == "val" else read(data, split)


DATASETS: dict[str, Callable[[DataConfig, str], Optional[SplitFiles]]] = builders_for(
    allowed(DataConfig, "source"),
    {"oxford": _official(oxford_split), "synthetic": _official(synthetic_split), "folder": folder_split},
)


def check_data_root(data: DataConfig) -> None:
    """data.root: an existing one must be a readable folder, a missing one a folder that can be created
    (generated or downloaded data); a missing one the source cannot create is reported by the source."""
    if Path(data.root).exists():
        check_input(data.root, "data.root", "dir")
    elif data.source == "synthetic" or data.download:
        check_output(data.root, "data.root", "dir")
    else:
        check_name(data.root, "data.root")


def build_datasets(cfg: Config, check_files: bool = True, log: Callable[[str], None] = print) -> dict[str, SegmentationDataset]:
    """train / val datasets: the source's own validation split, or one carved out of trainval (stratified by
    group when the source has groups). The test split is separate. With `check_files` a folder source's
    masks are all read once here (values, classes that never occur), before anything is written."""
    check_data_root(cfg.data)
    spec = label_spec(cfg.data)
    source = DATASETS[cfg.data.source]
    trainval, val = source(cfg.data, "trainval"), source(cfg.data, "val")
    if check_files and cfg.data.source == "folder":
        scan_masks([s for s in (trainval, val, source(cfg.data, "test")) if s is not None], spec, log)
    return train_val_datasets(trainval, cfg, spec, check_files, val=val)


def build_test_dataset(cfg: Config, check_files: bool = True) -> SegmentationDataset:
    check_data_root(cfg.data)
    spec = label_spec(cfg.data)
    test = DATASETS[cfg.data.source](cfg.data, "test")
    if check_files:
        preflight(test, spec)
    return eval_dataset(test, list(range(len(test))), cfg, spec)
