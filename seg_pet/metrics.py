"""Dataset-level segmentation metrics from one confusion matrix accumulated over a whole split.

Owns `ConfusionMatrix` (rows = true class, columns = predicted class, int64 pixel counts;
pixels whose target is the ignore index are skipped) and the metrics derived from it.
With TP_c = mat[c, c], FP_c = column sum - TP_c, FN_c = row sum - TP_c, N = total pixels:

    IoU_c       = TP / (TP + FP + FN)        Dice_c   = 2 TP / (2 TP + FP + FN)
    precision_c = TP / (TP + FP)             recall_c = TP / (TP + FN)
    mIoU, mDice = mean over classes of IoU_c / Dice_c, NaN classes left out
    fwIoU       = sum_c (GT_c / N) * IoU_c over classes present in the ground truth
    pixel_acc   = trace / N
    gt_share_c  = row sum / N                pred_share_c = column sum / N

Counts are summed over the whole split before dividing (not averaged per image), so a
large image weighs more than a small one. NaN rule: a class absent from both prediction
and ground truth has IoU and Dice NaN and is left out of the means (smp.metrics would
score it 1.0 by its zero_division default and pull the mean up); precision is NaN when
the class is never predicted, recall NaN when it never occurs in the ground truth. An
empty matrix gives NaN everywhere.
"""

from __future__ import annotations

import math

import torch

from seg_pet.labels import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a C x C int64 confusion matrix (on CPU) over many batches."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Add one batch of integer class maps of identical shape (any device)."""
        if target.shape != pred.shape:
            raise ValueError(f"target shape {tuple(target.shape)} != pred shape {tuple(pred.shape)}")
        keep = target != self.ignore_index
        t = target[keep].long()
        p = pred[keep].long()
        n = self.num_classes
        # An out-of-range label would land in another cell of the flattened bincount
        # instead of failing, so check explicitly.
        if t.numel() and (t.min() < 0 or t.max() >= n or p.min() < 0 or p.max() >= n):
            raise ValueError(f"class ids must lie in 0..{n - 1} (or be {self.ignore_index} in the target)")
        counts = torch.bincount(t * n + p, minlength=n * n)
        self.mat += counts.reshape(n, n).cpu()


def _div(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def compute_metrics(mat: torch.Tensor, class_names: list[str]) -> dict:
    """Metrics (python floats) from a confusion matrix; definitions in the module docstring."""
    m = mat.detach().cpu().to(torch.float64)
    if m.shape != (len(class_names), len(class_names)):
        raise ValueError(f"matrix shape {tuple(m.shape)} does not fit {len(class_names)} classes")
    tp = m.diag().tolist()
    gt = m.sum(dim=1).tolist()
    pred = m.sum(dim=0).tolist()
    total = float(m.sum())

    iou, dice, precision, recall, gt_share, pred_share = {}, {}, {}, {}, {}, {}
    for c, name in enumerate(class_names):
        fp, fn = pred[c] - tp[c], gt[c] - tp[c]
        iou[name] = _div(tp[c], tp[c] + fp + fn)
        dice[name] = _div(2 * tp[c], 2 * tp[c] + fp + fn)
        precision[name] = _div(tp[c], pred[c])
        recall[name] = _div(tp[c], gt[c])
        gt_share[name] = _div(gt[c], total)
        pred_share[name] = _div(pred[c], total)

    present = [c for c in range(len(class_names)) if gt[c] > 0]
    fwiou = sum(gt[c] / total * iou[class_names[c]] for c in present) if present else math.nan
    return {
        "iou": iou,
        "dice": dice,
        "precision": precision,
        "recall": recall,
        "miou": _nanmean(list(iou.values())),
        "mdice": _nanmean(list(dice.values())),
        "fwiou": fwiou,
        "pixel_acc": _div(sum(tp), total),
        "pred_share": pred_share,
        "gt_share": gt_share,
    }


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def format_table(metrics: dict, class_names: list[str]) -> str:
    """A console table: one row per class, then the dataset-level summary rows."""
    width = max(len("pixel acc"), *(len(n) for n in class_names))
    cols = ("IoU", "Dice", "precision", "recall")
    header = f"{'class':<{width}} | " + " | ".join(f"{c:>9}" for c in cols)
    lines = [header, "-" * len(header)]
    for name in class_names:
        values = [metrics[key][name] for key in ("iou", "dice", "precision", "recall")]
        lines.append(f"{name:<{width}} | " + " | ".join(f"{_fmt(v):>9}" for v in values))
    lines.append("-" * len(header))
    for label, key in (("mIoU", "miou"), ("mDice", "mdice"), ("fwIoU", "fwiou"), ("pixel acc", "pixel_acc")):
        lines.append(f"{label:<{width}} | {_fmt(metrics[key]):>9}")
    return "\n".join(lines)


def confusion_csv(mat: torch.Tensor, class_names: list[str]) -> str:
    """CSV text: header `true\\pred,<names>`, then one row of counts per true class."""
    rows = [",".join(["true\\pred", *class_names])]
    for name, counts in zip(class_names, mat.detach().cpu().tolist()):
        rows.append(",".join([name, *(str(int(v)) for v in counts)]))
    return "\n".join(rows) + "\n"


def batch_metrics(logits: torch.Tensor, target: torch.Tensor, class_names: list[str], ignore_index: int = IGNORE_INDEX) -> dict:
    """`compute_metrics` of one batch's argmax prediction (for monitoring single steps, not for reporting)."""
    matrix = ConfusionMatrix(len(class_names), ignore_index)
    matrix.update(target, logits.argmax(dim=1))
    return compute_metrics(matrix.mat, class_names)
