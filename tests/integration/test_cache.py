"""Decoded-image cache (seg_pet.data.cache) and native-resolution evaluation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from seg_pet.config import load_config
from seg_pet.data.cache import CACHE_DIRNAME, attach_cache, disk_cache_dir
from seg_pet.data.loaders import make_loader
from seg_pet.data.sources import build_datasets, build_test_dataset
from seg_pet.data.synthetic import make_synthetic_dataset
from seg_pet.evaluation import evaluate_batches
from seg_pet.models import build_model
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.errors import DataError
from tests.conftest import REPO, set_args, tiny_overrides

SIZE = 32  # synthetic images are 48..96 px, so every resize below really shrinks


def _cfg(root: Path, *extra: str):
    return load_config(None, [f"data.root={root}", "data.source=oxford", f"data.image_size={SIZE}", "data.num_workers=0", *extra])


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A private synthetic dataset (tests below change its files)."""
    make_synthetic_dataset(tmp_path / "data", num_images=16, seed=1)
    return tmp_path / "data"


def _silent(_: str) -> None:
    pass


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("native", [False, True])
def test_cached_entries_equal_fresh_decode_and_resize(root, native):
    cfg = _cfg(root, f"eval.native_resolution={str(native).lower()}")
    datasets = build_datasets(cfg)
    for split, ds in datasets.items():
        attach_cache(ds, "memory", data_root=root, log=_silent)
        for i in range(len(ds)):
            fresh_image, fresh_trimap = ds.prepare(*ds.load(i))
            image, trimap = ds.cache[i]
            assert _same(image, fresh_image.as_subclass(torch.Tensor)) and _same(trimap, fresh_trimap.as_subclass(torch.Tensor))
            assert image.dtype == torch.uint8 and trimap.dtype == torch.uint8
            original_hw = tuple(ds.load(i)[1].shape)
            if split == "train":  # the decoded original
                assert tuple(image.shape[-2:]) == original_hw == tuple(trimap.shape)
            else:
                assert tuple(image.shape[-2:]) == (SIZE, SIZE)
                assert tuple(trimap.shape) == (original_hw if native else (SIZE, SIZE))
            assert set(torch.unique(trimap).tolist()) <= {1, 2, 3}  # nearest: no interpolated class values


def test_cached_evaluation_samples_are_bit_identical(root):
    val = build_datasets(_cfg(root))["val"]
    fresh = [val[i] for i in range(len(val))]
    attach_cache(val, "memory", data_root=root, log=_silent)
    for (image, mask), (cached_image, cached_mask) in zip(fresh, (val[i] for i in range(len(val)))):
        assert _same(image, cached_image) and _same(mask, cached_mask)


def test_cached_training_samples_are_bit_identical(root):
    train = build_datasets(_cfg(root))["train"]
    fresh = []
    for i in range(len(train)):
        torch.manual_seed(i)
        fresh.append(train[i])
    attach_cache(train, "memory", data_root=root, log=_silent)
    for i, (image, mask) in enumerate(fresh):
        torch.manual_seed(i)
        cached_image, cached_mask = train[i]
        assert _same(image, cached_image) and _same(mask, cached_mask)
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32


def test_training_batches_with_workers_are_bit_identical_with_and_without_cache(root):
    """What `train` sees: an epoch's loader (shuffle, worker RNG) with data.cache none vs memory."""
    train = build_datasets(_cfg(root))["train"]

    def epoch() -> list[tuple[torch.Tensor, torch.Tensor]]:
        torch.manual_seed(11)
        return list(make_loader(train, 4, shuffle=True, num_workers=1, seed=11, drop_last=True))

    fresh = epoch()
    attach_cache(train, "memory", data_root=root, log=_silent)
    cached = epoch()
    assert len(fresh) == len(cached) > 0
    assert all(_same(a, c) and _same(b, d) for (a, b), (c, d) in zip(fresh, cached))


