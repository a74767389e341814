"""Training monitors: one epoch's numbers -> plain-language warnings for the classic failure modes.

Collapse onto one class, the pixel-accuracy trap, a class that is never learned, a (near-)zero
train loss with a low val mIoU, zero gradients. Each warning says what to try.
"""

from __future__ import annotations

import math
from typing import Any

COLLAPSE_SHARE = 0.98  # one class takes more than this share of the predicted pixels
DEAD_IOU = 0.05  # a class IoU below this counts as "not learned"
HIGH_ACC = 0.85  # pixel accuracy that looks good enough to hide a dead class
LOW_MIOU = 0.5  # val mIoU below this is "still low"
NEAR_ZERO_LOSS = 1e-3  # a train loss this small while val mIoU is low means the loss measures the wrong thing


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and not math.isnan(x)


def epoch_warnings(row: dict[str, Any], history: list[dict[str, Any]], metrics: dict[str, Any], names: list[str]) -> list[str]:
    """Warnings for one epoch; `history` holds the rows of earlier epochs, `metrics` the val metrics of this one."""
    warnings = []
    shares = metrics.get("pred_share", {})
    for name, share in shares.items():
        if _ok(share) and share > COLLAPSE_SHARE:
            warnings.append(
                f"collapse: {share:.1%} of validation pixels are predicted as '{name}'; the model ignores the other classes "
                "(class imbalance? try loss.name: wce, dice or ce_dice)"
            )
    acc = metrics.get("pixel_acc", math.nan)
    gt_share = metrics.get("gt_share", {})
    # Only classes that occur in the val ground truth can be "not learned" (an absent class has IoU 0 or NaN by construction).
    dead = [n for n in names if _ok(v := metrics["iou"].get(n)) and v < DEAD_IOU and (not gt_share or (gt_share.get(n) or 0) > 0)]
    if dead and _ok(acc) and acc > HIGH_ACC:
        warnings.append(
            f"accuracy trap: pixel accuracy is {acc:.1%} but IoU of {', '.join(repr(n) for n in dead)} is below {DEAD_IOU}; "
            "accuracy hides classes the model does not predict (judge by per-class IoU; try loss.name: wce or ce_dice)"
        )
    elif dead and len(history) >= 2:
        warnings.append(
            f"class not learned: IoU of {', '.join(repr(n) for n in dead)} is below {DEAD_IOU} after {len(history) + 1} epochs "
            "(try loss.name: wce or ce_dice)"
        )
    loss = row.get("train_loss")
    miou = metrics.get("miou", math.nan)
    first = history[0]["train_loss"] if history else None
    if _ok(loss) and _ok(miou) and loss < NEAR_ZERO_LOSS and miou < LOW_MIOU:
        warnings.append(
            f"train loss is {loss:.4g} but val mIoU is only {miou:.3f}: the loss is not measuring the task "
            "(every pixel ignored? targets fed as predictions? loss on the wrong tensors?); run `python -m seg_pet doctor`"
        )
    elif _ok(loss) and _ok(first) and first > 0 and len(history) >= 2 and loss < 0.2 * first and _ok(miou) and miou < LOW_MIOU:
        warnings.append(
            f"train loss fell to {loss:.4f} ({loss / first:.0%} of epoch 1) but val mIoU is only {miou:.3f}: "
            "overfitting, or a loss that rewards the majority class"
        )
    grad = row.get("grad_norm_mean")
    if isinstance(grad, (int, float)) and grad == 0:
        warnings.append("gradients are all zero this epoch: nothing is learning (frozen weights, detached output, or every pixel ignored)")
    return warnings
