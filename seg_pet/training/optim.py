"""Optimisers and learning-rate schedules, chosen by name (`optim.name`, `optim.scheduler`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Optional

import torch

from seg_pet.config import OptimConfig, allowed, builders_for

# name -> builder(params, lr, weight_decay, momentum); momentum is used by SGD only.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = builders_for(
    allowed(OptimConfig, "name"),
    {
        "adamw": lambda params, lr, weight_decay, momentum: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
        "adam": lambda params, lr, weight_decay, momentum: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
        "sgd": lambda params, lr, weight_decay, momentum: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay),
    },
)

# name -> the learning-rate factor at `step` of `total` (per-iteration schedules); None = constant.
SCHEDULES: dict[str, Optional[Callable[[int, int], float]]] = builders_for(
    allowed(OptimConfig, "scheduler"),
    {
        "cosine": lambda step, total: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)),
        "poly": lambda step, total: (1 - min(step, total) / total) ** 0.9,  # as in DeepLab and torchvision's reference
        "none": None,
    },
)


def build_optimizer(name: str, params: Iterable, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.0) -> torch.optim.Optimizer:
    return OPTIMIZERS[name](params, lr, weight_decay, momentum)


def build_scheduler(
    name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """The per-iteration schedule; with `warmup_steps` the factor rises linearly to 1 over them (the
    first step at 1 / warmup_steps), then the schedule spans the remaining steps."""
    schedule = SCHEDULES[name]
    if schedule is None and not warmup_steps:
        return None
    after = max(total_steps - warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 1.0 if schedule is None else schedule(step - warmup_steps, after)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
