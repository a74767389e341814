"""Checkpoints: what a run saves, how it is written (atomically) and how it is read back (safely).

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
`torch.load(weights_only=True)`: a file that would need arbitrary unpickling (and could run
code) is refused. Writes go to a temporary file and `os.replace`, so a process killed at any
instant leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from seg_pet.runtime.errors import CheckpointError
from seg_pet.runtime.fileio import atomic_path

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "model", "config", "epoch", "class_names")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (must include REQUIRED_KEYS) atomically."""
    state = {"format": FORMAT_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a seg_pet checkpoint with weights_only=True; every failure is a one-line CheckpointError.

    weights_only=True means torch's restricted unpickler: tensors, numbers, strings, lists,
    dicts. A pickle that names any other Python global (a class with __reduce__, os.system...)
    is refused before anything in it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path} is empty (a checkpoint whose write never finished?)")
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip format, or a legacy pickle
        raise CheckpointError(f"{path} is not a checkpoint (not a file written by torch.save)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": stderr stays one line
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals it does not know: a pickle that could run code lands here.
        text = str(exc)
        if "weights_only" in text or "global" in text.lower():
            culprit = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({culprit.group(1)})" if culprit else ""
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects{what}, not only tensors; "
                "seg_pet loads checkpoints with torch.load(weights_only=True) and never runs code from them"
            ) from None
        raise CheckpointError(f"{path} is not a checkpoint (cannot unpickle: {_first_sentence(exc)})") from None
    except Exception as exc:  # truncated zip, empty file, text file...: torch raises many types
        raise CheckpointError(f"{path} is truncated or not a checkpoint ({_first_sentence(exc)})") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"{path} is not a seg_pet checkpoint (missing {', '.join(missing)})")
    if not isinstance(state["format"], int) or state["format"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['format']!r}; this seg_pet reads format {FORMAT_VERSION} or older (upgrade seg_pet)")
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
