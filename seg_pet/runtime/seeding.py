"""Seeds and random-generator state: what makes a run, and a resumed run, repeat exactly."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle and augmentation: a resumed run replays it from (seed, epoch) alone."""
    return seed * 100_003 + epoch


def process_seed(seed: int, rank: int) -> int:
    """The seed of process `rank`'s random augmentations: `seed` itself on rank 0, so one process is unchanged.

    Under torchrun every process shuffles with the same seed (they cut one order into shards), but
    their crops, flips and jitter must not repeat rank 0's: each other rank gets a seed of its own.
    """
    return seed if rank == 0 else (seed + rank * 0x9E3779B97F4A7C15) % 2**63


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA generator states, as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
