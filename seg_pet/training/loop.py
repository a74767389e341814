"""One training epoch: the inner loop, nothing else.

Like torchvision's references/segmentation: a plain function with explicit arguments.
The scheduler steps every iteration. (The evaluation pass lives in seg_pet.evaluation.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from seg_pet.runtime.device import Runtime
from seg_pet.runtime.distributed import all_reduce_sum, is_distributed, is_main, world_size
from seg_pet.runtime.errors import TrainingDiverged


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler],
    runtime: Runtime,
    *,
    scaler: Optional[torch.amp.GradScaler] = None,
    grad_clip: Optional[float] = None,
    max_steps: Optional[int] = None,
    desc: str = "train",
    should_stop: Callable[[], bool] = lambda: False,
    ema: Optional[AveragedModel] = None,
) -> dict[str, float]:
    """Returns mean loss, gradient-norm mean and max, steps done. A NaN/Inf loss raises TrainingDiverged
    before the optimiser step, so the weights stay those of the last good step; a stop request
    (`should_stop`) ends the epoch before the step's backward pass.

    Batches are copied to the device in the runtime's memory format (channels_last on CUDA), matching
    the model that `Runtime.place` converted. The finite-loss check reads the loss on the host, one device sync per step; the gradient norm
    stays on the device until the epoch ends so it adds none.

    Under torchrun (`model` wrapped in DDP) that one sync is also where the processes agree (`agreed`):
    the loss is averaged over them and a stop asked of any of them stops all of them at the same step,
    so none is left waiting in a collective. The gradient norm is read after backward, from gradients
    DDP has already averaged: the same in every process. `ema` (train.ema) is updated after every
    optimiser step from the new weights (identical in every process under DDP)."""
    model.train()
    total_loss, steps, norms = 0.0, 0, []
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    bar = tqdm(loader, total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None if is_main() else True)
    for images, targets in bar:
        images = runtime.to_device(images)
        targets = targets.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(images)
            loss = loss_fn(logits.float(), targets)
        # The one host sync per step: the finite check has to come before the optimiser step.
        loss_value, stop = agreed(loss, should_stop())
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"loss is {loss_value} at step {steps + 1} of {desc}")
        if stop:
            break
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
        if ema is not None:
            ema.update_parameters(model)
        total_loss += loss_value
        norms.append(norm.detach())
        steps += 1
        bar.set_postfix(loss=f"{total_loss / steps:.4f}")
        if steps >= total:
            break
    bar.close()
    finite = [n for n in (torch.stack(norms).float().tolist() if norms else []) if math.isfinite(n)]
    return {
        "loss": total_loss / max(steps, 1),
        "grad_norm_mean": sum(finite) / len(finite) if finite else math.nan,
        "grad_norm_max": max(finite) if finite else math.nan,
        "steps": steps,
    }


def agreed(loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
    """(the loss averaged over processes, whether any process must stop): one small all_reduce under
    torchrun; with one process simply (loss.item(), stop)."""
    if not is_distributed():
        return loss.item(), stop
    both = torch.stack([loss.detach().double(), torch.tensor(float(stop), dtype=torch.float64, device=loss.device)])
    loss_sum, stops = all_reduce_sum(both).tolist()
    return loss_sum / world_size(), stops > 0
