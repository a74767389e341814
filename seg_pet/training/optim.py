"""Optimisers and learning-rate schedules, chosen by name (`optim.name`, `optim.scheduler`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Optional

import torch

# name -> builder(params, lr, weight_decay, momentum); momentum is used by SGD only.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": lambda params, lr, weight_decay, momentum: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
    "adam": lambda params, lr, weight_decay, momentum: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
    "sgd": lambda params, lr, weight_decay, momentum: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay),
}

# name -> the learning-rate factor at `step` of `total` (per-iteration schedules); None = constant.
SCHEDULES: dict[str, Optional[Callable[[int, int], float]]] = {
    "cosine": lambda step, total: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)),
    "poly": lambda step, total: (1 - min(step, total) / total) ** 0.9,  # as in DeepLab and torchvision's reference
    "none": None,
}


def build_optimizer(name: str, params: Iterable, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.0) -> torch.optim.Optimizer:
    return OPTIMIZERS[name](params, lr, weight_decay, momentum)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    schedule = SCHEDULES[name]
    if schedule is None:
        return None
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, total))
