"""One training epoch and one evaluation pass: the inner loops, nothing else.

Like torchvision's references/segmentation: plain functions with explicit arguments.
The scheduler steps every iteration. Evaluation fills a confusion matrix over the whole
split; all metrics are computed from it afterwards (seg_pet.metrics).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from seg_pet.errors import TrainingDiverged
from seg_pet.metrics import ConfusionMatrix


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler],
    device: torch.device,
    *,
    amp_dtype: Optional[torch.dtype] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    grad_clip: Optional[float] = None,
    max_steps: Optional[int] = None,
    desc: str = "train",
    should_stop: Callable[[], bool] = lambda: False,
    channels_last: bool = False,
) -> dict[str, float]:
    """Returns mean loss, gradient-norm mean and max, steps done. A NaN/Inf loss raises TrainingDiverged
    before the optimiser step, so the weights stay those of the last good step.

    `channels_last`: the batch is copied to the device in channels_last layout, matching a model
    converted with `model.to(memory_format=torch.channels_last)` (faster convolutions on CUDA).
    The finite-loss check reads the loss on the host, one device sync per step; the gradient norm
    stays on the device until the epoch ends so it adds none."""
    model.train()
    total_loss, steps, norms = 0.0, 0, []
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    bar = tqdm(loader, total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)
    for images, targets in bar:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = loss_fn(logits.float(), targets)
        # The one host sync per step: the finite check has to come before the optimiser step.
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"loss is {loss_value} at step {steps + 1} of {desc}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        # With max_norm=inf this only measures the norm, which the monitors report every epoch.
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip or math.inf)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss_value
        norms.append(norm.detach())
        steps += 1
        bar.set_postfix(loss=f"{total_loss / steps:.4f}")
        if steps >= total or should_stop():
            break
    bar.close()
    finite = [n for n in (torch.stack(norms).float().tolist() if norms else []) if math.isfinite(n)]
    return {
        "loss": total_loss / max(steps, 1),
        "grad_norm_mean": sum(finite) / len(finite) if finite else math.nan,
        "grad_norm_max": max(finite) if finite else math.nan,
        "steps": steps,
    }


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    *,
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    amp_dtype: Optional[torch.dtype] = None,
    desc: str = "val",
    channels_last: bool = False,
) -> tuple[ConfusionMatrix, float]:
    """Confusion matrix over the whole loader, and the mean loss per batch (NaN without loss_fn).

    When targets are larger than the model input (native-resolution evaluation), logits are
    resized bilinearly to the target size before the argmax. Native-resolution batches carry
    a list of masks of differing sizes (data.collate_native): each image is scored at its own
    size, and the batch loss is the mean of the per-image losses.
    """
    model.eval()
    matrix = ConfusionMatrix(num_classes)
    total_loss, batches = 0.0, 0
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    for images, targets in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        if isinstance(targets, (list, tuple)):
            with autocast(device, amp_dtype):
                logits = model(images)
            batch_loss = 0.0
            for one_logits, target in zip(logits.float(), targets):
                target = target.to(device, non_blocking=True)[None]
                one_logits = F.interpolate(one_logits[None], size=target.shape[-2:], mode="bilinear", align_corners=False)
                if loss_fn is not None:
                    batch_loss += loss_fn(one_logits, target).item() / len(targets)
                matrix.update(target, one_logits.argmax(dim=1))
            if loss_fn is not None:
                total_loss += batch_loss
                batches += 1
            continue
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        if logits.shape[-2:] != targets.shape[-2:]:
            logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        if loss_fn is not None:
            total_loss += loss_fn(logits, targets).item()
            batches += 1
        matrix.update(targets, logits.argmax(dim=1))
    return matrix, (total_loss / batches if batches else math.nan)
