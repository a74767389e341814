"""Joint image/mask transforms, built on torchvision.transforms.v2.

Images travel as `tv_tensors.Image` (uint8) and trimaps as `tv_tensors.Mask`, so every
geometric transform is applied to both and masks are always resampled with nearest
neighbour (v2 does this for Mask by type; no class value is ever interpolated).
Photometric transforms (colour jitter, normalisation) touch the image only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_float_normalised() -> list[v2.Transform]:
    # ToDtype with a dict converts the Image and leaves the Mask's integer labels alone.
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transforms(size: int) -> v2.Compose:
    """Random resized crop + horizontal flip + light colour jitter, then ImageNet normalisation."""
    return v2.Compose(
        [
            v2.RandomResizedCrop((size, size), scale=(0.35, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
            *_to_float_normalised(),
        ]
    )


def eval_transforms(size: int) -> v2.Compose:
    """Deterministic resize to size x size, then ImageNet normalisation."""
    return v2.Compose([v2.Resize((size, size), antialias=True), *_to_float_normalised()])


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Undo ImageNet normalisation: (3, H, W) float -> (H, W, 3) uint8, for overlays."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    rgb = (image.float() * std + mean).clamp(0, 1).mul(255).round().byte()
    return rgb.permute(1, 2, 0).cpu().numpy()


# --------------------------------------------------------------------------- cache and native-resolution helpers

@dataclass(frozen=True)
class CacheResize:
    """The deterministic step a decoded-image cache (seg_pet.cache) stores; its repr is part of the cache key.

    mode "original":     no resize (training). The random crop then cuts from exactly the pixels it
                         would cut from without a cache, so cached training is bit-identical too.
                         A shrunk copy (shorter side 1.15x or 1.95x image_size) saved memory but
                         lowered test mIoU in 8 of 8 short runs (docs: Performance).
    mode "square":       `size` x `size`, exactly the first step of eval_transforms, which then finds
                         the image already at size and returns it unchanged (bit-identical evaluation);
    mode "square-image": as "square" for the image, the trimap untouched (native-resolution evaluation).
    The trimap is resampled with nearest neighbour (v2 does so for Mask by type).
    """

    size: Optional[int]
    mode: str

    def __call__(self, image: tv_tensors.Image, trimap: tv_tensors.Mask) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        if self.mode == "original":
            return image, trimap
        square = [self.size, self.size]
        if self.mode == "square":
            return F.resize(image, square, antialias=True), F.resize(trimap, square)
        if self.mode == "square-image":
            return F.resize(image, square, antialias=True), trimap
        raise ValueError(f"unknown CacheResize mode {self.mode!r}")


def train_cache_resize(size: int) -> CacheResize:
    return CacheResize(None, "original")


def eval_cache_resize(size: int, native: bool = False) -> CacheResize:
    return CacheResize(size, "square-image" if native else "square")


class ImageOnly:
    """Apply a joint transform to the image only and pass the mask through unchanged.

    Used for native-resolution evaluation: the model sees the image at image_size, the
    metrics see the trimap at its original size. A class (not a lambda) so workers can pickle it.
    """

    def __init__(self, transform: v2.Transform):
        self.transform = transform

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, tv_tensors.Mask]:
        return self.transform(image), mask

    def __repr__(self) -> str:
        return f"ImageOnly({self.transform!r})"


def native_eval_transforms(size: int) -> ImageOnly:
    """eval_transforms for the image; the mask stays at the original resolution."""
    return ImageOnly(eval_transforms(size))
