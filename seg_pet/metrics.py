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

Boundary IoU (Cheng et al., CVPR 2021), per class c: with G, P the pixels of class c in the ground
truth and the prediction, and X_d the pixels of X within d pixels (chessboard distance) of X's
contour (the image frame counts as contour, as in the reference code),

    BIoU_c = |G_d & P_d| / |G_d | P_d|      d = max(1, round(eval.boundary_width * image diagonal))

counted over the whole split like IoU (NaN when both regions are empty everywhere). docs/losses_and_metrics.md
has a worked example.

Accumulators: each has `update(target, pred)` (one batch of class maps), `sync()` (sum its counts over
the processes under torchrun) and `compute(names) -> dict`. `ConfusionMatrix`, `BoundaryIoU` and
`PerImage` (per-image counts, for per-image and per-group tables) are the three there are; adding a
metric is one class with these three methods and one entry in the evaluation's list.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Protocol

import torch
import torch.nn.functional as F

from seg_pet.labels import IGNORE_INDEX
from seg_pet.runtime.distributed import all_reduce_sum, gathered, world_size


class Accumulator(Protocol):
    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None: ...
    def sync(self) -> None: ...
    def compute(self, names: list[str]) -> dict[str, Any]: ...


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

    def sync(self) -> None:
        all_reduce_sum(self.mat)

    def compute(self, names: list[str]) -> dict[str, Any]:
        return {**compute_metrics(self.mat, names), "confusion": self.mat.tolist()}


def boundary_width(height: int, width: int, ratio: float) -> int:
    """The dilation d in pixels: `ratio` of the image diagonal, at least 1."""
    return max(1, round(ratio * math.hypot(height, width)))


def inner_boundary(masks: torch.Tensor, d: int) -> torch.Tensor:
    """Pixels of each boolean mask (..., H, W) within d pixels (chessboard) of its contour, the image
    frame included: an erosion by a (2d+1)-square, as a max-pool of the complement padded with 1."""
    shape = masks.shape
    outside = (~masks).reshape(-1, 1, *shape[-2:]).float()
    near_outside = F.max_pool2d(F.pad(outside, (d, d, d, d), value=1.0), 2 * d + 1, stride=1) > 0
    return masks & near_outside.reshape(shape)


def boundary_counts(target: torch.Tensor, pred: torch.Tensor, num_classes: int, ratio: float, ignore_index: int = IGNORE_INDEX):
    """Per image and class, |G_d & P_d| and |G_d | P_d| (int64 (B, C)) of class maps (B, H, W); pixels whose
    target is `ignore_index` are left out of both counts (and count as no class when finding contours)."""
    if target.shape != pred.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != pred shape {tuple(pred.shape)}")
    d = boundary_width(target.shape[-2], target.shape[-1], ratio)
    classes = torch.arange(num_classes, device=target.device).view(1, -1, 1, 1)
    valid = (target != ignore_index).unsqueeze(1)
    g = inner_boundary(target.unsqueeze(1) == classes, d)
    p = inner_boundary(pred.unsqueeze(1) == classes, d)
    inter = (g & p & valid).sum(dim=(-2, -1))
    union = ((g | p) & valid).sum(dim=(-2, -1))
    return inter.long().cpu(), union.long().cpu()


