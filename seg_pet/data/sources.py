"""`DATASETS`: where each `data.source` finds its files, and the datasets built from them.

A source is a function (DataConfig, split name) -> SplitFiles: the image and trimap paths of the
official "trainval" or "test" split. A second dataset is one new reader module that returns
SplitFiles (masks coded like the Pet trimaps, see seg_pet.labels) plus one entry here.
"""

from __future__ import annotations

from typing import Callable

from seg_pet.config import Config, DataConfig
from seg_pet.data.oxford import PetSegmentation, SplitFiles, eval_dataset, oxford_split, preflight, train_val_datasets
from seg_pet.data.synthetic import synthetic_split

DATASETS: dict[str, Callable[[DataConfig, str], SplitFiles]] = {
    "oxford": oxford_split,
    "synthetic": synthetic_split,
}


def build_datasets(cfg: Config, check_files: bool = True) -> dict[str, PetSegmentation]:
    """train / val datasets from trainval (val carved out, stratified by breed). The test split is separate."""
    return train_val_datasets(DATASETS[cfg.data.source](cfg.data, "trainval"), cfg, check_files)


def build_test_dataset(cfg: Config, check_files: bool = True) -> PetSegmentation:
    test = DATASETS[cfg.data.source](cfg.data, "test")
    if check_files:
        preflight(test)
    return eval_dataset(test, list(range(len(test))), cfg)
