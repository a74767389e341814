"""Test-time augmentation (TTA): the logits of one batch, averaged over flipped and rescaled copies.

The one implementation, used by evaluation (`eval.tta`, so `evaluate` and the end-of-training test)
and by prediction (`predict --tta`, `Predictor(tta=...)`):

    none           one pass: model(images)
    hflip          mean of model(images) and model(flip(images)) flipped back (2 passes)
    hflip+scales   hflip at scales 0.75, 1.0 and 1.25 of the input size (6 passes): each copy is
                   resized bilinearly (antialiased when shrinking), its logits resized back to the
                   input size (bilinear, align_corners=False) before averaging. Scaled sizes are
                   rounded to a multiple of 32 (the U-Net downsamples 5 times), at least 32, so at
                   small inputs scales can coincide (at 32 px all three are 32 px).

Logits are averaged (not probabilities), in float32. Per-epoch validation during training (model
selection) always runs without TTA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seg_pet.config import EvalConfig, allowed

TTA_MODES = allowed(EvalConfig, "tta")
TTA_SCALES = (0.75, 1.0, 1.25)
SIZE_MULTIPLE = 32


def scaled_size(size: int, scale: float) -> int:
    """`size * scale` rounded to the nearest multiple of 32, at least 32."""
    return max(SIZE_MULTIPLE, int(round(size * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def tta_passes(mode: str) -> int:
    """How many forward passes a batch costs under `mode`."""
    return {"none": 1, "hflip": 2, "hflip+scales": 2 * len(TTA_SCALES)}[check_mode(mode)]


def check_mode(mode: str) -> str:
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; expected one of {', '.join(TTA_MODES)}")
    return mode


def tta_logits(
    model: nn.Module,
    images: torch.Tensor,
    mode: str = "none",
    autocast: Optional[Callable[[], contextlib.AbstractContextManager]] = None,
) -> torch.Tensor:
    """Float32 logits (B, C, H, W) of normalised images (B, 3, H, W), averaged over the TTA passes.

    `autocast` makes the context each forward pass runs in (e.g. `Runtime.autocast`); none by default.
    With mode "none" this is exactly `model(images).float()` under that context.
    """
    check_mode(mode)
    autocast = autocast or contextlib.nullcontext

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with autocast():
            return model(batch).float()

    if mode == "none":
        return forward(images)
    height, width = images.shape[-2:]
    scales = TTA_SCALES if mode == "hflip+scales" else (1.0,)
    total: Optional[torch.Tensor] = None
    passes = 0
    for scale in scales:
        size = (scaled_size(height, scale), scaled_size(width, scale))
        scaled = images
        if size != (height, width):
            shrink = size[0] < height or size[1] < width
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        for flip in (False, True):
            logits = forward(scaled.flip(-1) if flip else scaled)
            if flip:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
            passes += 1
    assert total is not None
    return total / passes
