"""Data: trimap remap and border modes, the validation split, transforms, real-data quirks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from seg_pet.config import load_config
from seg_pet.data.loaders import count_pixels
from seg_pet.data.oxford import open_split, read_image, stratified_split
from seg_pet.data.segmentation import SegmentationDataset, SplitFiles
from seg_pet.data.sources import build_datasets, build_test_dataset
from seg_pet.data.transforms import BatchAugment, denormalize, eval_transforms, train_transforms
from seg_pet.labels import IGNORE_INDEX, class_names, pet_spec
from seg_pet.runtime.errors import DataError
from tests.conftest import PET_DIR, SHARED_DATA, requires_pet, tiny_overrides

TRIMAP = torch.tensor([[1, 2, 3], [3, 2, 1]], dtype=torch.uint8)


def remap_trimap(trimap: torch.Tensor, border: str) -> torch.Tensor:
    """The dataset's own remap: the label lookup the dataset applies to every Pet trimap it yields."""
    return SegmentationDataset(SplitFiles("none", Path("none.txt"), [], []), [], pet_spec(border)).lut[trimap.long()]


@pytest.mark.parametrize(
    "border, expected, names",
    [
        ("class", [[0, 1, 2], [2, 1, 0]], ["pet", "background", "border"]),
        ("ignore", [[0, 1, IGNORE_INDEX], [IGNORE_INDEX, 1, 0]], ["pet", "background"]),
        ("pet", [[0, 1, 0], [0, 1, 0]], ["pet", "background"]),
    ],
)
def test_remap_and_border_modes(border, expected, names):
    out = remap_trimap(TRIMAP, border)
    assert out.dtype == torch.int64
    assert out.tolist() == expected
    assert class_names(border) == names


def test_values_outside_trimap_range_become_ignore():
    assert remap_trimap(torch.tensor([0, 4], dtype=torch.uint8), "class").tolist() == [IGNORE_INDEX, IGNORE_INDEX]


def test_split_is_deterministic_disjoint_and_stratified():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    train, val = stratified_split(labels, 0.1, seed=3)
    assert (train, val) == stratified_split(labels, 0.1, seed=3)
    assert stratified_split(labels, 0.1, seed=4)[1] != val
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(100))
    assert Counter(labels[i] for i in val) == {0: 5, 1: 3, 2: 2}


def test_split_keeps_one_val_image_per_small_breed():
    train, val = stratified_split([0, 0, 1, 1, 1], 0.1, seed=0)
    assert Counter([0, 0, 1, 1, 1][i] for i in val) == {0: 1, 1: 1}
    assert len(train) == 3


def test_a_zero_val_fraction_holds_nothing_out():
    train, val = stratified_split([0, 0, 1, 1, 1], 0.0, seed=0)
    assert (train, val) == ([0, 1, 2, 3, 4], [])


def test_rotation_leaves_the_uncovered_corners_out_of_the_loss():
    """Per image (DataLoader) and per batch (data.cache: device): the corners a rotation uncovers are IGNORE_INDEX."""
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.full((3, 64, 64), 200, dtype=torch.uint8))
    trimap = tv_tensors.Mask(torch.full((64, 64), 2, dtype=torch.uint8))  # all background
    lut = remap_trimap(torch.arange(256, dtype=torch.uint8), "class")
    rotated = 0
    for _ in range(8):
        _, mask = train_transforms(64, (1.0, 1.0), rotation=45.0)(image, trimap)
        classes = lut[mask.long()]
        assert set(classes.unique().tolist()) <= {1, IGNORE_INDEX}  # background, or left out: never pet
        rotated += int((classes == IGNORE_INDEX).any())
    assert rotated >= 6  # an angle near 0 uncovers nothing; most of 8 draws in +-45 degrees do
    labels = [torch.ones(64, 64, dtype=torch.uint8)] * 8  # class indices, as the device cache holds them
    _, targets = BatchAugment(64, (1.0, 1.0), rotation=45.0, jitter=False)([image.as_subclass(torch.Tensor)] * 8, labels)
    assert set(targets.unique().tolist()) == {1, IGNORE_INDEX}
    assert (targets[:, 0, 0] == IGNORE_INDEX).sum() >= 6  # a corner pixel is uncovered by any angle beyond a few degrees
    _, straight = BatchAugment(64, (1.0, 1.0), jitter=False)([image.as_subclass(torch.Tensor)] * 8, labels)
    assert set(straight.unique().tolist()) == {1}


