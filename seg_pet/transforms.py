"""Joint image/mask transforms, built on torchvision.transforms.v2.

Images travel as `tv_tensors.Image` (uint8) and trimaps as `tv_tensors.Mask`, so every
geometric transform is applied to both and masks are always resampled with nearest
neighbour (v2 does this for Mask by type; no class value is ever interpolated).
Photometric transforms (colour jitter, normalisation) touch the image only.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

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
