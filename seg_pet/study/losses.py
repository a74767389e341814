"""The study's two loss families, chosen by `study.losses`: the original experiment's formulas, or the project's.

    classic   CLASSIC_LOSSES below: the formulas of G. Chlebus's experiment (2018), written out
    project   seg_pet.losses.BUILDERS: the losses `train` uses, with their own conventions

The classic formulas, with p = softmax(logits) and g = the one-hot target, both (N, C, H, W);
every sum runs over the batch and the pixels together, separately for each class c:

    cce            mean over pixels of  -sum_c g * log(clip(p, 1e-7, 1 - 1e-7))
    dice           1 - mean_c (2 sum p*g + eps) / (sum g   + sum p   + eps)      eps = 1e-7
    dice_square    1 - mean_c (2 sum p*g + eps) / (sum g^2 + sum p^2 + eps)
    dicefg         dice over the foreground channels only (every class but background)
    dicefg_square  dice_square over the foreground channels only

eps in the numerator lets a class that is absent from the batch, and not predicted, score 1.
clip also cuts the gradient: a pixel whose true-class probability is below 1e-7 (confidently
wrong) or above 1 - 1e-7 adds nothing to CCE's gradient.

Where the project's losses differ (docs/loss_study.md, "Two loss families"): `ce` is torch's
cross-entropy, not clipped; `dice` / `dice_sq` (smp conventions) have no eps in the numerator,
clamp the denominator at 1e-7 and give a class absent from the batch loss 0 whatever is predicted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seg_pet.config import LOSSES
from seg_pet.config.loading import build_loss_section, validate_loss
from seg_pet.labels import BACKGROUND, IGNORE_INDEX
from seg_pet.losses import build_loss, compute_class_weights, needs_class_weights

EPS = 1e-7  # the original's clip and smoothing constant (Keras's epsilon)
_SUM_DIMS = (0, 2, 3)  # batch and pixels: one sum per class


def cce(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return -(g * p.clamp(EPS, 1.0 - EPS).log()).sum(dim=1).mean()


def dice(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    score = (2 * (p * g).sum(_SUM_DIMS) + EPS) / (g.sum(_SUM_DIMS) + p.sum(_SUM_DIMS) + EPS)
    return 1.0 - score.mean()


def dice_square(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    score = (2 * (p * g).sum(_SUM_DIMS) + EPS) / ((g * g).sum(_SUM_DIMS) + (p * p).sum(_SUM_DIMS) + EPS)
    return 1.0 - score.mean()


# name -> (formula of (p, g), which channels it scores: "all" or "foreground")
CLASSIC_LOSSES: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]] = {
    "cce": (cce, "all"),
    "dice": (dice, "all"),
    "dice_square": (dice_square, "all"),
    "dicefg": (dice, "foreground"),
    "dicefg_square": (dice_square, "foreground"),
}


class ClassicLoss(nn.Module):
    """One classic formula on logits (N, C, H, W) and int64 targets (N, H, W).

    Pixels labelled IGNORE_INDEX are zeroed in p and g and left out of CCE's mean (the toy data
    has none; a Pet trimap may).
    """

    def __init__(self, name: str, class_names: list[str]) -> None:
        super().__init__()
        self.name = name
        self.formula, scored = CLASSIC_LOSSES[name]
        self.channels = [i for i, c in enumerate(class_names) if scored == "all" or c != BACKGROUND]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = (target != IGNORE_INDEX).unsqueeze(1)
        g = F.one_hot(torch.where(valid[:, 0], target, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
        p = logits.softmax(dim=1) * valid
        p, g = p[:, self.channels], g[:, self.channels].to(p.dtype)
        if self.formula is cce and not bool(valid.all()):
            return cce(p, g) * valid.numel() / valid.sum().clamp_min(1)  # the mean over labelled pixels only
        return self.formula(p, g)


def build_classic(names: list[str], class_names: list[str], pixel_counts: list[int]) -> dict[str, nn.Module]:
    return {name: ClassicLoss(name, class_names) for name in names}


def build_project(names: list[str], class_names: list[str], pixel_counts: list[int]) -> dict[str, nn.Module]:
    """The project's losses with their default options; `wce` gets inverse-frequency weights from the training pixels."""
    losses = {}
    for name in names:
        cfg = build_loss_section({"name": name})
        weights = compute_class_weights("inverse", pixel_counts) if needs_class_weights(cfg) else None
        losses[name] = build_loss(cfg, class_names, class_weights=weights, background=BACKGROUND)
    return losses


@dataclass(frozen=True)
class LossFamily:
    names: tuple[str, ...]  # what grid.losses may list
    build: Callable[[list[str], list[str], list[int]], dict[str, nn.Module]]  # (losses, class names, training pixel counts)
    check: Callable[[str, list[str]], None]  # raises ConfigError when a loss cannot run on these classes


LOSS_FAMILIES: dict[str, LossFamily] = {
    "classic": LossFamily(tuple(CLASSIC_LOSSES), build_classic, lambda name, class_names: None),
    "project": LossFamily(
        tuple(LOSSES),
        build_project,
        lambda name, class_names: validate_loss(build_loss_section({"name": name}), class_names, BACKGROUND),
    ),
}


def build_losses(
    family: str, names: list[str], class_names: list[str], pixel_counts: list[int], device: torch.device
) -> dict[str, nn.Module]:
    """name -> loss module, on `device`, for every loss in the grid (each run logs all of them)."""
    return {name: loss.to(device) for name, loss in LOSS_FAMILIES[family].build(names, class_names, pixel_counts).items()}
