"""The losses layer: `BUILDERS` maps each `loss.name` to its builder; `build_loss` makes the module.

Every loss takes logits (N, C, H, W) and int64 targets (N, H, W), skips pixels whose target is
IGNORE_INDEX (no loss, no gradient) and returns a scalar; softmax happens inside the loss. The
name, options and help of each loss are declared in the config schema (LOSSES); a combined loss is a
weighted list of terms (WeightedSum).

    dice     the hand-written squared-denominator Dice, and the choice between the Dice forms
    weights  class weights from training-split pixel counts

The smp losses' own behaviour (absent classes, sigmoid focal, all pixels ignored) is pinned by
tests/unit/test_losses.py and described in docs/losses_and_metrics.md. With every pixel ignored
`build_loss` returns 0 (zero gradient), where torch CE and smp focal would give NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import segmentation_models_pytorch as smp
import torch
from torch import nn

from seg_pet.config import LOSSES, LossConfig, builders_for
from seg_pet.labels import IGNORE_INDEX
from seg_pet.losses.dice import dice_loss
from seg_pet.losses.weights import compute_class_weights, needs_class_weights

__all__ = ["BUILDERS", "WeightedSum", "SegLoss", "build_loss", "compute_class_weights", "needs_class_weights"]


class WeightedSum(nn.Module):
    """sum_i weight_i * loss_i(logits, target): a combined loss as a weighted list of terms."""

    def __init__(self, terms: list[tuple[float, nn.Module]]) -> None:
        super().__init__()
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList(loss for _, loss in terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.terms))


class SegLoss(nn.Module):
    """The module `build_loss` returns: the chosen loss, guarded against all-ignored batches."""

    def __init__(self, name: str, loss: nn.Module, ignore_index: int) -> None:
        super().__init__()
        self.name = name
        self.loss = loss
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # CE and smp focal give 0/0 = NaN (and smp Lovasz an empty tensor) when no pixel
        # is labelled; the trainer would read NaN as divergence, so return a real zero.
        if not bool((target != self.ignore_index).any()):
            return logits.sum() * 0.0
        return self.loss(logits, target)


# A builder gets (options, class names, class-weight tensor or None, the indices of `options.classes` or None).
Builder = Callable[[Any, list[str], Optional[torch.Tensor], Optional[list[int]]], nn.Module]


def _ce(o: Any, names: list[str], weights: Optional[torch.Tensor], classes: Optional[list[int]]) -> nn.Module:
    return nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE_INDEX, label_smoothing=float(o.label_smoothing))


def _dice_named(variant: str) -> Builder:
    return lambda o, names, weights, classes: dice_loss(variant, classes)


def _ce_dice(o: Any, names: list[str], weights: Optional[torch.Tensor], classes: Optional[list[int]]) -> nn.Module:
    return WeightedSum([(1.0, _ce(o, names, weights, None)), (o.dice_weight, dice_loss(o.dice_variant, classes))])


def _focal(o: Any, names: list[str], weights: Optional[torch.Tensor], classes: Optional[list[int]]) -> nn.Module:
    # smp's class_weights give a normalised weighted mean of the per-class (one-vs-rest) focal
    # terms, so a weight scales both misses and false alarms of that class.
    return smp.losses.FocalLoss(
        mode="multiclass", gamma=float(o.gamma), ignore_index=IGNORE_INDEX, class_weights=None if weights is None else weights.tolist()
    )


def _tversky(o: Any, names: list[str], weights: Optional[torch.Tensor], classes: Optional[list[int]]) -> nn.Module:
    return smp.losses.TverskyLoss(mode="multiclass", classes=classes, ignore_index=IGNORE_INDEX, alpha=float(o.alpha), beta=float(o.beta))


BUILDERS: dict[str, Builder] = builders_for(
    LOSSES,
    {
        "ce": _ce,
        "wce": _ce,
        "dice": _dice_named("dice"),
        "dice_sq": _dice_named("dice_sq"),
        "dice_fg": _dice_named("dice_fg"),
        "dice_fg_sq": _dice_named("dice_fg_sq"),
        "ce_dice": _ce_dice,
        "focal": _focal,
        "lovasz": lambda o, names, weights, classes: smp.losses.LovaszLoss(mode="multiclass", ignore_index=IGNORE_INDEX),
        "tversky": _tversky,
        "jaccard": lambda o, names, weights, classes: smp.losses.JaccardLoss(mode="multiclass", classes=classes, ignore_index=IGNORE_INDEX),
    },
)


def build_loss(
    cfg: LossConfig, class_names: list[str], class_weights: Optional[list[float]] = None, background: Optional[str] = None
) -> nn.Module:
    """The loss `cfg.name` names; forward(logits, target) returns a scalar.

    class_weights: the per-class weights from `compute_class_weights`; required when
    `needs_class_weights(cfg)`, taken from the config when it lists them explicitly.
    background: the label spec's background class, which the foreground-only Dice losses leave out.
    """
    setting = cfg.get("class_weights")
    if setting is None and class_weights is not None:
        raise ValueError(f"class weights were passed but loss {cfg.name!r} is configured without them")
    if isinstance(setting, str) and class_weights is None:
        raise ValueError(f"loss {cfg.name!r} uses {setting!r} class weights: pass compute_class_weights(...)")
    weights = class_weights if class_weights is not None else setting
    if weights is not None and len(weights) != len(class_names):
        raise ValueError(f"expected {len(class_names)} class weights, got {len(weights)}")
    weight_tensor = None if weights is None else torch.tensor([float(w) for w in weights])
    names = cfg.get("classes")
    classes = None if names is None else [class_names.index(n) for n in names]
    dice_kind = cfg.get("dice_variant") if cfg.name == "ce_dice" else cfg.name
    if dice_kind.startswith("dice_fg"):
        if background not in class_names:
            raise ValueError(f"loss {cfg.name!r} leaves out the background class: pass background= (one of {class_names})")
        classes = [i for i, n in enumerate(class_names) if n != background]
    return SegLoss(cfg.name, BUILDERS[cfg.name](cfg.options, class_names, weight_tensor, classes), IGNORE_INDEX)