def test_memory_cache_built_with_workers_equals_serial_and_workers_never_decode(root):
    serial, parallel = build_datasets(_cfg(root))["train"], build_datasets(_cfg(root))["train"]
    attach_cache(serial, "memory", data_root=root, log=_silent)
    attach_cache(parallel, "memory", data_root=root, num_workers=2, log=_silent)
    assert all(_same(a, c) and _same(b, d) for (a, b), (c, d) in zip(serial.cache, parallel.cache))
    # Remove every source image: forked loader workers must read the parent's cache, not the files.
    shutil.rmtree(root / "oxford-iiit-pet" / "images")
    loader = make_loader(parallel, 4, shuffle=True, num_workers=1, seed=0, drop_last=True)
    assert sum(images.shape[0] for images, _ in loader) == 4 * (len(parallel) // 4)


def test_disk_cache_lives_under_data_root_and_is_reused(root):
    messages: list[str] = []
    train = build_datasets(_cfg(root))["train"]
    path = attach_cache(train, "disk", data_root=root, log=messages.append)
    assert path is not None and path.parent == root / CACHE_DIRNAME and path.is_file()
    assert "decoded into" in messages[-1]
    again = build_datasets(_cfg(root))["train"]
    assert attach_cache(again, "disk", data_root=root, log=messages.append) == path
    assert "reading" in messages[-1]
    assert all(_same(a, c) and _same(b, d) for (a, b), (c, d) in zip(train.cache, again.cache))
    # Nothing but the cache file was written, and nothing outside data.root.
    assert sorted(p.name for p in (root / CACHE_DIRNAME).iterdir()) == [path.name]


def test_disk_cache_rebuilt_when_a_source_file_or_image_size_changes(root):
    train = build_datasets(_cfg(root))["train"]
    first = attach_cache(train, "disk", data_root=root, log=_silent)
    val_path = attach_cache(build_datasets(_cfg(root))["val"], "disk", data_root=root, log=_silent)

    # mtime only
    st = train.images[0].stat()
    os.utime(train.images[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = build_datasets(_cfg(root))["train"]
    second = attach_cache(touched, "disk", data_root=root, log=_silent)
    assert second != first

    # content and size: the cache must hold the new pixels
    with Image.open(train.images[1]) as im:
        flipped = im.convert("RGB").transpose(Image.FLIP_LEFT_RIGHT)
    flipped.save(train.images[1], quality=70)
    changed = build_datasets(_cfg(root))["train"]
    third = attach_cache(changed, "disk", data_root=root, log=_silent)
    assert third not in (first, second)
    fresh_image, _ = changed.prepare(*changed.load(1))
    assert _same(changed.cache[1][0], fresh_image.as_subclass(torch.Tensor))

    # a setting: image_size. Validation caches the resized image, so it is rebuilt; training caches
    # the decoded original, which does not depend on image_size, so its (unchanged) file is reused.
    other_val = attach_cache(build_datasets(_cfg(root, "data.image_size=64"))["val"], "disk", data_root=root, log=_silent)
    assert other_val != val_path and "-32px-" in val_path.name and "-64px-" in other_val.name
    assert attach_cache(build_datasets(_cfg(root, "data.image_size=64"))["train"], "disk", data_root=root, log=_silent) == third
    assert all(p.parent == root / CACHE_DIRNAME for p in (first, second, third, val_path, other_val))


def test_corrupt_disk_cache_is_rebuilt(root):
    train = build_datasets(_cfg(root))["train"]
    path = attach_cache(train, "disk", data_root=root, log=_silent)
    path.write_bytes(b"not a cache")
    messages: list[str] = []
    again = build_datasets(_cfg(root))["train"]
    assert attach_cache(again, "disk", data_root=root, log=messages.append) == path
    assert "decoded into" in messages[-1] and len(again.cache) == len(again)


def test_read_only_data_root_falls_back_to_the_run_folder(root, tmp_path):
    mode = root.stat().st_mode
    root.chmod(0o555)  # read-only by its mode bits (respected even when the tests run as root)
    try:
        assert disk_cache_dir(root, tmp_path / "run") == tmp_path / "run" / "cache"
        with pytest.raises(DataError, match="read-only"):
            disk_cache_dir(root, None)
        val = build_datasets(_cfg(root))["val"]
        path = attach_cache(val, "disk", data_root=root, run_dir=tmp_path / "run", log=_silent)
        assert path.parent == tmp_path / "run" / "cache"
        assert not (root / CACHE_DIRNAME).exists()
    finally:
        root.chmod(mode)


def _original_area(ds) -> int:
    total = 0
    for path in ds.masks:
        with Image.open(path) as im:
            total += im.size[0] * im.size[1]
    return total


def _tiny_model():
    torch.manual_seed(0)
    return build_model(load_config(None, ["model.encoder=resnet18", "model.encoder_weights=null"]).model, 3)


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_native_resolution_confusion_counts_every_original_pixel(root, cache):
    cfg = _cfg(root, "eval.native_resolution=true", "data.border=class")
    val = build_datasets(cfg)["val"]
    test = build_test_dataset(cfg)
    model = _tiny_model()
    for ds in (val, test):
        attach_cache(ds, cache, data_root=root, log=_silent)
        sizes = {tuple(ds[i][1].shape) for i in range(len(ds))}
        assert len(sizes) > 1  # the synthetic images really differ in size
        loader = make_loader(ds, 3, shuffle=False, num_workers=0)
        out = evaluate_batches(model, loader, NAMES, Runtime(torch.device("cpu")), loss_fn=torch.nn.CrossEntropyLoss(ignore_index=255))
        assert int(torch.tensor(out["confusion"]).sum()) == _original_area(ds)
        assert out["loss"] == out["loss"]  # finite mean of per-image losses


NAMES = ["pet", "background", "border"]


def test_image_size_evaluation_counts_resized_pixels(root):
    val = build_datasets(_cfg(root))["val"]
    model = _tiny_model()
    out = evaluate_batches(model, make_loader(val, 3, shuffle=False, num_workers=0), NAMES, Runtime(torch.device("cpu")))
    assert int(torch.tensor(out["confusion"]).sum()) == len(val) * SIZE * SIZE


@pytest.mark.slow
def test_train_with_memory_cache_and_native_resolution(tmp_path):
    """`train` end to end: cache built, validation and test scored at each image's original size."""
    from seg_pet.cli import main

    overrides = tiny_overrides(
        tmp_path,
        "native",
        real=False,
        **{"data.cache": "memory", "eval.native_resolution": "true", "optim.epochs": 1, "train.max_steps_per_epoch": 1},
    )
    assert main(["train", "--config", str(REPO / "configs" / "smoke.yaml"), *set_args(overrides)]) == 0
    run = tmp_path / "native"
    cfg = load_config(run / "config.yaml")
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert sum(map(sum, metrics["confusion"])) == _original_area(build_test_dataset(cfg))
    assert any((run / "overlays" / "epoch_001").glob("*_panel.png"))
