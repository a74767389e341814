"""Class weights from the training split's pixel counts (`loss.class_weights`)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from seg_pet.config import LossConfig, builders_for
from seg_pet.config.schema import CLASS_WEIGHT_SCHEMES
from seg_pet.runtime.errors import DataError


def needs_class_weights(cfg: LossConfig) -> bool:
    """True when the loss uses weights computed from training-set pixel counts (a scheme name)."""
    return isinstance(cfg.get("class_weights"), str)


def _inverse(counts: list[int], total: int) -> list[float]:
    return [total / n if n > 0 else 0.0 for n in counts]


def _sqrt_inverse(counts: list[int], total: int) -> list[float]:
    return [math.sqrt(total / n) if n > 0 else 0.0 for n in counts]


def _median(counts: list[int], total: int) -> list[float]:
    freqs = [n / total for n in counts]
    median = statistics.median(f for f in freqs if f > 0)
    return [median / f if f > 0 else 0.0 for f in freqs]


SCHEMES = builders_for(CLASS_WEIGHT_SCHEMES, {"inverse": _inverse, "median": _median, "sqrt_inverse": _sqrt_inverse})


def compute_class_weights(scheme: Any, pixel_counts: list[int]) -> list[float]:
    """Per-class weights from per-class pixel counts (ignored pixels not counted).

    inverse:       w_c = total / count_c
    sqrt_inverse:  w_c = sqrt(total / count_c)
    median:        w_c = median(freq) / freq_c, freq_c = count_c / total, median over the
                   classes that have pixels (an absent class would drag the median to 0)
    explicit list: returned as floats.

    Weights are not normalised: torch CE (mean reduction) divides by the summed weight of
    the target pixels and smp focal by the summed weights, so the scale cancels.
    A class with 0 pixels gets weight 0 rather than inf: CE looks a weight up by the
    target class, so a class no pixel belongs to is never weighted anyway, and an inf
    would turn that normalisation into NaN.
    """
    if not isinstance(scheme, str):
        return [float(w) for w in scheme]
    total = sum(pixel_counts)
    if total <= 0:
        raise DataError("cannot compute class weights: the training split has no labelled pixels")
    return SCHEMES[scheme](pixel_counts, total)
