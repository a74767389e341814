"""Joint image/mask transforms, built on torchvision.transforms.v2.

Images travel as `tv_tensors.Image` (uint8) and masks as `tv_tensors.Mask`, so every
geometric transform is applied to both and masks are always resampled with nearest
neighbour (v2 does this for Mask by type; no class value is ever interpolated).
Photometric transforms (colour jitter, normalisation) touch the image only.

train_transforms runs per image in DataLoader workers; BatchAugment is the same augmentation
for whole batches on the device, used when the training cache lives there (data.cache: device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import (
    RandomResizedCrop,  # v1: its get_params is the public per-image sampler
    v2,
)
from torchvision.transforms.v2 import functional as F

from seg_pet.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_float_normalised() -> list[v2.Transform]:
    # ToDtype with a dict converts the Image and leaves the Mask's integer labels alone.
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


# The training augmentation, shared by the per-image pipeline (train_transforms, in DataLoader
# workers) and the batched one (BatchAugment, on the device) so the two cannot drift apart.
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}


def train_transforms(size: int, crop_scale: tuple[float, float], rotation: float = 0.0, mask_fill: int = 0) -> v2.Compose:
    """Random resized crop (`crop_scale`: share of the area) + a random rotation up to `rotation` degrees
    + horizontal flip + light colour jitter, then ImageNet normalisation.

    The rotation fills the corners it uncovers with 0 in the image and `mask_fill` in the mask: a code
    the label lookup maps to IGNORE_INDEX (LabelSpec.fill_code): no loss there."""
    fill = 0 if mask_fill == 0 else {tv_tensors.Image: 0, tv_tensors.Mask: mask_fill}
    rotate = [v2.RandomRotation(rotation, interpolation=v2.InterpolationMode.BILINEAR, fill=fill)] if rotation else []
    return v2.Compose(
        [
            v2.RandomResizedCrop((size, size), scale=tuple(crop_scale), ratio=CROP_RATIO, antialias=True),
            *rotate,
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(**JITTER),
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
    """The deterministic step a decoded-image cache (seg_pet.data.cache) stores; its repr is part of the cache key.

    mode "original":     no resize (training). The random crop then cuts from exactly the pixels it
                         would cut from without a cache, so cached training is bit-identical too.
    mode "square":       `size` x `size`, exactly the first step of eval_transforms, which then finds
                         the image already at size and returns it unchanged (bit-identical evaluation);
    mode "square-image": as "square" for the image, the mask untouched (native-resolution evaluation).
    The mask is resampled with nearest neighbour (v2 does so for Mask by type).
    """

    size: Optional[int]
    mode: str

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        if self.mode == "original":
            return image, mask
        square = [self.size, self.size]
        if self.mode == "square":
            return F.resize(image, square, antialias=True), F.resize(mask, square)
        if self.mode == "square-image":
            return F.resize(image, square, antialias=True), mask
        raise ValueError(f"unknown CacheResize mode {self.mode!r}")


def train_cache_resize() -> CacheResize:
    return CacheResize(None, "original")


def eval_cache_resize(size: int, native: bool = False) -> CacheResize:
    return CacheResize(size, "square-image" if native else "square")


class ImageOnly:
    """Apply a joint transform to the image only and pass the mask through unchanged.

    Used for native-resolution evaluation: the model sees the image at image_size, the
    metrics see the mask at its original size. A class (not a lambda) so workers can pickle it.
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


# --------------------------------------------------------------------------- batched augmentation on the device


