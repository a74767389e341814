"""The doctor's checks of the model and the loss: logits, the initial loss, the loss floor, overfitting one batch."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seg_pet.data.transforms import eval_transforms
from seg_pet.doctor.checks import (
    FAIL,
    OVERFIT_IMAGES,
    OVERFIT_LOSS_CUT,
    OVERFIT_LR,
    OVERFIT_MIOU,
    OVERFIT_SIZE,
    OVERFIT_STEPS,
    PASS,
    WARN,
    CheckResult,
)
from seg_pet.labels import IGNORE_INDEX
from seg_pet.metrics import batch_metrics


def check_output(logits: torch.Tensor, num_classes: int, input_hw: Optional[tuple[int, int]] = None) -> CheckResult:
    """Model output: (N, C, H, W) with C = number of classes, and logits rather than probabilities."""
    name = "model output"
    shape = tuple(logits.shape)
    if logits.ndim != 4 or shape[1] != num_classes:
        return CheckResult(
            name,
            FAIL,
            f"shape {shape}: expected (N, {num_classes}, H, W), one channel per class",
            f"build the model with classes={num_classes} (seg_pet.models.build_model(cfg, num_classes))",
        )
    if input_hw is not None and tuple(shape[-2:]) != tuple(input_hw):
        return CheckResult(
            name,
            FAIL,
            f"output size {shape[-2:]} differs from input size {tuple(input_hw)}",
            "use an image size the architecture supports (a multiple of 32) or upsample the logits",
        )
    x = logits.detach().float()
    if not bool(torch.isfinite(x).all()):
        return CheckResult(name, FAIL, "the untrained model outputs NaN or Inf", "check the input normalisation and the model weights")
    lo, hi = float(x.min()), float(x.max())
    sums = x.sum(dim=1)
    if lo >= 0 and float((sums - 1).abs().max()) < 1e-3:
        return CheckResult(
            name,
            FAIL,
            f"outputs sum to 1 over the {num_classes} classes: the model ends in softmax, but the losses apply softmax themselves "
            "(double softmax: flat gradients, the loss stalls)",
            "remove the final softmax (smp: activation=None); apply softmax/argmax only for predictions",
        )
    if lo >= 0 and hi <= 1:
        return CheckResult(
            name,
            WARN,
            f"every output lies in {lo:.3f}..{hi:.3f}: looks like a sigmoid at the end of the model",
            "the losses expect raw logits: remove the final activation (smp: activation=None)",
        )
    return CheckResult(name, PASS, f"logits {shape} (range {lo:+.2f}..{hi:+.2f}), not probabilities")


def check_initial_loss(logits: torch.Tensor, targets: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> CheckResult:
    """Cross-entropy of the untrained model should be near ln(C): an even spread over the classes."""
    name = "initial loss"
    expected = math.log(num_classes)
    ce = float(F.cross_entropy(logits.detach().float(), targets, ignore_index=ignore_index))
    message = f"CE of the untrained model {ce:.4f}, ln({num_classes}) = {expected:.4f}"
    if not math.isfinite(ce):
        return CheckResult(name, FAIL, message + ": not finite", "check the model output and the masks")
    if ce > 2 * expected:
        return CheckResult(
            name,
            WARN,
            message + ": far above ln(C), the untrained model is confidently wrong (large initial logits)",
            "check the output scale / head initialisation, and the input normalisation",
        )
    if ce < 0.5 * expected:
        return CheckResult(
            name,
            WARN,
            message + ": far below ln(C) before any training, the answer leaks into the input?",
            "check that the mask is not part of the model input",
        )
    return CheckResult(name, PASS, message + ": the untrained model spreads its bets evenly, as it should")


def _onehot(targets: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(N, H, W) class ids -> (N, C, H, W) float one-hot; ignored pixels become class 0 (the losses skip them anyway)."""
    safe = torch.where(targets == ignore_index, torch.zeros_like(targets), targets)
    return F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()


def _perfect_logits(targets: torch.Tensor, num_classes: int, margin: float, ignore_index: int) -> torch.Tensor:
    # +margin for the target class, -margin elsewhere: also saturates one-vs-rest sigmoid losses (smp focal).
    return margin * (2 * _onehot(targets, num_classes, ignore_index) - 1)


def smoothing_floor(label_smoothing: float, num_classes: int) -> float:
    """The minimum of unweighted CE with label smoothing: the entropy of the smoothed target."""
    if label_smoothing <= 0:
        return 0.0
    hi, lo = 1 - label_smoothing + label_smoothing / num_classes, label_smoothing / num_classes
    return -(hi * math.log(hi) + (num_classes - 1) * lo * math.log(lo))


