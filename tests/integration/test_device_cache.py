"""data.cache: device, on CPU: batched augmentation (transforms.BatchAugment) and device-resident batches (cache.DeviceBatches).

The device here is the CPU; the code is the same tensor code a GPU runs (CI has no GPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from seg_pet.config import load_config
from seg_pet.config.schema import DataConfig
from seg_pet.data.cache import DeviceBatches, DeviceCache, attach_cache
from seg_pet.data.loaders import make_loader
from seg_pet.data.sources import build_datasets
from seg_pet.data.synthetic import make_synthetic_dataset
from seg_pet.data.transforms import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, BatchAugment, jitter_batch, shift_hue

SIZE = 32
CROP_SCALE = tuple(DataConfig().crop_scale)
CPU = torch.device("cpu")


def _originals(count: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random uint8 images and labels 0..2 of differing sizes, like the training cache's decoded originals."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for i in range(count):
        h, w = 40 + 7 * (i % 5), 48 + 5 * (i % 7)
        images.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
        labels.append(torch.randint(0, 3, (h, w), dtype=torch.uint8, generator=g))
    return images, labels


def _denormalise(batch: torch.Tensor) -> torch.Tensor:
    return batch * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)


# --------------------------------------------------------------------------- the jitter steps equal torchvision's


def test_shift_hue_matches_torchvision_adjust_hue():
    images = torch.rand(9, 3, 16, 16)
    images[0] = 0.5  # grey: no hue at all
    images[1, :, :4] = 0.0  # black
    images[2, 0] = images[2, 1]  # ties between channels
    shifts = torch.linspace(-0.5, 0.5, 9)
    expected = torch.stack([F.adjust_hue(image, float(s)) for image, s in zip(images, shifts)])
    torch.testing.assert_close(shift_hue(images, shifts), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("step, adjust", [(0, F.adjust_brightness), (1, F.adjust_contrast), (2, F.adjust_saturation), (3, F.adjust_hue)])
def test_each_jitter_step_matches_torchvision_per_image(step, adjust):
    images = torch.rand(6, 3, 12, 12)
    factors = torch.stack([torch.linspace(0.6, 1.4, 6)] * 3)
    hue = torch.linspace(-0.1, 0.1, 6)
    out = jitter_batch(images.clone(), factors, hue, [step])
    per_image = hue if step == 3 else factors[step]
    expected = torch.stack([adjust(image, float(f)) for image, f in zip(images, per_image)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_colour_parameters_differ_per_image():
    """v2.ColorJitter applied to a batch gives every image the same factors; BatchAugment must not."""
    torch.manual_seed(0)
    images = torch.rand(1, 3, 16, 16).expand(8, 3, 16, 16).clone()
    out = BatchAugment(SIZE, CROP_SCALE).colour(images)
    assert len({tuple(image.flatten()[:5].tolist()) for image in out}) == 8
    shared = v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)(images)
    assert len({tuple(image.flatten()[:5].tolist()) for image in shared}) == 1  # the reason BatchAugment exists


# --------------------------------------------------------------------------- crop and flip


def test_crops_are_torchvision_random_resized_crops():
    """Same seed: the same crop boxes as v2.RandomResizedCrop image by image; labels exactly, images to rounding."""
    images, labels = _originals(6)
    torch.manual_seed(5)
    batch, targets = BatchAugment(SIZE, CROP_SCALE, flip=False, jitter=False)(images, labels)
    assert batch.shape == (6, 3, SIZE, SIZE) and batch.dtype == torch.float32
    assert targets.shape == (6, SIZE, SIZE) and targets.dtype == torch.int64
    reference = v2.Compose(
        [
            v2.RandomResizedCrop((SIZE, SIZE), scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    torch.manual_seed(5)
    for i, (image, label) in enumerate(zip(images, labels)):
        ref_image, ref_label = reference(tv_tensors.Image(image), tv_tensors.Mask(label))
        assert torch.equal(targets[i], ref_label.as_subclass(torch.Tensor).long())
        # The reference resizes uint8 and rounds; BatchAugment stays float: at most one grey level apart.
        assert (batch[i] - ref_image).abs().max() <= 1.01 / 255 / min(IMAGENET_STD)


def test_flip_is_drawn_per_image_and_applied_to_image_and_labels_together():
    images, labels = _originals(64, seed=1)
    torch.manual_seed(3)
    plain_images, plain_labels = BatchAugment(SIZE, CROP_SCALE, flip=False, jitter=False)(images, labels)
    torch.manual_seed(3)  # crops are drawn before flips, so the boxes are the same
    images_out, labels_out = BatchAugment(SIZE, CROP_SCALE, flip=True, jitter=False)(images, labels)
    flipped = 0
    for i in range(64):
        if torch.equal(labels_out[i], plain_labels[i]):
            torch.testing.assert_close(images_out[i], plain_images[i])
        else:
            assert torch.equal(labels_out[i], plain_labels[i].flip(-1))
            torch.testing.assert_close(images_out[i], plain_images[i].flip(-1))
            flipped += 1
    assert 16 <= flipped <= 48  # p = 0.5 per image, not one coin for the batch


def test_labels_follow_the_pixels_through_the_whole_augmentation():
    """Images painted by label (blocky regions): after crop, flip and jitter the colour still tells the label."""
    palette = torch.tensor([[220, 30, 30], [30, 220, 30], [30, 30, 220]], dtype=torch.uint8)
    g = torch.Generator().manual_seed(2)
    images, labels = [], []
    for i in range(16):
        blocks = torch.randint(0, 3, (6, 5), generator=g, dtype=torch.uint8)
        label = F.resize_mask(blocks[None], [60 + 2 * i, 50 + 3 * i])[0]
        images.append(palette[label.long()].permute(2, 0, 1).contiguous())
        labels.append(label)
    torch.manual_seed(0)
    batch, targets = BatchAugment(SIZE, CROP_SCALE)(images, labels)
    rgb = _denormalise(batch)
    predicted = rgb.argmax(dim=1)  # the dominant channel is the painted label, jitter or not
    agreement = (predicted == targets).float().mean()
    assert agreement > 0.9, agreement  # only pixels on block edges (interpolated colours) may disagree


# --------------------------------------------------------------------------- device-resident batches


@pytest.fixture()
def datasets(tmp_path: Path):
    make_synthetic_dataset(tmp_path / "data", num_images=16, seed=1)
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", "data.source=oxford", f"data.image_size={SIZE}", "data.num_workers=0"])
    return build_datasets(cfg)


def _silent(_: str) -> None:
    pass


def test_device_validation_batches_equal_the_dataloader_batches(datasets, tmp_path):
    val = datasets["val"]
    attach_cache(val, "device", data_root=tmp_path / "data", log=_silent)
    expected = list(make_loader(val, 2, shuffle=False, num_workers=0))
    cache = DeviceCache(val, CPU)
    assert val.cache is None and cache.stacked  # the host copy is released; evaluation entries are one tensor
    batches = list(DeviceBatches(cache, 2, shuffle=False))
    assert len(batches) == len(expected) == len(DeviceBatches(cache, 2, shuffle=False))
    for (images, labels), (ref_images, ref_labels) in zip(batches, expected):
        torch.testing.assert_close(images, ref_images, atol=1e-6, rtol=0)
        assert labels.dtype == torch.int64 and torch.equal(labels, ref_labels)


def test_device_training_batches_cover_each_image_once_in_seeded_order(datasets, tmp_path):
    train = datasets["train"]
    attach_cache(train, "memory", data_root=tmp_path / "data", log=_silent)
    cache = DeviceCache(train, CPU)
    n = len(cache)

    def record(images, labels):  # stands in for BatchAugment: which cached images were picked
        return [image.data_ptr() for image in images], [label.data_ptr() for label in labels]

    def epoch(seed):
        return [ptrs for ptrs, _ in DeviceBatches(cache, 4, shuffle=True, drop_last=True, augment=record, seed=seed)]

    first = epoch(7)
    assert len(first) == n // 4 == len(DeviceBatches(cache, 4, shuffle=True, drop_last=True, augment=record))
    picked = [p for batch in first for p in batch]
    assert len(set(picked)) == len(picked) == (n // 4) * 4
    assert first == epoch(7) and first != epoch(8)
    torch.manual_seed(0)
    images, labels = next(iter(DeviceBatches(cache, 4, shuffle=True, drop_last=True, augment=BatchAugment(SIZE, CROP_SCALE), seed=7)))
    assert images.shape == (4, 3, SIZE, SIZE) and labels.shape == (4, SIZE, SIZE)
    assert set(labels.unique().tolist()) <= {0, 1, 2}  # trimap 1..3 remapped once, on the way in


def test_native_resolution_keeps_a_list_of_original_size_labels(tmp_path):
    make_synthetic_dataset(tmp_path / "data", num_images=16, seed=1)
    cfg = load_config(
        None,
        [
            f"data.root={tmp_path / 'data'}",
            "data.source=oxford",
            f"data.image_size={SIZE}",
            "data.num_workers=0",
            "eval.native_resolution=true",
        ],
    )
    val = build_datasets(cfg)["val"]
    attach_cache(val, "memory", data_root=tmp_path / "data", log=_silent)
    expected = list(make_loader(val, 2, shuffle=False, num_workers=0))
    batches = list(DeviceBatches(DeviceCache(val, CPU), 2, shuffle=False))
    for (images, labels), (ref_images, ref_labels) in zip(batches, expected):
        torch.testing.assert_close(images, ref_images, atol=1e-6, rtol=0)
        assert isinstance(labels, list) and all(torch.equal(a, b) for a, b in zip(labels, ref_labels))


def test_evaluation_batches_need_one_image_size(datasets, tmp_path):
    train = datasets["train"]
    attach_cache(train, "memory", data_root=tmp_path / "data", log=_silent)
    with pytest.raises(ValueError, match="one size"):
        DeviceBatches(DeviceCache(train, CPU), 4, shuffle=False)


def test_a_cache_too_big_for_the_device_is_one_line_and_leaves_no_run(tmp_path, monkeypatch, capsys):
    import seg_pet.data.loaders as loaders_module
    from seg_pet.cli import main
    from tests.conftest import set_args, tiny_overrides

    def out_of_memory(dataset, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.40 GiB")

    monkeypatch.setattr(loaders_module, "DeviceCache", out_of_memory)
    config = tmp_path / "empty.yaml"
    config.write_text("")
    code = main(["train", "--config", str(config), *set_args(tiny_overrides(tmp_path / "out", real=False, **{"data.cache": "device"}))])
    err = capsys.readouterr().err
    assert code == 2
    assert "data.cache: device" in err and "data.cache: memory" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "run").exists()


def test_training_order_does_not_replay_the_augmentation_random_stream(datasets, tmp_path):
    """train seeds torch's global RNG (BatchAugment's source) with the epoch seed; an order drawn from a
    generator with that same seed tied each image's position to the crops (measured: lower mIoU on 8 of 8 seeds)."""
    train = datasets["train"]
    attach_cache(train, "memory", data_root=tmp_path / "data", log=_silent)
    cache = DeviceCache(train, CPU)
    index_of = {image.data_ptr(): i for i, image in enumerate(cache.images)}

    def record(images, labels):
        return [index_of[image.data_ptr()] for image in images], None

    for seed in (0, 7, 100_003):
        order = [i for batch, _ in DeviceBatches(cache, 1, shuffle=True, augment=record, seed=seed) for i in batch]
        assert sorted(order) == list(range(len(cache)))
        assert order != torch.randperm(len(cache), generator=torch.Generator().manual_seed(seed)).tolist()