def normalise_batch(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (any leading dims) -> ImageNet-normalised, on their own device."""
    return F.normalize_image(images, list(IMAGENET_MEAN), list(IMAGENET_STD))


def shift_hue(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """F.adjust_hue with one shift per image: float images (B, 3, H, W) in [0, 1], shifts (B,) in turns.

    RGB -> HSV, hue += shift (mod 1), HSV -> RGB, as torchvision does, in closed form: with
    value = max and chroma = max - min, each channel is value - chroma * clamp(min(k, 4 - k), 0, 1)
    for k = (n + 6 * hue) mod 6, n = 5, 3, 1. Matches F.adjust_hue to 1e-6 (tests/test_device_cache.py).
    """
    r, g, b = images.unbind(1)
    value = images.amax(1)
    chroma = value - images.amin(1)
    safe = torch.where(chroma > 0, chroma, 1.0)
    hue = torch.where(value == r, (g - b) / safe, torch.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = (torch.where(chroma > 0, hue, 0.0) / 6 + shifts.view(-1, 1, 1)) % 1
    k = (torch.tensor([5.0, 3.0, 1.0], device=images.device).view(1, 3, 1, 1) + 6 * hue[:, None]) % 6
    return value[:, None] - chroma[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


def jitter_batch(images: torch.Tensor, factors: torch.Tensor, hue: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Brightness (step 0), contrast (1), saturation (2), hue (3) in `order`, one factor per image.

    `images` float (B, 3, H, W) in [0, 1]; `factors` (3, B) for steps 0-2; `hue` (B,) in turns.
    Each step is torchvision's F.adjust_* on float images, with clamping to [0, 1] after it.
    """
    brightness, contrast, saturation = factors.view(3, len(images), 1, 1, 1)
    for step in order:
        if step == 0:
            images = images * brightness
        elif step == 1:
            mean = F.rgb_to_grayscale_image(images).mean(dim=(-3, -2, -1), keepdim=True)
            images = images * contrast + mean * (1 - contrast)
        elif step == 2:
            gray = F.rgb_to_grayscale_image(images)
            images = images * saturation + gray * (1 - saturation)
        else:
            images = shift_hue(images, hue)
        images = images.clamp_(0, 1)
    return images


class BatchAugment:
    """train_transforms for a whole batch at once, on the device the tensors live on (`data.cache: device`).

    Takes lists of uint8 images (3, H_i, W_i) and uint8 label maps (H_i, W_i) of differing sizes,
    all on one device; returns normalised float images (B, 3, size, size) and int64 labels (B, size, size).
    Every image gets its own random parameters, drawn from the same distributions as train_transforms:
      crop    torchvision's RandomResizedCrop.get_params per image (torch's global RNG, which train
              reseeds every epoch). The crop is a view; its resize (antialiased bilinear for the image,
              nearest for the labels) is the one per-image step, since the originals differ in size.
      flip    p = 0.5 per image, one torch.where over the batch.
      jitter  brightness, contrast and saturation factors and a hue shift per image, applied to the
              whole batch as broadcast arithmetic.
    Differences from the per-image pipeline (none changes what is learned in kind; docs/performance.md,
    Device cache): arithmetic stays float32 (the CPU path rounds to uint8 after the resize and after
    each jitter step), and the order of the four jitter steps is drawn per batch, where ColorJitter
    draws it per image. Each jitter step on its own equals torchvision's F.adjust_* on float images.
    Written by hand: torchvision's v2 transforms draw one set of parameters per call, so applied to a
    batch they would give every image the same crop, flip and jitter.
    """

    def __init__(self, size: int, crop_scale: tuple[float, float], rotation: float = 0.0, *, flip: bool = True, jitter: bool = True):
        self.size, self.crop_scale, self.rotation, self.flip, self.jitter = size, list(crop_scale), rotation, flip, jitter

    def __repr__(self) -> str:
        return (
            f"BatchAugment(size={self.size}, crop_scale={self.crop_scale}, rotation={self.rotation}, "
            f"flip={self.flip}, jitter={self.jitter})"
        )

    def crop(self, images: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Random resized crop of each image to size x size: float images in [0, 1] and uint8 labels, stacked."""
        size = [self.size, self.size]
        out_images, out_labels = [], []
        for image, label in zip(images, labels):
            top, left, h, w = RandomResizedCrop.get_params(image, self.crop_scale, list(CROP_RATIO))
            crop = F.resize_image(image[:, top : top + h, left : left + w].float().div_(255), size, antialias=True)
            label = F.resize_mask(label[None, top : top + h, left : left + w], size)
            if self.rotation:  # as v2.RandomRotation: one uniform angle per image; uncovered corners are ignored
                angle = float(torch.empty(1).uniform_(-self.rotation, self.rotation))
                crop = F.rotate_image(crop, angle, interpolation=F.InterpolationMode.BILINEAR, fill=0)
                label = F.rotate_mask(label, angle, fill=IGNORE_INDEX)  # labels here are class indices already
            out_images.append(crop)
            out_labels.append(label[0])
        return torch.stack(out_images), torch.stack(out_labels)

    def colour(self, images: torch.Tensor) -> torch.Tensor:
        """ColorJitter with per-image factors on float images (B, 3, H, W) in [0, 1]."""
        count = len(images)
        spread = torch.tensor([JITTER["brightness"], JITTER["contrast"], JITTER["saturation"]])[:, None]
        factors = 1 + (2 * torch.rand(3, count) - 1) * spread  # uniform in [1 - spread, 1 + spread], as ColorJitter
        hue = (2 * torch.rand(count) - 1) * JITTER["hue"]
        return jitter_batch(
            images, factors.to(images.device, non_blocking=True), hue.to(images.device, non_blocking=True), torch.randperm(4).tolist()
        )

    def __call__(self, images: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        batch, targets = self.crop(images, labels)
        if self.flip:
            flip = (torch.rand(len(batch)) < 0.5).to(batch.device, non_blocking=True)
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            targets = torch.where(flip[:, None, None], targets.flip(-1), targets)
        if self.jitter:
            batch = self.colour(batch)
        return normalise_batch(batch), targets.long()


def cutmix(images: torch.Tensor, targets: torch.Tensor, prob: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix for segmentation (Yun et al. 2019; French et al. 2020): with probability `prob` per image, a random
    box of it and of its label map is replaced by the same box of the next image in the batch.

    The box's area share is uniform in [0, 1) (CutMix's lambda ~ Beta(1, 1)), its aspect that of the image,
    its centre uniform with the box clipped at the border. Labels are pasted with their pixels, so the loss
    stays exact. `generator` (CPU) draws everything, so a seeded epoch replays the same boxes; the tensors
    may live on any device. Returns new tensors; a batch of one is returned unchanged.
    """
    count, height, width = len(images), images.shape[-2], images.shape[-1]
    if count < 2 or prob <= 0:
        return images, targets
    mixed = torch.rand(count, generator=generator) < prob
    side = torch.rand(count, generator=generator).sqrt()  # box side / image side: its area share is uniform
    centre = torch.rand(count, 2, generator=generator)
    images, targets = images.clone(), targets.clone()
    partner_images, partner_targets = images.roll(1, 0), targets.roll(1, 0)
    for i in torch.nonzero(mixed).flatten().tolist():
        h, w = int(side[i] * height), int(side[i] * width)
        top = min(max(int(centre[i, 0] * height) - h // 2, 0), height - h)
        left = min(max(int(centre[i, 1] * width) - w // 2, 0), width - w)
        images[i, :, top : top + h, left : left + w] = partner_images[i, :, top : top + h, left : left + w]
        targets[i, top : top + h, left : left + w] = partner_targets[i, top : top + h, left : left + w]
    return images, targets


class CutMixBatches:
    """A training loader whose batches get `cutmix` (data.cutmix); its own generator is seeded per epoch and process."""

    def __init__(self, loader, prob: float, seed: int):
        self.loader, self.prob, self.seed = loader, prob, seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        for images, targets in self.loader:
            yield cutmix(images, targets, self.prob, generator)
