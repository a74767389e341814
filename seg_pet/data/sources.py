"""`DATASETS`: where each `data.source` finds its files, and the datasets built from them.

A source is a function (DataConfig, split name) -> SplitFiles: the image and trimap paths of the
official "trainval" or "test" split. A second dataset is one new reader module that returns
SplitFiles (masks coded like the Pet trimaps, see seg_pet.labels) plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from seg_pet.config import Config, DataConfig, allowed, builders_for
from seg_pet.data.oxford import PetSegmentation, SplitFiles, eval_dataset, oxford_split, preflight, train_val_datasets
from seg_pet.data.synthetic import synthetic_split
from seg_pet.runtime.paths import check_input, check_name, check_output

DATASETS: dict[str, Callable[[DataConfig, str], SplitFiles]] = builders_for(
    allowed(DataConfig, "source"), {"oxford": oxford_split, "synthetic": synthetic_split}
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


def build_datasets(cfg: Config, check_files: bool = True) -> dict[str, PetSegmentation]:
    """train / val datasets from trainval (val carved out, stratified by breed). The test split is separate."""
    check_data_root(cfg.data)
    return train_val_datasets(DATASETS[cfg.data.source](cfg.data, "trainval"), cfg, check_files)


def build_test_dataset(cfg: Config, check_files: bool = True) -> PetSegmentation:
    check_data_root(cfg.data)
    test = DATASETS[cfg.data.source](cfg.data, "test")
    if check_files:
        preflight(test)
    return eval_dataset(test, list(range(len(test))), cfg)
