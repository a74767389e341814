"""Loss factory: config -> torch loss module, plus pixel-count-based class weights.

Owns the table of losses (`LOSS_OPTIONS`), their validation, class-weight schemes and
`build_loss`. Every loss takes logits (N, C, H, W) and int64 targets (N, H, W), skips
pixels whose target is `ignore_index` (no loss, no gradient) and returns a scalar.

Behaviour of the smp losses used here, read from smp 0.6.0's source and pinned by tests:
  * DiceLoss / JaccardLoss / TverskyLoss (mode="multiclass", ignore_index given): ignored
    pixels are zeroed in both prediction and one-hot target before the sums, so they add
    nothing. Sums run over batch and pixels together (dims (0, 2)), smooth=0 and the
    denominator is clamped to eps=1e-7. A class absent from the batch's (non-ignored)
    target gets loss 0 -- so its false positives are not penalised -- yet still counts
    in the divisor of the class mean. `classes` selects which per-class terms are averaged.
  * FocalLoss(mode="multiclass") is NOT the softmax focal loss: it is a one-vs-rest
    *sigmoid* binary focal loss per class channel, mean over non-ignored pixels, then
    mean (or class-weighted mean) over channels. At gamma=0 it is per-channel BCE, not
    CE, and its minimum needs every non-target logit -> -inf, not just below the target's.
  * LovaszLoss(mode="multiclass") drops ignored pixels and averages over the classes
    present in the batch.
  * With every pixel ignored, torch CE and smp focal return NaN and smp Lovasz an empty
    tensor; `build_loss` therefore returns 0 (zero gradient) for such a batch.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from seg_pet.errors import ConfigError, DataError

LOSS_OPTIONS: dict[str, set[str]] = {
    "ce": {"label_smoothing", "class_weights"},
    "wce": {"label_smoothing", "class_weights"},
    "dice": {"classes"},
    "dice_sq": {"classes"},
    "dice_fg": set(),
    "dice_fg_sq": set(),
    "ce_dice": {"label_smoothing", "class_weights", "dice_weight", "dice_variant"},
    "focal": {"gamma", "class_weights"},
    "lovasz": set(),
    "tversky": {"alpha", "beta", "classes"},
    "jaccard": {"classes"},
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSS_OPTIONS)
OPTION_NAMES: tuple[str, ...] = (
    "label_smoothing", "class_weights", "dice_weight", "dice_variant",
    "gamma", "alpha", "beta", "classes",
)
CLASS_WEIGHT_SCHEMES: tuple[str, ...] = ("inverse", "median", "sqrt_inverse")
DICE_VARIANTS: tuple[str, ...] = ("dice", "dice_sq", "dice_fg", "dice_fg_sq")
BACKGROUND = "background"

DEFAULTS: dict[str, Any] = {
    "label_smoothing": 0.0,
    "dice_weight": 1.0,
    "dice_variant": "dice",
    "gamma": 2.0,
    "alpha": 0.5,
    "beta": 0.5,
}
_EPS = 1e-7  # same denominator clamp as smp's soft_dice_score, so dice and dice_sq agree


def _option(cfg: Any, key: str) -> Any:
    value = getattr(cfg, key, None)
    return DEFAULTS.get(key) if value is None else value


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_range(key: str, value: Any, lo: float, hi: float | None = None) -> None:
    upper = "" if hi is None else f" and < {hi}"
    if not _is_number(value) or value < lo or (hi is not None and value >= hi):
        raise ConfigError(f"loss.{key} must be a number >= {lo}{upper}, got {value!r}")


def _weights_setting(cfg: Any) -> str | list[float] | None:
    """The class-weight scheme or list this config's loss uses, with wce's default applied."""
    if "class_weights" not in LOSS_OPTIONS.get(cfg.name, set()):
        return None
    value = getattr(cfg, "class_weights", None)
    if value is None and cfg.name == "wce":
        return "inverse"
    return value


def validate_loss_options(cfg: Any, class_names: list[str]) -> None:
    """Raise ConfigError (one line) if `cfg` (a LossConfig) is not a valid loss setting."""
    name = cfg.name
    if name not in LOSS_OPTIONS:
        raise ConfigError(f"loss.name: unknown loss {name!r}; valid choices: {', '.join(LOSS_NAMES)}")
    accepted = LOSS_OPTIONS[name]
    for key in OPTION_NAMES:
        if getattr(cfg, key, None) is not None and key not in accepted:
            allowed = ", ".join(f"loss.{k}" for k in sorted(accepted)) or "no options"
            raise ConfigError(f"loss.{key} does not apply to loss {name!r}; it accepts: {allowed}")

    classes = getattr(cfg, "classes", None)
    if classes is not None:
        if not isinstance(classes, (list, tuple)) or not classes:
            raise ConfigError(f"loss.classes must be a non-empty list of names from: {', '.join(class_names)}")
        for c in classes:
            if c not in class_names:
                raise ConfigError(f"loss.classes: unknown class {c!r}; valid names: {', '.join(class_names)}")
        if len(set(classes)) != len(classes):
            raise ConfigError(f"loss.classes lists a class twice: {list(classes)}")

    weights = _weights_setting(cfg)
    if isinstance(weights, str):
        if weights not in CLASS_WEIGHT_SCHEMES:
            raise ConfigError(
                f"loss.class_weights: unknown scheme {weights!r}; choose one of: "
                f"{', '.join(CLASS_WEIGHT_SCHEMES)}, or a list of {len(class_names)} numbers"
            )
    elif weights is not None:
        if not isinstance(weights, (list, tuple)) or len(weights) != len(class_names):
            got = len(weights) if isinstance(weights, (list, tuple)) else repr(weights)
            raise ConfigError(
                f"loss.class_weights: expected {len(class_names)} weights (one per class: "
                f"{', '.join(class_names)}), got {got}"
            )
        if not all(_is_number(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
            raise ConfigError(f"loss.class_weights must be numbers >= 0, not all 0, got {list(weights)}")

    variant = getattr(cfg, "dice_variant", None)
    if variant is not None and variant not in DICE_VARIANTS:
        choices = ", ".join(DICE_VARIANTS)
        raise ConfigError(f"loss.dice_variant: unknown variant {variant!r}; choose one of: {choices}")
    dice_kind = _option(cfg, "dice_variant") if name == "ce_dice" else name
    if dice_kind.startswith("dice_fg") and BACKGROUND not in class_names:
        raise ConfigError(f"loss {name!r} needs a class named {BACKGROUND!r}; classes are: {', '.join(class_names)}")

    for key, lo, hi in (("label_smoothing", 0.0, 1.0), ("dice_weight", 0.0, None), ("gamma", 0.0, None),
                        ("alpha", 0.0, None), ("beta", 0.0, None)):
        if getattr(cfg, key, None) is not None:
            _check_range(key, getattr(cfg, key), lo, hi)
    if name == "tversky" and _option(cfg, "alpha") + _option(cfg, "beta") <= 0:
        raise ConfigError("loss.alpha + loss.beta must be > 0 (with both 0 the Tversky loss is constant)")


def needs_class_weights(cfg: Any) -> bool:
    """True when the loss uses weights computed from training-set pixel counts (a scheme name)."""
    return isinstance(_weights_setting(cfg), str)


def compute_class_weights(scheme: str | list[float], pixel_counts: list[int]) -> list[float]:
    """Per-class weights from per-class pixel counts (ignored pixels not counted).

    inverse:       w_c = total / count_c
    sqrt_inverse:  w_c = sqrt(total / count_c)
    median:        w_c = median(freq) / freq_c, freq_c = count_c / total, median over the
                   classes that have pixels (an absent class would drag the median to 0)
    explicit list: returned as floats.

    Weights are not normalised: torch CE (mean reduction) divides by the summed weight of
    the target pixels and smp focal by the summed weights, so the scale cancels.
    A class with 0 pixels gets weight 0 rather than inf: CE looks a weight up by the
    target class, so a class no pixel belongs to is never weighted anyway, and an inf
    would turn that normalisation into NaN.
    """
    if not isinstance(scheme, str):
        return [float(w) for w in scheme]
    if scheme not in CLASS_WEIGHT_SCHEMES:
        choices = ", ".join(CLASS_WEIGHT_SCHEMES)
        raise ConfigError(f"loss.class_weights: unknown scheme {scheme!r}; choose one of: {choices}")
    total = sum(pixel_counts)
    if total <= 0:
        raise DataError("cannot compute class weights: the training split has no labelled pixels")
    if scheme == "inverse":
        return [total / n if n > 0 else 0.0 for n in pixel_counts]
    if scheme == "sqrt_inverse":
        return [math.sqrt(total / n) if n > 0 else 0.0 for n in pixel_counts]
    freqs = [n / total for n in pixel_counts]
    median = statistics.median(f for f in freqs if f > 0)
    return [median / f if f > 0 else 0.0 for f in freqs]


class SquaredDiceLoss(nn.Module):
    """Soft Dice with squared denominator (Milletari et al., V-Net), per class c:

        loss_c = 1 - 2 * sum(p_c * g_c) / (sum(p_c^2) + sum(g_c^2))

    p = softmax(logits), g = one-hot target, sums over batch and pixels together; the
    result is the mean of loss_c over `classes` (default all). Written by hand because
    smp has no squared-denominator Dice; it copies smp DiceLoss's conventions so the two
    are comparable: ignored pixels are zeroed in p and g, denominator clamped to 1e-7,
    a class absent from the batch target gets loss 0 but still counts in the mean.
    """

    def __init__(self, classes: list[int] | None = None, ignore_index: int = 255) -> None:
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


class CEDiceLoss(nn.Module):
    """CE + dice_weight * Dice on the same logits."""

    def __init__(self, ce: nn.Module, dice: nn.Module, dice_weight: float) -> None:
        super().__init__()
        self.ce = ce
        self.dice = dice
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target) + self.dice_weight * self.dice(logits, target)


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


def _dice(variant: str, class_names: list[str], classes: list[int] | None, ignore_index: int) -> nn.Module:
    if variant.startswith("dice_fg"):
        classes = [i for i, n in enumerate(class_names) if n != BACKGROUND]
    if variant.endswith("_sq"):
        return SquaredDiceLoss(classes=classes, ignore_index=ignore_index)
    return smp.losses.DiceLoss(mode="multiclass", classes=classes, ignore_index=ignore_index)


def build_loss(
    cfg: Any,
    class_names: list[str],
    class_weights: list[float] | None = None,
    ignore_index: int = 255,
) -> nn.Module:
    """Build the loss `cfg.name` names; forward(logits, target) returns a scalar.

    class_weights: the per-class weights from `compute_class_weights`; required when
    `needs_class_weights(cfg)`, taken from the config when it lists them explicitly.
    """
    validate_loss_options(cfg, class_names)
    name = cfg.name
    setting = _weights_setting(cfg)
    if setting is None and class_weights is not None:
        raise ValueError(f"class weights were passed but loss {name!r} is configured without them")
    if isinstance(setting, str) and class_weights is None:
        raise ValueError(f"loss {name!r} uses {setting!r} class weights: pass compute_class_weights(...)")
    weights = class_weights if class_weights is not None else setting
    if weights is not None and len(weights) != len(class_names):
        raise ValueError(f"expected {len(class_names)} class weights, got {len(weights)}")
    weight_tensor = None if weights is None else torch.tensor([float(w) for w in weights])

    names = getattr(cfg, "classes", None)
    classes = None if names is None else [class_names.index(n) for n in names]

    def ce() -> nn.Module:
        return nn.CrossEntropyLoss(weight=weight_tensor, ignore_index=ignore_index,
                                   label_smoothing=float(_option(cfg, "label_smoothing")))

    if name in ("ce", "wce"):
        loss = ce()
    elif name in DICE_VARIANTS:
        loss = _dice(name, class_names, classes, ignore_index)
    elif name == "ce_dice":
        dice = _dice(_option(cfg, "dice_variant"), class_names, None, ignore_index)
        loss = CEDiceLoss(ce(), dice, float(_option(cfg, "dice_weight")))
    elif name == "focal":
        # smp's class_weights give a normalised weighted mean of the per-class
        # (one-vs-rest) focal terms, so a weight scales both misses and false alarms of that class.
        loss = smp.losses.FocalLoss(mode="multiclass", gamma=float(_option(cfg, "gamma")),
                                    ignore_index=ignore_index, class_weights=weights)
    elif name == "lovasz":
        loss = smp.losses.LovaszLoss(mode="multiclass", ignore_index=ignore_index)
    elif name == "tversky":
        loss = smp.losses.TverskyLoss(mode="multiclass", classes=classes, ignore_index=ignore_index,
                                      alpha=float(_option(cfg, "alpha")), beta=float(_option(cfg, "beta")))
    else:  # jaccard; validate_loss_options has rejected every other name
        loss = smp.losses.JaccardLoss(mode="multiclass", classes=classes, ignore_index=ignore_index)
    return SegLoss(name, loss, ignore_index)
