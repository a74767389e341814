"""Checkpoints: what a run saves, how it is written (atomically) and how it is read back (safely).

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
`torch.load(weights_only=True)`: a file that would need arbitrary unpickling (and could run
code) is refused. Writes go to a temporary file and `os.replace`, so a process killed at any
instant leaves the previous checkpoint loadable.

Loading checks the dict against a schema (`SCHEMA`, plus `RESUME_SCHEMA` for `--resume`): a
file that loads safely but holds the wrong types (a list where the config should be, a number
for class_names, no RNG state to resume from) is refused with one line,
"PATH is not a seg_pet checkpoint (KEY: expected ..., got ...)", instead of a traceback later.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from seg_pet.runtime.errors import CheckpointError, SegPetError, StorageError
from seg_pet.runtime.fileio import atomic_path
from seg_pet.runtime.paths import check_input

FORMAT_VERSION = 1

# --------------------------------------------------------------------------- schema: key -> (check, what it must be)

Check = tuple[Callable[[Any], bool], str]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _or_none(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_MAPPING: Check = (lambda v: isinstance(v, dict), "a mapping")
SCHEMA: dict[str, Check] = {
    "format": (_is_int, "an integer"),
    "model": (
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items()),
        "a mapping of parameter names to tensors",
    ),
    "config": _MAPPING,
    "epoch": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "class_names": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) for x in v), "a list of strings"),
}
RESUME_SCHEMA: dict[str, Check] = {
    "optimizer": _MAPPING,
    "scheduler": (_or_none(lambda v: isinstance(v, dict)), "a mapping or null"),
    "scaler": (_or_none(lambda v: isinstance(v, dict)), "a mapping or null"),
    "rng": (
        lambda v: isinstance(v, dict) and {"python", "numpy", "torch"} <= v.keys() and isinstance(v["torch"], torch.Tensor),
        "a mapping of python, numpy and torch generator states",
    ),
    "best_miou": (_is_number, "a number"),
    "best_epoch": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "history": (_list_of(lambda row: isinstance(row, dict)), "a list of mappings"),
    "pixel_counts": (_or_none(_list_of(lambda x: _is_int(x) and x >= 0)), "a list of integers >= 0 or null"),
    "class_weights": (_or_none(_list_of(lambda x: _is_number(x) and math.isfinite(x) and x >= 0)), "a list of numbers >= 0 or null"),
}
REQUIRED_KEYS = tuple(SCHEMA)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (must include REQUIRED_KEYS) atomically; a refused write (disk full) is a StorageError."""
    state = {"format": FORMAT_VERSION, **state}
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a full disk as "... file write failed"
            if "write" not in str(exc).lower():
                raise
            raise StorageError(
                f"cannot write {path}: the write failed (no space left on device?); the previous file is "
                "unchanged; free some space, then run the command again"
            ) from None


def check_schema(path: Path, state: Any, resume: bool = False) -> None:
    """`state` against SCHEMA (and RESUME_SCHEMA): one line naming the first key that is missing or wrong."""
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"{path} is not a seg_pet checkpoint (missing {', '.join(missing)})")
    schemas = [SCHEMA, RESUME_SCHEMA] if resume else [SCHEMA]
    for schema in schemas:
        for key, (ok, expected) in schema.items():
            if key not in state:
                raise CheckpointError(f"{path} is not a seg_pet checkpoint (missing {key}, needed to resume)")
            if not ok(state[key]):
                raise CheckpointError(f"{path} is not a seg_pet checkpoint ({key}: expected {expected}, got {_describe(state[key])})")
    for section, values in state["config"].items():
        if not isinstance(values, dict):
            raise CheckpointError(f"{path} is not a seg_pet checkpoint (config.{section}: expected a mapping, got {_describe(values)})")


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)) and value and not all(isinstance(x, type(value[0])) for x in value):
        return f"{type(value).__name__} of mixed types"
    return type(value).__name__


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def load_checkpoint(path: str | Path, resume: bool = False) -> dict[str, Any]:
    """Read a seg_pet checkpoint with weights_only=True; every failure is a one-line CheckpointError.

    `resume`: the checkpoint must also hold what `--resume` restores (optimiser, RNG, history...).

    weights_only=True means torch's restricted unpickler: tensors, numbers, strings, lists,
    dicts. A pickle that names any other Python global (a class with __reduce__, os.system...)
    is refused before anything in it runs.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        check_input(path, "checkpoint", "file")  # a folder in its place, an unreadable file
    except SegPetError as exc:
        raise CheckpointError(str(exc)) from None
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
    check_schema(path, state, resume)
    if state["format"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']!r}; this seg_pet reads format {FORMAT_VERSION} or older (upgrade seg_pet)"
        )
    return state


def load_model_weights(
    model: nn.Module, state: dict[str, Any], path: str | Path, class_names: list[str], model_cfg: Optional[dict] = None
) -> None:
    """Put a checkpoint's weights into `model`, explaining a mismatch in terms of the config."""
    saved_names = list(state["class_names"])
    if saved_names != list(class_names):
        raise CheckpointError(
            f"{path} was trained with {len(saved_names)} classes {saved_names}, the config has {len(class_names)} {list(class_names)} "
            "(data.border? data.classes?)"
        )
    saved_model = state["config"].get("model", {})
    if model_cfg is not None:
        for key in ("arch", "encoder"):
            if saved_model.get(key) != model_cfg.get(key):
                raise CheckpointError(
                    f"{path} holds a {saved_model.get('arch')}/{saved_model.get('encoder')} model, the config asks for model.{key}={model_cfg.get(key)!r}"
                )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit the model: {str(exc).splitlines()[0]}") from None
