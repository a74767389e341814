"""The doctor's checks: each a small function returning a `CheckResult`.

`doctor` (run_doctor) looks at the pipeline before any real training: masks and images as
they reach the loss and the model, class balance, the trivial majority-class baseline,
model/loss wiring and whether the model can overfit one batch. Each check is a small
function returning a `CheckResult`, so it can be tested on deliberately broken tensors
and tiny models without the CLI.

(The per-epoch training monitors live in seg_pet.training.monitors.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from seg_pet.labels import IGNORE_INDEX, LabelSpec, pet_spec
from seg_pet.losses import compute_class_weights
from seg_pet.losses.weights import SCHEMES
from seg_pet.metrics import ConfusionMatrix, compute_metrics
from seg_pet.training.monitors import HIGH_ACC

# --- doctor thresholds and the overfit-one-batch setup
IMBALANCE_WARN = 10.0  # largest : smallest class pixel ratio above which the doctor warns
OVERFIT_IMAGES = 4
OVERFIT_SIZE = 32  # the doctor's own image size for the overfit check: memorising needs no detail, and CPU time matters
OVERFIT_STEPS = 100
OVERFIT_LR = 1e-3
OVERFIT_LOSS_CUT = 0.9  # the loss must fall by more than this fraction of (first loss - floor)
OVERFIT_MIOU = 0.9

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclass
class CheckResult:
    """One doctor check: status PASS / WARN / FAIL, a one-line message and, when something is wrong, the fix."""

    name: str
    status: str
    message: str
    fix: str = ""
    details: list[str] = field(default_factory=list)  # extra lines (tables), printed indented


def format_result(result: CheckResult) -> str:
    lines = [f"{result.status:<4}  {result.name:<14} {result.message}"]
    lines += [f"{'':20}{line}" for line in result.details]
    if result.fix:
        lines.append(f"{'':20}fix: {result.fix}")
    return "\n".join(lines)


def _values(t: torch.Tensor, limit: int = 8) -> str:
    vals = torch.unique(t).tolist()
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vals[:limit])
    return "{" + shown + (", ..." if len(vals) > limit else "") + "}"


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


# --------------------------------------------------------------------------- doctor checks: data


def check_masks(targets: Any, num_classes: int, ignore_index: int = IGNORE_INDEX, spec: Optional[LabelSpec] = None) -> CheckResult:
    """Targets as they reach the loss: int64 (N, H, W) with values in 0..C-1 or the ignore index.

    `spec` (default: the Pet trimap spec) tells what a mask left at its file codes would look like."""
    name = "masks"
    spec = spec if spec is not None else pet_spec()
    word = "trimap" if spec.coding == "trimap" else "mask"
    if not isinstance(targets, torch.Tensor):
        return CheckResult(
            name, FAIL, f"targets are {type(targets).__name__}, not a tensor", "the dataset must return the mask as a torch tensor"
        )
    shape = tuple(targets.shape)
    if targets.is_floating_point():
        lo, hi = float(targets.min()), float(targets.max())
        fractional = bool((targets != targets.round()).any())
        cause = (
            " (fractions in 0..1: the mask was scaled like an image, e.g. ToTensor or ToDtype(scale=True) divided it by 255)"
            if fractional and hi <= 1.0
            else ""
        )
        return CheckResult(
            name,
            FAIL,
            f"{_dtype(targets)} {shape}, values {lo:.4g}..{hi:.4g}: CrossEntropyLoss needs int64 class indices{cause}",
            "keep the mask a tv_tensors.Mask so image-only transforms skip it, and return it as int64 class ids "
            "(seg_pet.labels.LabelSpec.lut), never divided by 255",
        )
    if targets.ndim == 4:
        if shape[1] == 1:
            return CheckResult(
                name,
                FAIL,
                f"shape {shape} is (N, 1, H, W): the loss expects (N, H, W) class indices",
                f"drop the channel dimension: targets.squeeze(1) (or read the {word} as a 2-D array)",
            )
        if shape[1] == num_classes:
            return CheckResult(
                name,
                FAIL,
                f"shape {shape} looks one-hot (N, C, H, W): the loss expects (N, H, W) class indices",
                "pass class indices: targets.argmax(1), or do not one-hot encode the mask",
            )
        return CheckResult(
            name, FAIL, f"shape {shape} is 4-D: the loss expects (N, H, W) class indices", "return one (H, W) mask per image"
        )
    if targets.ndim != 3:
        return CheckResult(name, FAIL, f"shape {shape}: the loss expects (N, H, W) class indices", "return one (H, W) mask per image")
    if targets.dtype != torch.int64:
        return CheckResult(
            name,
            FAIL,
            f"dtype {_dtype(targets)}: CrossEntropyLoss needs int64 (long) class indices",
            f"convert with .long() after the {word} remap",
        )
    labelled = targets[targets != ignore_index]
    ignored = 1.0 - labelled.numel() / max(targets.numel(), 1)
    if labelled.numel() == 0:
        return CheckResult(
            name,
            FAIL,
            f"every pixel is the ignore index {ignore_index}: the loss is 0 and nothing is learned",
            f"check the {word} remap (seg_pet.labels.LabelSpec.lut) and the data.* keys that declare the classes",
        )
    present = set(torch.unique(labelled).tolist())
    bad = sorted(v for v in present if not 0 <= v < num_classes)
    # Masks left at the file's own codes (Pet trimaps: 1, 2, 3, where class ids start at 0).
    lut = spec.lut()
    file_codes = {int(v) for v, _ in spec.codes if not isinstance(v, tuple)}
    raw_codes = bool(file_codes) and present <= file_codes and any(lut[v] != v for v in present) and len(present) >= 2
    if bad and raw_codes:
        return CheckResult(
            name,
            FAIL,
            f"values {_values(targets)} are the raw {word} ({spec.describe_values()}), not class ids 0..{num_classes - 1}",
            f"remap the {word} before the loss (seg_pet.labels.LabelSpec.lut)",
        )
    if bad:
        return CheckResult(
            name,
            FAIL,
            f"values {bad} lie outside 0..{num_classes - 1} (and are not the ignore index {ignore_index})",
            f"masks must hold class ids 0..{num_classes - 1} or {ignore_index}; check the remap and model classes",
        )
    if raw_codes and 0 not in present:
        return CheckResult(
            name,
            WARN,
            f"values {_values(targets)} contain no class 0 ({spec.names[0]}): this looks like an un-remapped {word}",
            f"remap the {word} (seg_pet.labels.LabelSpec.lut) so that class {spec.names[0]} becomes 0",
        )
    return CheckResult(
        name,
        PASS,
        f"int64 {shape}, values {_values(targets)} ({ignored:.1%} ignore {ignore_index}): "
        f"class ids 0..{num_classes - 1} as CrossEntropyLoss expects",
    )


def check_images(images: Any) -> CheckResult:
    """Images as they reach the model: float (N, 3, H, W), normalised (per-channel mean ~0, std ~1)."""
    name = "images"
    if not isinstance(images, torch.Tensor):
        return CheckResult(name, FAIL, f"images are {type(images).__name__}, not a tensor", "the dataset must return a torch tensor")
    shape = tuple(images.shape)
    if not images.is_floating_point():
        return CheckResult(
            name,
            FAIL,
            f"dtype {_dtype(images)} {shape}: the model needs float input",
            "convert and normalise: v2.ToDtype(torch.float32, scale=True) then v2.Normalize(mean, std)",
        )
    if images.ndim == 4 and shape[1] != 3 and shape[-1] == 3:
        return CheckResult(
            name, FAIL, f"shape {shape} is channels-last (N, H, W, 3): the model expects (N, 3, H, W)", "images.permute(0, 3, 1, 2)"
        )
    if images.ndim != 4 or shape[1] != 3:
        return CheckResult(
            name, FAIL, f"shape {shape}: the model expects (N, 3, H, W) RGB", "convert every image to RGB and batch to (N, 3, H, W)"
        )
    if not bool(torch.isfinite(images).all()):
        return CheckResult(name, FAIL, "images contain NaN or Inf", "check the image decoding and normalisation (a std of 0?)")
    x = images.detach().float()
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    lo, hi = float(x.min()), float(x.max())
    stats = f"per-channel mean [{', '.join(f'{m:+.2f}' for m in mean.tolist())}], std [{', '.join(f'{s:.2f}' for s in std.tolist())}]"
    if lo >= 0 and hi > 2:
        return CheckResult(
            name,
            FAIL,
            f"float {shape} with values {lo:g}..{hi:g}: pixels are 0..255, not scaled or normalised ({stats})",
            "v2.ToDtype(torch.float32, scale=True) then v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)",
        )
    if lo >= 0 and hi <= 1:
        return CheckResult(
            name,
            WARN,
            f"float {shape} in 0..1: scaled but not normalised ({stats})",
            "add v2.Normalize(IMAGENET_MEAN, IMAGENET_STD): pretrained encoders expect normalised input",
        )
    if bool((mean.abs() < 1.0).all() and (std > 0.4).all() and (std < 2.5).all()):
        return CheckResult(name, PASS, f"float32 {shape}, normalised: {stats}")
    return CheckResult(
        name,
        WARN,
        f"float {shape}, not normalised as expected (mean ~0, std ~1): {stats}",
        "normalise with the mean/std the encoder was trained with (seg_pet.data.transforms.IMAGENET_MEAN/STD)",
    )


def check_class_balance(pixel_counts: list[int], names: list[str]) -> CheckResult:
    """Pixel share per class on the training split, the imbalance ratio and each class-weight scheme."""

    name = "class balance"
    total = sum(pixel_counts)
    if total <= 0:
        return CheckResult(name, FAIL, "the training split has no labelled pixels", "check data.root and the mask remap")
    shares = ", ".join(f"{n} {c / total:.1%}" for n, c in zip(names, pixel_counts))
    absent = [n for n, c in zip(names, pixel_counts) if c == 0]
    if absent:
        return CheckResult(
            name,
            FAIL,
            f"no training pixel belongs to {', '.join(map(repr, absent))} ({shares}): that class cannot be learned",
            "check the mask values and the declared classes (data.border for Pet, data.classes for a folder); or drop the class",
        )
    big = max(range(len(names)), key=lambda i: pixel_counts[i])
    small = min(range(len(names)), key=lambda i: pixel_counts[i])
    ratio = pixel_counts[big] / pixel_counts[small]
    details = []
    for scheme in SCHEMES:
        weights = compute_class_weights(scheme, pixel_counts)
        details.append(f"loss.class_weights: {scheme:<12} -> " + ", ".join(f"{n} {w:.3g}" for n, w in zip(names, weights)))
    message = (
        f"training pixels: {shares}; imbalance {ratio:.1f}:1 ({names[big]} : {names[small]}); "
        f"watch the IoU of '{names[small]}', not pixel accuracy"
    )
    if ratio > IMBALANCE_WARN:
        return CheckResult(
            name, WARN, message, f"with plain CE the model can ignore '{names[small]}'; try loss.name: wce, ce_dice or dice", details
        )
    return CheckResult(name, PASS, message, details=details)


def majority_baseline(targets: Iterable[torch.Tensor], majority: int, names: list[str], ignore_index: int = IGNORE_INDEX) -> dict[str, Any]:
    """Metrics of predicting class `majority` for every pixel of the given target batches."""
    matrix = ConfusionMatrix(len(names), ignore_index)
    for batch in targets:
        for target in batch if isinstance(batch, (list, tuple)) else [batch]:  # native-resolution batches: a list of masks
            matrix.update(target, torch.full_like(target, majority))
    return compute_metrics(matrix.mat, names)


def check_baseline(metrics: dict[str, Any], majority_name: str, split: str = "val") -> CheckResult:
    """Report the trivial majority-class baseline: the floor any trained model must clearly beat."""
    name = "baseline"
    acc, miou = metrics["pixel_acc"], metrics["miou"]
    if math.isnan(acc):
        return CheckResult(name, FAIL, f"the {split} split has no labelled pixels", "check data.val_fraction and the masks")
    message = (
        f"predicting '{majority_name}' everywhere scores pixel acc {acc:.3f} but mIoU {miou:.3f} on {split}: "
        f"a trained model must clearly beat mIoU {miou:.3f}"
    )
    if acc >= HIGH_ACC:
        return CheckResult(
            name,
            WARN,
            message + f"; pixel accuracy is uninformative here (>= {HIGH_ACC:.0%} for free)",
            "judge runs by per-class IoU and mIoU, never by pixel accuracy",
        )
    return CheckResult(name, PASS, message)
