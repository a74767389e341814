"""Numbers: every number the config gives, and every number computed from them, checked in one place.

    check_number(key, value, meta)   a config key's value: finite, within the schema's bounds (each
                                     element of a list too); `meta` is the key's `option(...)` metadata
    check_split_sizes(cfg, n_train, n_val)
                                     data.val_fraction leaves training images, and validation images unless it is 0
    plan_batches(cfg, n_train)       the quantities training derives from data.batch_size,
                                     data.image_size, optim.epochs and
                                     train.max_steps_per_epoch: images per step, steps per epoch,
                                     total steps, and the values BatchNorm sees per channel
    check_class_weights(weights, names, source)
                                     one finite weight >= 0 per class, not all 0 (from the config,
                                     from pixel counts, or from a checkpoint)

Every failure is a one-line ConfigError naming the key (or the keys a derived quantity comes from).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any

from seg_pet.runtime.errors import ConfigError

_BOUNDS = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}
_BOUND_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
ENCODER_STRIDE = 32  # smp encoders downsample 5 times: the deepest feature map is image_size / 32 pixels wide
MAX_TOTAL_STEPS = 10**9  # the schedules count steps in int64; far beyond any real run


def describe_range(meta: typing.Mapping[str, Any]) -> str:
    """e.g. '> 0 and < 1' from the schema's bounds ('' when unbounded)."""
    return " and ".join(f"{_BOUND_WORDS[b]} {_show(meta[b])}" for b in _BOUND_WORDS if meta.get(b) is not None)


def _show(number: float) -> str:
    """Integers in full (a seed bound of 4294967295), other numbers short (1e+06)."""
    return str(number) if isinstance(number, int) else f"{number:g}"


def check_number(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    """A number (or each number of a list) is finite and within the declared bounds."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_number(f"{key}[{i}]", item, meta)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    for bound, ok in _BOUNDS.items():
        limit = meta.get(bound)
        if limit is not None and not ok(value, limit):
            raise ConfigError(f"{key}: must be {describe_range(meta)}, got {_show(value)}")


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int  # images per training step (data.batch_size, at most the training split)
    steps_per_epoch: int
    total_steps: int  # what the learning-rate schedule spans


def check_split_sizes(cfg: Any, n_train: int, n_val: int) -> None:
    """The validation carve-out leaves images on both sides; `cfg` is a Config."""
    fraction = cfg.data.val_fraction
    if n_train < 1:
        raise ConfigError(
            f"data.val_fraction: {fraction:g} leaves no training images ({n_val} validation, 0 training); lower it, or add images"
        )
    if n_val < 1 and fraction > 0:
        raise ConfigError(f"data.val_fraction: {fraction:g} leaves no validation images ({n_train} training); raise it, or add images")


def plan_batches(cfg: Any, n_train: int) -> BatchPlan:
    """Images per step, steps per epoch and total steps, checked; `cfg` is a Config."""
    data = cfg.data
    batch_size = min(data.batch_size, n_train)
    bottleneck = max(1, data.image_size // ENCODER_STRIDE)
    if batch_size * bottleneck**2 < 2:
        # BatchNorm normalises over the batch and the pixels: with one value per channel it cannot (torch raises).
        why = "the training split has 1 image" if n_train == 1 else f"data.batch_size is {data.batch_size}"
        raise ConfigError(
            f"data.batch_size: {why}, and at data.image_size {data.image_size} the encoder's last feature map is "
            f"{bottleneck}x{bottleneck}: BatchNorm would see one value per channel; use data.batch_size >= 2 "
            f"or data.image_size >= {2 * ENCODER_STRIDE}"
        )
    steps = n_train // batch_size  # drop_last: every step sees a full batch
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    total = steps * cfg.optim.epochs
    if total > MAX_TOTAL_STEPS:
        raise ConfigError(f"optim.epochs: {cfg.optim.epochs} epochs x {steps} steps = {total} steps; at most {MAX_TOTAL_STEPS}")
    return BatchPlan(batch_size, steps, total)


def check_class_weights(weights: Any, names: list[str], source: str) -> list[float]:
    """One finite weight >= 0 per class, not all 0; `source` names where they came from (a key, or a file)."""
    if not isinstance(weights, (list, tuple)) or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        raise ConfigError(f"{source}: class weights must be a list of numbers, got {weights!r}")
    if len(weights) != len(names):
        raise ConfigError(f"{source}: expected {len(names)} weights (one per class: {', '.join(names)}), got {len(weights)}")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(f"{source}: class weights must be finite numbers >= 0, not all 0, got {list(weights)}")
    return [float(w) for w in weights]