@torch.no_grad()
def check_loss_floor(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    num_classes: int,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> CheckResult:
    """The configured loss with perfect logits must be near its minimum; show the one-hot-as-logits CE pitfall beside it."""
    name = "loss floor"
    zero = float(loss_fn(torch.zeros(targets.shape[0], num_classes, *targets.shape[1:], device=targets.device), targets))
    perfect = min(float(loss_fn(_perfect_logits(targets, num_classes, m, ignore_index), targets)) for m in (2.0, 4.0, 8.0, 16.0, 32.0))
    onehot_ce = float(F.cross_entropy(_onehot(targets, num_classes, ignore_index), targets, ignore_index=ignore_index))
    pitfall = (
        f"(the one-hot target fed as logits gives CE {onehot_ce:.4f}, not 0: softmax of 0/1 is not one-hot, "
        "so a non-zero loss for 'target as prediction' is expected)"
    )
    shown = 0.0 if abs(perfect) < 5e-5 else perfect  # no "-0.0000" from float round-off
    message = f"configured loss: {zero:.4f} at zero logits, {shown:.4f} at perfect logits {pitfall}"
    if not (math.isfinite(zero) and math.isfinite(perfect)):
        return CheckResult(name, FAIL, message + ": not finite", "check the loss and the masks (ignore index?)")
    if label_smoothing > 0:
        floor = smoothing_floor(label_smoothing, num_classes)
        if perfect < zero:
            return CheckResult(
                name, PASS, message + f"; with label_smoothing {label_smoothing:g} the floor is above 0 by design (~{floor:.4f})"
            )
    elif perfect <= 0.05 * max(zero, 1e-6):
        return CheckResult(name, PASS, message)
    return CheckResult(
        name,
        FAIL,
        message + ": a perfect prediction does not reach the loss minimum, so the loss does not measure agreement with the target",
        "the loss must take raw logits (N, C, H, W) and int64 targets (N, H, W); check for softmax applied twice or swapped arguments",
    )


def check_overfit(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_classes: int,
    *,
    steps: int = OVERFIT_STEPS,
    lr: float = OVERFIT_LR,
    floor: float = 0.0,
    note: str = "",
) -> CheckResult:
    """Adam on one fixed batch: the loss must fall by > 90 % (of the way to `floor`) and batch mIoU exceed 0.9.

    Stops as soon as both hold. A model that cannot memorise 4 images has a wiring bug
    (frozen or detached weights, wrong targets, a broken loss), whatever the data.
    """
    name = "overfit batch"
    wiring = "the model cannot learn even one batch: wiring bug"
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return CheckResult(
            name,
            FAIL,
            f"{wiring} (no parameter has requires_grad=True: the weights are frozen)",
            "unfreeze the weights (requires_grad_(True)); if you freeze the encoder, leave decoder and head trainable",
        )
    optimizer = torch.optim.Adam(params, lr=lr)
    model.train()
    first = loss_value = miou = math.nan
    for step in range(1, steps + 1):
        logits = model(images).float()
        loss = loss_fn(logits, targets)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            return CheckResult(
                name, FAIL, f"{wiring} (loss became {loss_value} at step {step}{note})", "check the loss, lr and input values"
            )
        if step == 1:
            first = loss_value
        miou = batch_metrics(logits.detach(), targets, [str(c) for c in range(num_classes)])["miou"]
        cut = (first - loss_value) / max(first - floor, 1e-12)
        if cut > OVERFIT_LOSS_CUT and miou > OVERFIT_MIOU:
            return CheckResult(
                name, PASS, f"loss {first:.4f} -> {loss_value:.4f} (-{cut:.1%}), batch mIoU {miou:.3f} after {step} Adam steps{note}"
            )
        if loss.grad_fn is None:
            return CheckResult(
                name,
                FAIL,
                f"{wiring} (the loss has no gradient: the output is detached from the weights{note})",
                "remove torch.no_grad()/.detach()/numpy round trips between model output and loss",
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if all(p.grad is None or not bool(p.grad.any()) for p in params):
            return CheckResult(
                name,
                FAIL,
                f"{wiring} (every gradient is zero at step {step}{note})",
                "check that the loss depends on the model output and that targets are not all ignored",
            )
        optimizer.step()
    cut = (first - loss_value) / max(first - floor, 1e-12)
    return CheckResult(
        name,
        FAIL,
        f"{wiring}: loss {first:.4f} -> {loss_value:.4f} (-{cut:.0%}), batch mIoU {miou:.3f} after "
        f"{steps} Adam steps at lr {lr:g}{note}; needs > {OVERFIT_LOSS_CUT:.0%} and mIoU > {OVERFIT_MIOU}",
        "check frozen weights, masks vs classes, the loss inputs (logits, int64 targets), and that the optimiser sees the model's parameters",
    )


def overfit_batch(dataset: Any, size: int = OVERFIT_SIZE, count: int = OVERFIT_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """The overfit check's fixed batch: the first `count` images of a SegmentationDataset, resized to `size` without
    augmentation (a batch that changed every step could not be memorised)."""

    small = copy.copy(dataset)  # shallow: shares the file lists, gets its own transforms
    small.transforms = eval_transforms(size)
    batch = [small[i] for i in range(min(count, len(small)))]
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
