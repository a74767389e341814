"""Diagnostics: the per-epoch training monitors (and the `doctor` checks).

Monitors turn the numbers of one epoch into plain-language warnings for the classic
segmentation failure modes: collapse onto one class, the pixel-accuracy trap, a class
that is never learned, a low train loss with a low val mIoU.
"""

from __future__ import annotations

import math
from typing import Any

COLLAPSE_SHARE = 0.98  # one class takes more than this share of the predicted pixels
DEAD_IOU = 0.05  # a class IoU below this counts as "not learned"
HIGH_ACC = 0.85


def epoch_warnings(row: dict[str, Any], history: list[dict[str, Any]], metrics: dict[str, Any], names: list[str]) -> list[str]:
    """Warnings for one epoch; `history` holds the rows of earlier epochs."""
    warnings = []
    shares = metrics.get("pred_share", {})
    for name, share in shares.items():
        if share is not None and not math.isnan(share) and share > COLLAPSE_SHARE:
            warnings.append(
                f"collapse: {share:.1%} of validation pixels are predicted as '{name}'; the model ignores the other classes "
                "(class imbalance? try loss.name: wce, dice or ce_dice)"
            )
    acc = metrics.get("pixel_acc", math.nan)
    dead = [n for n in names if (v := metrics["iou"].get(n)) is not None and not math.isnan(v) and v < DEAD_IOU]
    if dead and not math.isnan(acc) and acc > HIGH_ACC:
        warnings.append(
            f"accuracy trap: pixel accuracy is {acc:.1%} but IoU of {', '.join(repr(n) for n in dead)} is below {DEAD_IOU}; "
            "accuracy hides classes the model does not predict"
        )
    elif dead and len(history) >= 2:
        warnings.append(f"class not learned: IoU of {', '.join(repr(n) for n in dead)} is below {DEAD_IOU} after {len(history) + 1} epochs")
    first = history[0]["train_loss"] if history else None
    miou = metrics.get("miou", math.nan)
    if first and len(history) >= 2 and row["train_loss"] < 0.2 * first and not math.isnan(miou) and miou < 0.5:
        warnings.append(
            f"train loss fell to {row['train_loss']:.4f} ({row['train_loss'] / first:.0%} of epoch 1) but val mIoU is only {miou:.3f}: "
            "overfitting, or a loss that rewards the majority class"
        )
    return warnings