class BoundaryIoU:
    """Dataset-level Boundary IoU per class: intersection and union counts summed over every image."""

    def __init__(self, num_classes: int, ratio: float, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ratio, self.ignore_index = num_classes, ratio, ignore_index
        self.counts = torch.zeros(2, num_classes, dtype=torch.int64)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        inter, union = boundary_counts(target, pred, self.num_classes, self.ratio, self.ignore_index)
        self.counts[0] += inter.sum(0)
        self.counts[1] += union.sum(0)

    def sync(self) -> None:
        all_reduce_sum(self.counts)

    def compute(self, names: list[str]) -> dict[str, Any]:
        per_class = {n: _div(float(i), float(u)) for n, i, u in zip(names, self.counts[0].tolist(), self.counts[1].tolist())}
        return {"boundary_iou": per_class, "mboundary_iou": _nanmean(list(per_class.values()))}


class PerImage:
    """Each image's counts: per class intersection and union (IoU), boundary intersection and union,
    correct and scored pixels. `compute` gives them in dataset order: under torchrun process r scored
    images r, r + world, r + 2 world, ... (runtime.distributed.shard of an unshuffled loader)."""

    def __init__(self, num_classes: int, ratio: float, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ratio, self.ignore_index = num_classes, ratio, ignore_index
        self.rows: list[list[int]] = []

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        valid = target != self.ignore_index
        classes = torch.arange(self.num_classes, device=target.device).view(1, -1, 1, 1)
        g = (target.unsqueeze(1) == classes) & valid.unsqueeze(1)
        p = (pred.unsqueeze(1) == classes) & valid.unsqueeze(1)
        inter = (g & p).sum(dim=(-2, -1)).cpu()
        union = (g | p).sum(dim=(-2, -1)).cpu()
        b_inter, b_union = boundary_counts(target, pred, self.num_classes, self.ratio, self.ignore_index)
        correct = ((target == pred) & valid).sum(dim=(-2, -1)).cpu()
        scored = valid.sum(dim=(-2, -1)).cpu()
        for b in range(target.shape[0]):
            self.rows.append(
                inter[b].tolist() + union[b].tolist() + b_inter[b].tolist() + b_union[b].tolist() + [int(correct[b]), int(scored[b])]
            )

    def sync(self) -> None:
        shares = gathered(self.rows)
        world = world_size()
        merged: list[Optional[list[int]]] = [None] * sum(len(s) for s in shares)
        for r, share in enumerate(shares):
            for k, row in enumerate(share):
                merged[r + k * world] = row
        self.rows = [row for row in merged if row is not None]

    def compute(self, names: list[str]) -> dict[str, Any]:
        return {"per_image_counts": [list(row) for row in self.rows]}


def counts_metrics(rows: list[list[int]], names: list[str]) -> dict[str, Any]:
    """IoU, mIoU, pixel accuracy and boundary IoU per class and mean from PerImage counts summed over `rows`
    (one row: one image's numbers; several: a group's, dataset-level within the group)."""
    c = len(names)
    total = [sum(col) for col in zip(*rows)] if rows else [0] * (4 * c + 2)
    iou = {n: _div(total[i], total[c + i]) for i, n in enumerate(names)}
    biou = {n: _div(total[2 * c + i], total[3 * c + i]) for i, n in enumerate(names)}
    return {
        "iou": iou,
        "miou": _nanmean(list(iou.values())),
        "pixel_acc": _div(total[4 * c], total[4 * c + 1]),
        "boundary_iou": biou,
        "mboundary_iou": _nanmean(list(biou.values())),
    }


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


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.4f}"


def format_table(metrics: dict, class_names: list[str]) -> str:
    """A console table: one row per class, then the dataset-level summary rows (boundary IoU where measured)."""
    width = max(len("m bndry IoU"), *(len(n) for n in class_names))
    keys = ["iou", "dice", "precision", "recall"] + (["boundary_iou"] if "boundary_iou" in metrics else [])
    cols = {"iou": "IoU", "dice": "Dice", "precision": "precision", "recall": "recall", "boundary_iou": "bndry IoU"}
    header = f"{'class':<{width}} | " + " | ".join(f"{cols[k]:>9}" for k in keys)
    lines = [header, "-" * len(header)]
    for name in class_names:
        values = [metrics[key][name] for key in keys]
        lines.append(f"{name:<{width}} | " + " | ".join(f"{_fmt(v):>9}" for v in values))
    lines.append("-" * len(header))
    summary = [("mIoU", "miou"), ("mDice", "mdice"), ("fwIoU", "fwiou"), ("pixel acc", "pixel_acc"), ("m bndry IoU", "mboundary_iou")]
    for label, key in summary:
        if key in metrics:
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