def test_transforms_keep_masks_integer_and_aligned():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 90, 70), dtype=torch.uint8))
    trimap = tv_tensors.Mask(torch.randint(1, 4, (90, 70), dtype=torch.uint8))
    for transform in (train_transforms(64, (0.35, 1.0)), eval_transforms(64)):
        out_image, out_mask = transform(image, trimap)
        assert out_image.dtype == torch.float32 and out_image.shape == (3, 64, 64)
        assert out_mask.dtype == torch.uint8 and out_mask.shape == (64, 64)
        # nearest-neighbour only: no interpolated value can appear
        assert set(out_mask.unique().tolist()) <= {1, 2, 3}


def test_eval_transform_normalises_and_denormalize_inverts():
    image = tv_tensors.Image(torch.full((3, 32, 32), 200, dtype=torch.uint8))
    out, _ = eval_transforms(32)(image, tv_tensors.Mask(torch.ones(32, 32, dtype=torch.uint8)))
    assert out.mean().abs() < 3
    assert np.abs(denormalize(out).astype(int) - 200).max() <= 1


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=r"not found: expected .*oxford-iiit-pet/images.*data.download: true"):
        open_split(tmp_path, "trainval")


@requires_pet
def test_real_slice_quirks_gif_and_rgba_png_named_jpg():
    for stem in ("Abyssinian_34", "Abyssinian_5"):
        image = read_image(PET_DIR / "images" / f"{stem}.jpg")
        assert image.shape[0] == 3 and image.dtype == torch.uint8


@requires_pet
def test_real_slice_splits():
    cfg = load_config(None, tiny_overrides(SHARED_DATA, real=True))
    sets = build_datasets(cfg)
    test = build_test_dataset(cfg)
    train_names = {p.stem for p in sets["train"].images}
    val_names = {p.stem for p in sets["val"].images}
    test_names = {p.stem for p in test.images}
    assert len(train_names) + len(val_names) == 200 and len(test_names) == 198
    assert not (train_names & val_names) and not (test_names & (train_names | val_names))
    # images on disk but in no split list are never used
    assert "Abyssinian_34" not in train_names | val_names | test_names
    # both breeds are represented in validation (stratified)
    assert {n.rsplit("_", 1)[0] for n in val_names} == {"Abyssinian", "american_bulldog"}
    image, mask = sets["train"][0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1, 2}


@requires_pet
def test_pixel_counts_match_the_documented_shares():
    cfg = load_config(None, tiny_overrides(SHARED_DATA, real=True))
    counts = count_pixels(build_datasets(cfg)["train"], 3)
    shares = np.array(counts) / sum(counts)
    # ../shared/data/README.md: pet 27 %, background 61 %, border 12 % over all trimaps
    assert shares == pytest.approx([0.27, 0.61, 0.12], abs=0.04)


@requires_pet
def test_torchvision_file_lists_are_read_through_one_adapter() -> None:
    """torchvision keeps OxfordIIITPet's file lists in private attributes; if a release renames them,
    this fails here, naming the attribute, instead of deep inside training."""
    from torchvision.datasets import OxfordIIITPet

    from seg_pet.data.oxford import split_files

    raw = OxfordIIITPet(SHARED_DATA, split="trainval", target_types="segmentation")
    files = split_files(raw, "trainval")
    assert len(files) == len(raw) == 200
    assert all(p.suffix == ".jpg" for p in files.images) and all(p.suffix == ".png" for p in files.masks)
    assert files.list_file == SHARED_DATA / "oxford-iiit-pet" / "annotations" / "trainval.txt"
    assert sorted(set(files.groups)) == [0, 1]  # two breeds in the slice
