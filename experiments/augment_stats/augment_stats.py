"""Do the two training augmentations produce the same pixels on average? Per-image v2 against BatchAugment.

Draws `--repeats` augmented copies of every training image of the real data through
    per-image   data.transforms.train_transforms, image by image (what DataLoader workers run)
    batched     data.transforms.BatchAugment on the whole list (what data.cache: device runs)
with and without colour jitter, and prints the mean of the normalised pixels, their mean
per-image standard deviation, and the class fractions of the labels. A difference in the mean
is given in grey levels (0..255) too.

    python experiments/augment_stats/augment_stats.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from seg_pet.config import label_spec, load_config
from seg_pet.data.cache import attach_cache
from seg_pet.data.sources import build_datasets
from seg_pet.data.transforms import IMAGENET_STD, BatchAugment, train_transforms


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def summary(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, object]:
    counts = torch.bincount(labels[labels < num_classes].flatten(), minlength=num_classes).float()
    return {"mean": images.mean().item(), "std": images.std(dim=(2, 3)).mean().item(), "classes": (counts / counts.sum()).tolist()}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    cfg = load_config(None, [f"data.root={args.data_root}", f"data.image_size={args.image_size}", "data.num_workers=0"])
    names = list(label_spec(cfg.data).names)
    train = build_datasets(cfg)["train"]
    attach_cache(train, "memory", data_root=cfg.data.root, log=lambda _: None)
    images = [image for image, _ in train.cache]
    labels = [train.lut.to(torch.uint8)[trimap.long()] for _, trimap in train.cache]
    grey_level = 255 * sum(IMAGENET_STD) / 3  # one grey level in normalised units, roughly
    for jitter in (False, True):
        steps = train_transforms(args.image_size, cfg.data.crop_scale, cfg.data.rotation).transforms
        per_image = v2.Compose([t for t in steps if jitter or not isinstance(t, v2.ColorJitter)])
        torch.manual_seed(args.seed)
        pairs = [per_image(tv_tensors.Image(i), tv_tensors.Mask(m)) for _ in range(args.repeats) for i, m in zip(images, labels)]
        a = summary(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]).long(), len(names))
        torch.manual_seed(args.seed)
        batches = [
            BatchAugment(args.image_size, cfg.data.crop_scale, cfg.data.rotation, jitter=jitter)(images, labels)
            for _ in range(args.repeats)
        ]
        b = summary(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), len(names))
        print(
            f"jitter {'on ' if jitter else 'off'}  per-image: mean {a['mean']:+.4f} std {a['std']:.4f} classes "
            + " ".join(f"{n} {f:.3f}" for n, f in zip(names, a["classes"]))
        )
        print(
            f"            batched:   mean {b['mean']:+.4f} std {b['std']:.4f} classes "
            + " ".join(f"{n} {f:.3f}" for n, f in zip(names, b["classes"]))
        )
        print(f"            batched - per-image mean: {(b['mean'] - a['mean']) * grey_level:+.2f} grey levels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
