"""Tests for seg_pet.losses: every loss's extremes, gradients, ignore handling and values."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from seg_pet.config import LOSSES, LossConfig
from seg_pet.config.loading import build_loss_section, validate_loss
from seg_pet.losses import build_loss, compute_class_weights, needs_class_weights
from seg_pet.runtime.errors import ConfigError

LOSS_NAMES = tuple(LOSSES)

IGNORE = 255
CLASS_NAMES = {2: ["pet", "background"], 3: ["pet", "background", "border"]}
L = 20.0  # a logit margin large enough that softmax and sigmoid are both ~saturated


def Cfg(name: str = "ce", **options) -> LossConfig:
    """A loss section exactly as the config loader builds it (None = the loss's own default)."""
    return build_loss_section({"name": name, **options})


def validate_loss_options(cfg: LossConfig, names: list[str]) -> None:
    validate_loss(cfg, names, "background")


def make_target(num_classes: int, seed: int = 0, shape=(2, 6, 6), ignore: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=g)
    target.view(-1)[:num_classes] = torch.arange(num_classes)  # every class occurs
    if ignore:
        target[:, 0, :] = IGNORE
    return target


def pixel_counts(target: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(target[target != IGNORE], minlength=num_classes).tolist()


def make_loss(cfg: Cfg, num_classes: int, target: torch.Tensor):
    names = CLASS_NAMES[num_classes]
    weights = None
    if needs_class_weights(cfg):
        weights = compute_class_weights(cfg.get("class_weights"), pixel_counts(target, num_classes))
    return build_loss(cfg, names, class_weights=weights, background="background")


def confident_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """+L on `labels`, -L elsewhere: confident for softmax losses and one-vs-rest sigmoid focal."""
    onehot = F.one_hot(labels.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
    return L * (2 * onehot - 1)


# Minimum of each loss at confident, correct logits: all of them reach ~0 there
# (CE: -log p_true -> 0; Dice/Jaccard/Tversky: 1 - overlap score -> 0; focal: the
# one-vs-rest sigmoid focal terms -> 0; Lovasz: Lovasz extension of IoU error -> 0).
@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_extremes(name: str, num_classes: int) -> None:
    target = make_target(num_classes)
    loss = make_loss(Cfg(name=name), num_classes, target)
    correct = loss(confident_logits(target, num_classes), target)
    wrong = loss(confident_logits((target + 1) % num_classes, num_classes), target)
    assert correct.ndim == 0
    assert correct.item() == pytest.approx(0.0, abs=1e-4)
    assert wrong.item() > 0.5


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_gradients_and_ignore_index(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    target = make_target(num_classes)
    loss = make_loss(Cfg(name=name), num_classes, target)
    ignored = (target == IGNORE).unsqueeze(1).expand(-1, num_classes, -1, -1)

    logits_a = torch.randn(2, num_classes, 6, 6, requires_grad=True)
    # Same logits on labelled pixels, very different ones on ignored pixels.
    logits_b = torch.where(ignored, 5 * torch.randn_like(logits_a), logits_a).detach().requires_grad_(True)
    value_a = loss(logits_a, target)
    value_b = loss(logits_b, target)
    value_a.backward()
    value_b.backward()

    assert torch.isfinite(value_a)
    assert torch.isfinite(logits_a.grad).all()
    assert logits_a.grad.abs().sum() > 0
    assert value_a.item() == pytest.approx(value_b.item(), abs=1e-6)
    assert torch.allclose(logits_a.grad, logits_b.grad, atol=1e-7)
    assert (logits_a.grad[ignored] == 0).all()


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_decreases_under_adam(name: str, num_classes: int) -> None:
    torch.manual_seed(1)
    target = make_target(num_classes, seed=1)
    loss = make_loss(Cfg(name=name), num_classes, target)
    logits = torch.randn(2, num_classes, 6, 6, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    start = loss(logits, target).item()
    for _ in range(10):
        opt.zero_grad()
        loss(logits, target).backward()
        opt.step()
    assert loss(logits, target).item() < 0.8 * start


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_all_ignored_batch_gives_zero_not_nan(name: str) -> None:
    # torch CE and smp focal would return NaN, smp Lovasz an empty tensor.
    target = torch.full((1, 4, 4), IGNORE)
    weights = [1.0, 1.0, 1.0] if needs_class_weights(Cfg(name=name)) else None
    loss = build_loss(Cfg(name=name), CLASS_NAMES[3], class_weights=weights, background="background")
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    value = loss(logits, target)
    value.backward()
    assert value.item() == 0.0
    assert (logits.grad == 0).all()


# ---- values against the definitions ------------------------------------------------------


def _soft_stats(logits: torch.Tensor, target: torch.Tensor):
    """Per-class soft sums over batch and labelled pixels: sum p*g, sum p, sum p^2, sum g."""
    c = logits.shape[1]
    valid = (target != IGNORE).unsqueeze(1).float()
    p = logits.softmax(1) * valid
    g = F.one_hot(torch.where(target == IGNORE, 0, target), c).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    return (p * g).sum(dims), p.sum(dims), (p * p).sum(dims), g.sum(dims)


def _random_case(num_classes: int = 3, seed: int = 3):
    torch.manual_seed(seed)
    target = make_target(num_classes, seed=seed, shape=(2, 4, 5))
    return torch.randn(2, num_classes, 4, 5), target


def test_dice_matches_formula() -> None:
    logits, target = _random_case()
    inter, psum, _, gsum = _soft_stats(logits, target)
    per_class = 1 - 2 * inter / (psum + gsum)
    loss = build_loss(Cfg(name="dice"), CLASS_NAMES[3], background="background")
    assert loss(logits, target).item() == pytest.approx(per_class.mean().item(), rel=1e-5)
    only_border = build_loss(Cfg(name="dice", classes=["border"]), CLASS_NAMES[3], background="background")
    assert only_border(logits, target).item() == pytest.approx(per_class[2].item(), rel=1e-5)
    fg = build_loss(Cfg(name="dice_fg"), CLASS_NAMES[3], background="background")
    assert fg(logits, target).item() == pytest.approx(per_class[[0, 2]].mean().item(), rel=1e-5)


def test_dice_sq_matches_formula() -> None:
    logits, target = _random_case()
    inter, _, p2sum, gsum = _soft_stats(logits, target)
    per_class = 1 - 2 * inter / (p2sum + gsum)
    loss = build_loss(Cfg(name="dice_sq"), CLASS_NAMES[3], background="background")
    assert loss(logits, target).item() == pytest.approx(per_class.mean().item(), rel=1e-5)
    fg = build_loss(Cfg(name="dice_fg_sq"), CLASS_NAMES[3], background="background")
    assert fg(logits, target).item() == pytest.approx(per_class[[0, 2]].mean().item(), rel=1e-5)
    # On these random logits the squared denominator gives a different value than plain Dice.
    plain = build_loss(Cfg(name="dice"), CLASS_NAMES[3], background="background")(logits, target)
    assert abs(loss(logits, target).item() - plain.item()) > 1e-3


def test_dice_absent_class_scores_zero_but_counts_in_mean() -> None:
    # smp DiceLoss behaviour that dice_sq copies: a class absent from the batch target
    # contributes loss 0 (its false positives go unpunished) yet the mean divides by C.
    logits, _ = _random_case()
    target = torch.randint(0, 2, (2, 4, 5), generator=torch.Generator().manual_seed(0))  # no border
    for name, denom in (("dice", 1), ("dice_sq", 2)):
        inter, psum, p2sum, gsum = _soft_stats(logits, target)
        pred_sum = psum if denom == 1 else p2sum
        per_class = 1 - 2 * inter / (pred_sum + gsum)
        expected = per_class[:2].sum() / 3
        loss = build_loss(Cfg(name=name), CLASS_NAMES[3], background="background")
        assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_tversky_and_jaccard_match_formula() -> None:
    logits, target = _random_case()
    inter, psum, _, gsum = _soft_stats(logits, target)
    fp, fn = psum - inter, gsum - inter
    tversky = build_loss(Cfg(name="tversky", alpha=0.7, beta=0.3), CLASS_NAMES[3], background="background")
    expected = (1 - inter / (inter + 0.7 * fp + 0.3 * fn)).mean()
    assert tversky(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    jaccard = build_loss(Cfg(name="jaccard"), CLASS_NAMES[3], background="background")
    expected = (1 - inter / (psum + gsum - inter)).mean()
    assert jaccard(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    # Tversky's defaults alpha = beta = 0.5 are Dice.
    default = build_loss(Cfg(name="tversky"), CLASS_NAMES[3], background="background")(logits, target)
    dice = build_loss(Cfg(name="dice"), CLASS_NAMES[3], background="background")(logits, target)
    assert default.item() == pytest.approx(dice.item(), rel=1e-6)


def test_ce_one_hot_target_as_logits_is_not_zero() -> None:
    target = torch.tensor([[[0, 1, 2, 1]]])
    onehot_logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    ce = build_loss(Cfg(name="ce"), CLASS_NAMES[3], background="background")
    expected = -math.log(math.e / (math.e + 2))
    assert expected == pytest.approx(0.5514, abs=1e-4)
    assert ce(onehot_logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert ce(torch.zeros(1, 3, 1, 4), target).item() == pytest.approx(math.log(3), rel=1e-6)
    ce2 = build_loss(Cfg(name="ce"), CLASS_NAMES[2], background="background")
    assert ce2(torch.zeros(1, 2, 1, 4), target.clamp(max=1)).item() == pytest.approx(math.log(2), rel=1e-6)


def test_ce_label_smoothing_value() -> None:
    target = torch.tensor([[[0, 1, 2, 1]]])
    onehot_logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    eps = 0.1
    nll_true = -math.log(math.e / (math.e + 2))
    mean_nll = (nll_true + 2 * math.log(math.e + 2)) / 3  # -mean_c log p_c
    ce = build_loss(Cfg(name="ce", label_smoothing=eps), CLASS_NAMES[3], background="background")
    assert ce(onehot_logits, target).item() == pytest.approx((1 - eps) * nll_true + eps * mean_nll, rel=1e-6)


def test_wce_matches_manual_weighted_ce() -> None:
    logits, target = _random_case()
    weights = [0.5, 2.0, 4.0]
    loss = build_loss(Cfg(name="wce", class_weights=weights), CLASS_NAMES[3], background="background")
    valid = target != IGNORE
    logp = logits.log_softmax(1).permute(0, 2, 3, 1)[valid]  # (P, C)
    t = target[valid]
    w = torch.tensor(weights)[t]
    expected = -(w * logp[torch.arange(len(t)), t]).sum() / w.sum()
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    unweighted = build_loss(Cfg(name="ce"), CLASS_NAMES[3], background="background")(logits, target)
    assert abs(unweighted.item() - expected.item()) > 1e-3


def test_ce_dice_is_ce_plus_weighted_dice() -> None:
    logits, target = _random_case()
    ce = build_loss(Cfg(name="ce"), CLASS_NAMES[3], background="background")(logits, target)
    dice_sq = build_loss(Cfg(name="dice_sq"), CLASS_NAMES[3], background="background")(logits, target)
    combo = build_loss(Cfg(name="ce_dice", dice_weight=0.3, dice_variant="dice_sq"), CLASS_NAMES[3], background="background")
    assert combo(logits, target).item() == pytest.approx((ce + 0.3 * dice_sq).item(), rel=1e-6)


def test_focal_is_one_vs_rest_sigmoid_focal() -> None:
    # smp FocalLoss(mode="multiclass") is per-channel sigmoid focal, not softmax focal.
    logits, target = _random_case()
    valid = target != IGNORE
    x = logits.permute(0, 2, 3, 1)[valid]  # (P, C)
    y = F.one_hot(target[valid], 3).float()
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    per_class = ((1 - torch.exp(-bce)) ** 2 * bce).mean(0)
    focal = build_loss(Cfg(name="focal"), CLASS_NAMES[3], background="background")
    assert focal(logits, target).item() == pytest.approx(per_class.mean().item(), rel=1e-5)
    weights = [1.0, 2.0, 5.0]
    weighted = build_loss(Cfg(name="focal", class_weights=weights), CLASS_NAMES[3], background="background")
    expected = (per_class * torch.tensor(weights)).sum() / sum(weights)
    assert weighted(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


# ---- class weights -----------------------------------------------------------------------


def test_class_weight_schemes() -> None:
    counts = [10000, 100, 50]
    total = sum(counts)
    assert compute_class_weights("inverse", counts) == pytest.approx([total / n for n in counts])
    assert compute_class_weights("sqrt_inverse", counts) == pytest.approx([math.sqrt(total / n) for n in counts])
    # median(freq) = 100/total, so w_c = 100 / count_c.
    assert compute_class_weights("median", counts) == pytest.approx([0.01, 1.0, 2.0])
    # Even number of classes: the median is the mean of the two middle frequencies.
    assert compute_class_weights("median", [300, 100]) == pytest.approx([0.5 / 0.75, 0.5 / 0.25])
    explicit = compute_class_weights([1, 2, 3], counts)
    assert explicit == [1.0, 2.0, 3.0] and all(isinstance(w, float) for w in explicit)


def test_class_weights_for_absent_class_are_zero() -> None:
    for scheme in ("inverse", "sqrt_inverse", "median"):
        weights = compute_class_weights(scheme, [300, 0, 100])
        assert weights[1] == 0.0
        assert all(math.isfinite(w) and w > 0 for w in (weights[0], weights[2]))
    assert compute_class_weights("median", [300, 0, 100]) == pytest.approx([0.5 / 0.75, 0.0, 0.5 / 0.25])


def test_needs_class_weights_and_build_requirements() -> None:
    assert needs_class_weights(Cfg(name="wce"))  # default scheme "inverse"
    assert needs_class_weights(Cfg(name="ce", class_weights="median"))
    assert needs_class_weights(Cfg(name="focal", class_weights="sqrt_inverse"))
    assert not needs_class_weights(Cfg(name="ce"))
    assert not needs_class_weights(Cfg(name="wce", class_weights=[1.0, 2.0, 3.0]))
    assert not needs_class_weights(Cfg(name="dice"))
    with pytest.raises(ValueError, match="compute_class_weights"):
        build_loss(Cfg(name="wce"), CLASS_NAMES[3], background="background")
    with pytest.raises(ValueError, match="without them"):
        build_loss(Cfg(name="dice"), CLASS_NAMES[3], class_weights=[1.0, 1.0, 1.0])


# ---- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_defaults_are_valid(name: str) -> None:
    validate_loss_options(Cfg(name=name), CLASS_NAMES[2])
    validate_loss_options(Cfg(name=name), CLASS_NAMES[3])


def test_every_option_of_every_loss_is_accepted() -> None:
    values = {
        "label_smoothing": 0.1,
        "class_weights": "median",
        "dice_weight": 0.5,
        "dice_variant": "dice_fg",
        "gamma": 1.0,
        "alpha": 0.3,
        "beta": 0.7,
        "classes": ["pet"],
    }
    for name, (options, _) in LOSSES.items():
        validate_loss_options(Cfg(name=name, **{f.name: values[f.name] for f in dataclasses.fields(options)}), CLASS_NAMES[3])


def test_validation_errors() -> None:
    names = CLASS_NAMES[3]
    with pytest.raises(ConfigError, match=r"loss\.name: must be one of ce, wce, dice.*jaccard; got 'bce'") as err:
        validate_loss_options(Cfg(name="bce"), names)
    assert "\n" not in str(err.value)
    accepts = r"loss\.class_weights, loss\.label_smoothing"
    with pytest.raises(ConfigError, match=rf"loss\.gamma does not apply to loss 'ce'; it accepts: {accepts}"):
        validate_loss_options(Cfg(name="ce", gamma=2.0), names)
    with pytest.raises(ConfigError, match=r"loss\.classes does not apply to loss 'lovasz'; it accepts: no opt"):
        validate_loss_options(Cfg(name="lovasz", classes=["pet"]), names)
    with pytest.raises(ConfigError, match=r"unknown class 'cat'; valid names: pet, background, border"):
        validate_loss_options(Cfg(name="dice", classes=["pet", "cat"]), names)
    with pytest.raises(ConfigError, match=r"unknown scheme 'balanced'"):
        validate_loss_options(Cfg(name="wce", class_weights="balanced"), names)
    with pytest.raises(ConfigError, match=r"expected 3 weights .* got 2"):
        validate_loss_options(Cfg(name="ce", class_weights=[1.0, 2.0]), names)
    with pytest.raises(ConfigError, match=r"loss\.dice_variant: must be one of dice, dice_sq, dice_fg, dice_fg_sq; got 'dice_cube'"):
        validate_loss_options(Cfg(name="ce_dice", dice_variant="dice_cube"), names)
    with pytest.raises(ConfigError, match=r"loss\.label_smoothing: must be >= 0 and < 1, got 1\.5"):
        validate_loss_options(Cfg(name="ce", label_smoothing=1.5), names)
    with pytest.raises(ConfigError, match=r"unknown class 'border'"):
        validate_loss_options(Cfg(name="jaccard", classes=["border"]), CLASS_NAMES[2])
