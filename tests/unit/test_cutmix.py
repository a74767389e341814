"""data.cutmix: a box of each chosen image and of its label map comes from the next image in the batch, the same
box for both; seeded boxes replay; the box's area share is uniform."""

from __future__ import annotations

import torch

from seg_pet.config import load_config
from seg_pet.data.loaders import epoch_train_loader
from seg_pet.data.sources import build_datasets
from seg_pet.data.transforms import CutMixBatches, cutmix
from seg_pet.runtime.device import Runtime
from tests.conftest import REPO, tiny_overrides


def numbered_batch(count: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i and its label map are filled with i, so every pixel says which image it came from."""
    ids = torch.arange(count, dtype=torch.float32)[:, None, None, None]
    return ids.expand(count, 3, size, size).clone(), ids[:, 0].expand(count, size, size).long().clone()


def test_each_box_comes_from_the_next_image_for_pixels_and_labels_alike():
    images, targets = numbered_batch()
    out_images, out_targets = cutmix(images, targets, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(images, numbered_batch()[0])  # the input is left as it was
    pasted_somewhere = False
    for i in range(len(images)):
        partner = (i - 1) % len(images)
        pasted = out_targets[i] != i
        assert set(out_targets[i].unique().tolist()) <= {i, partner}
        assert torch.equal(out_images[i, 0] != i, pasted) and torch.equal(out_images[i, 1] != i, pasted)
        if pasted.any():  # the pasted pixels form one rectangle
            pasted_somewhere = True
            rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
            assert pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
            assert pasted.sum() == len(rows) * len(cols)
    assert pasted_somewhere


def test_nothing_changes_at_probability_zero_and_seeded_boxes_replay():
    images, targets = numbered_batch()
    same = cutmix(images, targets, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(same[0], images) and torch.equal(same[1], targets)
    first = cutmix(images, targets, 0.5, torch.Generator().manual_seed(3))
    again = cutmix(images, targets, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_the_box_area_share_is_uniform_and_the_probability_holds():
    images, targets = numbered_batch(count=2, size=64)
    generator = torch.Generator().manual_seed(1)
    shares, mixed = [], 0
    for _ in range(1500):
        _, out = cutmix(images, targets, 0.3, generator)
        share = (out[0] != 0).float().mean().item()
        mixed += share > 0
        if share > 0:
            shares.append(share)
    assert 0.25 < mixed / 1500 < 0.35
    assert 0.45 < sum(shares) / len(shares) < 0.55  # uniform area share: mean 1/2 (a uniform side would give 1/3)


def test_train_batches_get_cutmix_only_when_asked(tmp_path):
    def loader(**sets):
        cfg = load_config(REPO / "configs" / "smoke.yaml", tiny_overrides(tmp_path, real=False, **sets))
        train_set = build_datasets(cfg)["train"]
        return epoch_train_loader(cfg, train_set, None, 4, 0, 1, Runtime.create("cpu"))

    assert not isinstance(loader(), CutMixBatches)
    assert not isinstance(loader(**{"data.cutmix": 0.5, "data.augment": "false"}), CutMixBatches)
    mixed = loader(**{"data.cutmix": 0.5})
    assert isinstance(mixed, CutMixBatches) and mixed.prob == 0.5 and len(mixed) == len(mixed.loader)
    images, targets = next(iter(mixed))
    assert images.shape[0] == 4 and targets.shape == (4, *images.shape[-2:])
