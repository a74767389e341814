"""Tests for seg_pet.metrics: confusion matrix, metric definitions, NaN rule, smp agreement."""

from __future__ import annotations

import math

import pytest
import segmentation_models_pytorch as smp
import torch

from seg_pet.metrics import ConfusionMatrix, compute_metrics, confusion_csv, format_table

IGNORE = 255
NAMES2 = ["pet", "background"]
NAMES3 = ["pet", "background", "border"]


def pairs(*groups: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, pred) flat tensors from (true class, predicted class, count) groups."""
    target = torch.cat([torch.full((n,), t) for t, _, n in groups])
    pred = torch.cat([torch.full((n,), p) for _, p, n in groups])
    return target, pred


def test_hand_worked_two_class_case() -> None:
    # 40 pet->pet, 10 background->pet, 10 pet->background, 40 background->background.
    target, pred = pairs((0, 0, 40), (1, 0, 10), (0, 1, 10), (1, 1, 40))
    cm = ConfusionMatrix(2)
    cm.update(target.view(4, 25), pred.view(4, 25))
    assert cm.mat.tolist() == [[40, 10], [10, 40]]
    assert cm.mat.dtype == torch.int64
    m = compute_metrics(cm.mat, NAMES2)
    assert m["iou"]["pet"] == pytest.approx(40 / 60)
    assert m["dice"]["pet"] == pytest.approx(80 / 100)
    assert m["precision"]["pet"] == pytest.approx(40 / 50)
    assert m["recall"]["pet"] == pytest.approx(40 / 50)
    assert m["iou"]["background"] == pytest.approx(40 / 60)
    assert m["miou"] == pytest.approx(40 / 60)
    assert m["fwiou"] == pytest.approx(40 / 60)
    assert m["pixel_acc"] == pytest.approx(0.8)
    assert m["gt_share"] == pytest.approx({"pet": 0.5, "background": 0.5})
    assert all(isinstance(v, float) for v in (m["miou"], m["mdice"], m["fwiou"], m["pixel_acc"]))


def test_unbalanced_case_fwiou_and_shares() -> None:
    # pet: 30 correct, 10 predicted background; background: 50 correct, 10 predicted pet.
    target, pred = pairs((0, 0, 30), (0, 1, 10), (1, 1, 50), (1, 0, 10))
    cm = ConfusionMatrix(2)
    cm.update(target, pred)
    m = compute_metrics(cm.mat, NAMES2)
    iou_pet, iou_bg = 30 / 50, 50 / 70
    assert m["fwiou"] == pytest.approx(0.4 * iou_pet + 0.6 * iou_bg)
    assert m["miou"] == pytest.approx((iou_pet + iou_bg) / 2)
    assert m["mdice"] == pytest.approx((60 / 80 + 100 / 120) / 2)
    assert m["gt_share"] == pytest.approx({"pet": 0.4, "background": 0.6})
    assert m["pred_share"] == pytest.approx({"pet": 0.4, "background": 0.6})
    assert m["pixel_acc"] == pytest.approx(0.8)


def test_nan_rule() -> None:
    # border never in GT nor predicted; background never predicted.
    target, pred = pairs((0, 0, 6), (1, 0, 4))
    cm = ConfusionMatrix(3)
    cm.update(target, pred)
    m = compute_metrics(cm.mat, NAMES3)
    assert math.isnan(m["iou"]["border"]) and math.isnan(m["dice"]["border"])
    assert math.isnan(m["precision"]["border"]) and math.isnan(m["recall"]["border"])
    # background occurs in GT but is never predicted: IoU 0 (a real miss), precision NaN.
    assert m["iou"]["background"] == 0.0
    assert m["recall"]["background"] == 0.0
    assert math.isnan(m["precision"]["background"])
    assert m["iou"]["pet"] == pytest.approx(0.6)
    assert m["miou"] == pytest.approx((0.6 + 0.0) / 2)  # border left out, not counted as 0 or 1
    assert m["fwiou"] == pytest.approx(0.6 * 0.6)
    assert m["pred_share"]["border"] == 0.0


def test_class_predicted_but_never_in_gt() -> None:
    target, pred = pairs((0, 0, 5), (0, 2, 5))
    cm = ConfusionMatrix(3)
    cm.update(target, pred)
    m = compute_metrics(cm.mat, NAMES3)
    assert m["iou"]["border"] == 0.0
    assert m["precision"]["border"] == 0.0
    assert math.isnan(m["recall"]["border"])


def test_empty_matrix_is_all_nan() -> None:
    m = compute_metrics(ConfusionMatrix(3).mat, NAMES3)
    for key in ("miou", "mdice", "fwiou", "pixel_acc"):
        assert math.isnan(m[key])
    for key in ("iou", "dice", "precision", "recall", "gt_share", "pred_share"):
        assert all(math.isnan(v) for v in m[key].values())


def test_ignore_pixels_skipped() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 5, 5))
    pred = torch.randint(0, 3, (2, 5, 5))
    cm = ConfusionMatrix(3)
    cm.update(target, pred)
    expected = cm.mat.clone()
    target_ign = torch.cat([target, torch.full((1, 5, 5), IGNORE)])
    pred_ign = torch.cat([pred, torch.randint(0, 3, (1, 5, 5))])
    cm = ConfusionMatrix(3)
    cm.update(target_ign, pred_ign)
    assert torch.equal(cm.mat, expected)
    assert cm.mat.sum() == 50


def test_update_accumulates_and_matches_definition() -> None:
    torch.manual_seed(1)
    cm = ConfusionMatrix(3)
    manual = torch.zeros(3, 3, dtype=torch.int64)
    for _ in range(3):
        target = torch.randint(0, 3, (2, 4, 4))
        pred = torch.randint(0, 3, (2, 4, 4))
        cm.update(target, pred)
        for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
            manual[t, p] += 1
    assert torch.equal(cm.mat, manual)
    m = compute_metrics(cm.mat, NAMES3)
    assert m["pixel_acc"] == pytest.approx(manual.trace().item() / 96)


def test_update_rejects_bad_input() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="0..2"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="0..2"):
        cm.update(torch.tensor([0, 4]), torch.tensor([0, 1]))


def test_agrees_with_smp_dataset_level_metrics() -> None:
    # 4 classes, class 3 never occurs in target or prediction; some pixels ignored.
    torch.manual_seed(2)
    names = ["a", "b", "c", "never"]
    target = torch.randint(0, 3, (4, 8, 8))
    pred = torch.where(torch.rand(4, 8, 8) < 0.6, target, torch.randint(0, 3, (4, 8, 8)))
    target[:, :2, :] = IGNORE
    cm = ConfusionMatrix(4)
    cm.update(target, pred)
    m = compute_metrics(cm.mat, names)

    tp, fp, fn, tn = smp.metrics.get_stats(pred, target, mode="multiclass", num_classes=4, ignore_index=IGNORE)
    # Dataset-level per-class scores: sum the per-image stats, then score (reduction=None).
    tp, fp, fn, tn = (s.sum(0) for s in (tp, fp, fn, tn))
    per_class = {
        "iou": smp.metrics.iou_score(tp, fp, fn, tn, reduction=None),
        "dice": smp.metrics.f1_score(tp, fp, fn, tn, reduction=None),
        "precision": smp.metrics.precision(tp, fp, fn, tn, reduction=None),
        "recall": smp.metrics.recall(tp, fp, fn, tn, reduction=None),
    }
    for key, scores in per_class.items():
        for c in range(3):
            assert m[key][names[c]] == pytest.approx(scores[c].item(), rel=1e-6)
        assert scores[3].item() == 1.0  # smp's zero_division default
        assert math.isnan(m[key]["never"])

    present_mean = per_class["iou"][:3].mean().item()
    assert m["miou"] == pytest.approx(present_mean, rel=1e-6)
    # smp "macro" = dataset-level per-class IoU averaged over ALL classes, the empty one as 1.0.
    smp_macro = smp.metrics.iou_score(*(s.unsqueeze(0) for s in (tp, fp, fn, tn)), reduction="macro")
    assert smp_macro.item() == pytest.approx((3 * present_mean + 1.0) / 4, rel=1e-6)
    assert m["miou"] < smp_macro.item()
    # Micro-averaged recall over classes is trace / total = pixel accuracy.
    micro_recall = smp.metrics.recall(tp, fp, fn, tn, reduction="micro")
    assert m["pixel_acc"] == pytest.approx(micro_recall.item(), rel=1e-6)


def test_format_table_and_csv() -> None:
    target, pred = pairs((0, 0, 6), (1, 0, 4))
    cm = ConfusionMatrix(3)
    cm.update(target, pred)
    table = format_table(compute_metrics(cm.mat, NAMES3), NAMES3)
    lines = table.splitlines()
    assert lines[0].split("|")[0].strip() == "class"
    assert [c.strip() for c in lines[0].split("|")[1:]] == ["IoU", "Dice", "precision", "recall"]
    border = next(line for line in lines if line.startswith("border"))
    assert [c.strip() for c in border.split("|")[1:]] == ["n/a"] * 4
    pet = next(line for line in lines if line.startswith("pet"))
    assert [c.strip() for c in pet.split("|")[1:]] == ["0.6000", "0.7500", "0.6000", "1.0000"]
    summary = {"mIoU": "0.3000", "mDice": "0.3750", "fwIoU": "0.3600", "pixel acc": "0.6000"}
    for label, value in summary.items():
        row = next(line for line in lines if line.startswith(label))
        assert row.split("|")[1].strip() == value

    assert confusion_csv(cm.mat, NAMES3) == ("true\\pred,pet,background,border\npet,6,0,0\nbackground,4,0,0\nborder,0,0,0\n")
