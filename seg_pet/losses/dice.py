"""The Dice forms: smp's soft Dice, and the squared-denominator Dice (V-Net) that smp lacks.

`dice_loss(variant, ...)` picks one: `dice` / `dice_sq` over all classes (or `classes`),
`dice_fg` / `dice_fg_sq` over every class but background.
"""

from __future__ import annotations

from typing import Optional

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from seg_pet.labels import IGNORE_INDEX

_EPS = 1e-7  # same denominator clamp as smp's soft_dice_score, so dice and dice_sq agree


class SquaredDiceLoss(nn.Module):
    """Soft Dice with squared denominator (Milletari et al., V-Net), per class c:

        loss_c = 1 - 2 * sum(p_c * g_c) / (sum(p_c^2) + sum(g_c^2))

    p = softmax(logits), g = one-hot target, sums over batch and pixels together; the
    result is the mean of loss_c over `classes` (default all). Written by hand because
    smp has no squared-denominator Dice; it copies smp DiceLoss's conventions so the two
    are comparable: ignored pixels are zeroed in p and g, denominator clamped to 1e-7,
    a class absent from the batch target gets loss 0 but still counts in the mean.
    """

    def __init__(self, classes: list[int] | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.classes = classes
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, c = logits.shape[:2]
        probs = logits.log_softmax(dim=1).exp().reshape(n, c, -1)
        target = target.reshape(n, -1)
        valid = (target != self.ignore_index).unsqueeze(1)
        onehot = F.one_hot(torch.where(valid.squeeze(1), target, 0), c).permute(0, 2, 1)
        onehot = (onehot * valid).to(probs.dtype)
        probs = probs * valid
        dims = (0, 2)
        intersection = (probs * onehot).sum(dims)
        denominator = (probs * probs).sum(dims) + onehot.sum(dims)  # g^2 == g for one-hot g
        loss = 1.0 - 2.0 * intersection / denominator.clamp_min(_EPS)
        loss = loss * (onehot.sum(dims) > 0).to(loss.dtype)
        if self.classes is not None:
            loss = loss[self.classes]
        return loss.mean()


def dice_loss(variant: str, classes: Optional[list[int]]) -> nn.Module:
    """Dice over `classes` (None: all); the foreground-only variants get the classes without the background
    from build_loss (the label spec's `background`)."""
    if variant.endswith("_sq"):
        return SquaredDiceLoss(classes=classes, ignore_index=IGNORE_INDEX)
    return smp.losses.DiceLoss(mode="multiclass", classes=classes, ignore_index=IGNORE_INDEX)
