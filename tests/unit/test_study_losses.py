"""The loss study's classic formulas against values computed by hand, and the two loss families."""

from __future__ import annotations

import math

import pytest
import torch

from seg_pet.study.losses import CLASSIC_LOSSES, LOSS_FAMILIES, ClassicLoss, build_losses, cce, dice, dice_square

# Two pixels (N=1, H=1, W=2), channel 0 = foreground, channel 1 = background.
# Pixel 1 is foreground with p_fg = 0.8; pixel 2 is background with p_bg = 0.7.
P = torch.tensor([[[[0.8, 0.3]], [[0.2, 0.7]]]], dtype=torch.float64)
G = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)
TARGET = torch.tensor([[[0, 1]]])
CLASSES = ["foreground", "background"]

# By hand, to 10 decimals. Foreground: sum p*g = 0.8, sum g = 1, sum p = 1.1, sum p^2 = 0.64 + 0.09 = 0.73.
#                         Background: sum p*g = 0.7, sum g = 1, sum p = 0.9, sum p^2 = 0.04 + 0.49 = 0.53.
HAND = {
    "cce": 0.2899092476,  # (-ln 0.8 - ln 0.7) / 2 = (0.2231435513 + 0.3566749439) / 2
    "dice": 0.2506265664,  # 1 - (1.6 / 2.1 + 1.4 / 1.9) / 2 = 1 - (0.7619047619 + 0.7368421053) / 2
    "dice_square": 0.0800559145,  # 1 - (1.6 / 1.73 + 1.4 / 1.53) / 2 = 1 - (0.9248554913 + 0.9150326797) / 2
    "dicefg": 0.2380952381,  # 1 - 1.6 / 2.1
    "dicefg_square": 0.0751445087,  # 1 - 1.6 / 1.73
}


@pytest.mark.parametrize("formula, name", [(cce, "cce"), (dice, "dice"), (dice_square, "dice_square")])
def test_classic_formulas_match_hand_computed_values(formula, name):
    assert float(formula(P, G)) == pytest.approx(HAND[name], abs=1e-6)


@pytest.mark.parametrize("name", list(CLASSIC_LOSSES))
def test_classic_loss_modules_on_logits_match_hand_values(name):
    # softmax(log p) == p when p sums to 1 over the channels, so the module sees exactly P.
    logits = P.log().float()
    assert float(ClassicLoss(name, CLASSES)(logits, TARGET)) == pytest.approx(HAND[name], abs=1e-6)


def test_cce_clips_probabilities_at_1e_7():
    p = torch.tensor([[[[0.0]], [[1.0]]]], dtype=torch.float64)  # the true class (0) gets probability 0
    g = torch.tensor([[[[1.0]], [[0.0]]]], dtype=torch.float64)
    assert float(cce(p, g)) == pytest.approx(-math.log(1e-7), abs=1e-6)  # 16.118, not infinity
    # Clipping also cuts the gradient of a confidently wrong pixel: none flows back through the clip.
    p.requires_grad_(True)
    cce(p, g).backward()
    assert float(p.grad.abs().sum()) == 0.0


def test_dice_eps_lets_an_absent_unpredicted_class_score_one():
    # Only background in the target and in the prediction: foreground's term is (0 + eps) / (0 + 0 + eps) = 1.
    p = torch.tensor([[[[0.0, 0.0]], [[1.0, 1.0]]]], dtype=torch.float64)
    g = p.clone()
    assert float(dice(p, g)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_square(p, g)) == pytest.approx(0.0, abs=1e-6)
    # Predicting the absent class costs: foreground's term is eps / (0.5 + eps), about 0.
    p2 = torch.tensor([[[[0.5, 0.0]], [[0.5, 1.0]]]], dtype=torch.float64)
    assert float(dice(p2, g)) == pytest.approx(1 - (0 + (2 * 1.5 + 1e-7) / (2 + 1.5 + 1e-7)) / 2, abs=1e-6)


def test_foreground_only_losses_leave_background_out():
    assert ClassicLoss("dicefg", CLASSES).channels == [0]
    assert ClassicLoss("dice", CLASSES).channels == [0, 1]
    assert ClassicLoss("dicefg_square", ["pet", "background", "border"]).channels == [0, 2]


def test_ignored_pixels_count_in_no_classic_loss():
    logits = torch.randn(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    for name in CLASSIC_LOSSES:
        full = ClassicLoss(name, CLASSES)(logits[..., :2], target[..., :2])
        assert float(ClassicLoss(name, CLASSES)(logits, target)) == pytest.approx(float(full), abs=1e-6), name


def test_both_families_build_every_loss_they_name():
    for family, spec in LOSS_FAMILIES.items():
        losses = build_losses(family, list(spec.names), CLASSES, [100, 900], torch.device("cpu"))
        logits, target = torch.randn(2, 2, 4, 4), torch.randint(0, 2, (2, 4, 4))
        for name, fn in losses.items():
            assert math.isfinite(float(fn(logits, target))), (family, name)
