"""The synthetic dataset: readable by torchvision, deterministic, idempotent, never touches real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import OxfordIIITPet

from seg_pet.data.synthetic import MARKER_NAME, make_synthetic_dataset
from seg_pet.runtime.errors import DataError

SMALL = dict(num_images=12, seed=3, min_size=32, max_size=64, test_fraction=0.3)


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), **SMALL)


def test_layout_and_return_value(dataset: Path) -> None:
    assert dataset.name == "oxford-iiit-pet"
    ann = dataset / "annotations"
    for name in ("trainval.txt", "test.txt", "list.txt"):
        assert (ann / name).is_file()
    list_lines = (ann / "list.txt").read_text().splitlines()
    assert [line.startswith("#") for line in list_lines[:7]] == [True] * 6 + [False]
    split_lines = [line for name in ("trainval.txt", "test.txt") for line in (ann / name).read_text().splitlines()]
    assert sorted(list_lines[6:]) == sorted(split_lines)
    for line in split_lines:
        image_id, class_id, species, breed_id = line.split()
        # The real convention: capitalised names are cats (species 1), lowercase are dogs (species 2).
        assert species == ("1" if image_id[0].isupper() else "2")
        assert (dataset / "images" / f"{image_id}.jpg").is_file()
        assert (ann / "trimaps" / f"{image_id}.png").is_file()
    # No leftover temporary folders beside the dataset.
    assert [p.name for p in dataset.parent.iterdir()] == ["oxford-iiit-pet"]


def test_torchvision_reads_both_splits(dataset: Path) -> None:
    root = dataset.parent
    seen_values: set[int] = set()
    total = 0
    counts = np.zeros(4, dtype=np.int64)
    for split in ("trainval", "test"):
        ds = OxfordIIITPet(root=root, split=split, target_types=["segmentation", "category"])
        assert len(ds) > 0
        total += len(ds)
        categories = set()
        for i in range(len(ds)):
            image, (trimap, category) = ds[i]
            assert image.mode == "RGB"
            assert trimap.mode == "L"
            assert trimap.size == image.size
            values = np.asarray(trimap)
            assert set(np.unique(values).tolist()) <= {1, 2, 3}
            seen_values |= set(np.unique(values).tolist())
            counts += np.bincount(values.ravel(), minlength=4)
            categories.add(category)
        assert categories == {0, 1}, f"both breeds must be in {split}"
    assert total == SMALL["num_images"]
    assert seen_values == {1, 2, 3}
    shares = counts[1:] / counts[1:].sum()
    assert 0.2 < shares[0] < 0.4, f"pet share {shares[0]:.3f}"
    assert 0.03 < shares[2] < 0.18, f"border share {shares[2]:.3f}"


def test_image_sizes_vary_within_bounds(dataset: Path) -> None:
    sizes = {Image.open(p).size for p in (dataset / "images").glob("*.jpg")}
    assert len(sizes) > 3
    for w, h in sizes:
        assert SMALL["min_size"] <= w <= SMALL["max_size"]
        assert SMALL["min_size"] <= h <= SMALL["max_size"]


def test_deterministic_per_seed(dataset: Path, tmp_path: Path) -> None:
    again = make_synthetic_dataset(tmp_path / "a", **SMALL)
    assert _tree_bytes(again) == _tree_bytes(dataset)
    other = make_synthetic_dataset(tmp_path / "b", **{**SMALL, "seed": SMALL["seed"] + 1})
    other_bytes, same_bytes = _tree_bytes(other), _tree_bytes(dataset)
    assert other_bytes.keys() - {MARKER_NAME} == same_bytes.keys() - {MARKER_NAME}
    changed = [k for k in same_bytes if k.endswith(".jpg") and same_bytes[k] != other_bytes[k]]
    assert len(changed) == SMALL["num_images"]


def test_second_call_is_a_no_op(tmp_path: Path) -> None:
    path = make_synthetic_dataset(tmp_path, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    assert make_synthetic_dataset(tmp_path, **SMALL) == path
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == before


def test_other_arguments_regenerate(tmp_path: Path) -> None:
    path = make_synthetic_dataset(tmp_path, **SMALL)
    make_synthetic_dataset(tmp_path, **{**SMALL, "num_images": 6})
    marker = json.loads((path / MARKER_NAME).read_text())
    assert marker["args"]["num_images"] == 6
    assert len(list((path / "images").glob("*.jpg"))) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oxford-iiit-pet"]


def test_refuses_folder_without_marker(tmp_path: Path) -> None:
    real = tmp_path / "oxford-iiit-pet"
    (real / "images").mkdir(parents=True)
    (real / "images" / "Abyssinian_1.jpg").write_bytes(b"not ours")
    with pytest.raises(DataError, match="refusing") as info:
        make_synthetic_dataset(tmp_path, **SMALL)
    assert "\n" not in str(info.value)
    assert [p.name for p in real.rglob("*")] == ["images", "Abyssinian_1.jpg"]
    assert (real / "images" / "Abyssinian_1.jpg").read_bytes() == b"not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oxford-iiit-pet"]


def test_refuses_foreign_marker(tmp_path: Path) -> None:
    folder = tmp_path / "oxford-iiit-pet"
    folder.mkdir()
    (folder / MARKER_NAME).write_text('{"generator": "someone else"}')
    with pytest.raises(DataError):
        make_synthetic_dataset(tmp_path, **SMALL)
    assert (folder / MARKER_NAME).read_text() == '{"generator": "someone else"}'


@pytest.mark.parametrize(
    "bad",
    [
        {"num_images": 3},
        {"seed": -1},
        {"min_size": 8},
        {"min_size": 64, "max_size": 32},
        {"test_fraction": 0.0},
        {"test_fraction": 1.0},
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path, **{**SMALL, **bad})
    assert not (tmp_path / "oxford-iiit-pet").exists()
