"""Checkpoints: what a run saves, how it is written (atomically) and how it is read back (safely).

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
`torch.load(weights_only=True)`: a file that would need arbitrary unpickling (and could run
code) is refused. Writes go to a temporary file and `os.replace`, so a process killed at any
instant leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from seg_pet.errors import CheckpointError
from seg_pet.fileio import atomic_path

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "model", "config", "epoch", "class_names")


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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (must include REQUIRED_KEYS) atomically."""
    state = {"format": FORMAT_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a seg_pet checkpoint with weights_only=True; every failure is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals it does not know: a pickle that could run code lands here.
        detail = str(exc).splitlines()[0] if str(exc) else ""
        if "weights_only" in str(exc) or "global" in str(exc).lower():
            raise CheckpointError(f"refusing to load {path}: it contains Python objects, not only tensors (weights_only=True)") from None
        raise CheckpointError(f"{path} is not a checkpoint (cannot unpickle: {detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"{path} is truncated or not a checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a seg_pet checkpoint (missing {', '.join(k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state)})")
    return state


def load_model_weights(model: nn.Module, state: dict[str, Any], path: str | Path, class_names: list[str], model_cfg: Optional[dict] = None) -> None:
    """Put a checkpoint's weights into `model`, explaining a mismatch in terms of the config."""
    saved_names = list(state["class_names"])
    if saved_names != list(class_names):
        raise CheckpointError(
            f"{path} was trained with {len(saved_names)} classes {saved_names}, the config has {len(class_names)} {list(class_names)} (data.border?)"
        )
    saved_model = state["config"].get("model", {})
    if model_cfg is not None:
        for key in ("arch", "encoder"):
            if saved_model.get(key) != model_cfg.get(key):
                raise CheckpointError(f"{path} holds a {saved_model.get('arch')}/{saved_model.get('encoder')} model, the config asks for model.{key}={model_cfg.get(key)!r}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit the model: {str(exc).splitlines()[0]}") from None
