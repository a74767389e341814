"""What one epoch produced (`EpochRecord`) and where it goes: metrics.jsonl, metrics.csv, the console, curves.png."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from seg_pet.runtime.errors import CheckpointError
from seg_pet.runtime.fileio import atomic_write, to_jsonable
from seg_pet.runtime.runpaths import RunPaths
from seg_pet.viz import plot_curves


@dataclass
class EpochRecord:
    """One epoch's numbers. Stored as a plain dict (`row`) in metrics.jsonl and in checkpoints' history."""

    epoch: int
    train_loss: float
    val_loss: float
    val_miou: float
    val_iou: dict[str, float]
    val_pixel_acc: float
    pred_share: dict[str, float]
    grad_norm_mean: float
    grad_norm_max: float
    lr: float
    seconds: float
    warnings: list[str] = field(default_factory=list)
    # Added later: rows of older checkpoints lack them (check_history checks such a field only where present).
    val_boundary_iou: dict[str, float] = field(default_factory=dict)
    val_mboundary_iou: float = math.nan

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_history(rows: list[Any], epoch: int, path: Path) -> list[dict[str, Any]]:
    """A checkpoint's history: one EpochRecord row for each of epochs 1..epoch, with EpochRecord's types.

    Fields added to EpochRecord after checkpoints were first written (`OPTIONAL_FIELDS`) are checked only
    where a row has them, so an older last.pt still resumes."""
    hints = typing.get_type_hints(EpochRecord)

    def fail(where: str, expected: str, got: Any) -> None:
        raise CheckpointError(f"{path} is not a seg_pet checkpoint (history{where}: expected {expected}, got {got})")

    if len(rows) != epoch:
        fail("", f"{epoch} rows (one per finished epoch)", len(rows))
    for i, row in enumerate(rows):
        for name, hint in hints.items():
            if name in OPTIONAL_FIELDS and isinstance(row, dict) and name not in row:
                continue
            value = row.get(name) if isinstance(row, dict) else None
            expected = typing.get_origin(hint) or hint
            items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
            if expected is float:
                ok = _is_number(value)
            elif expected is dict:
                ok = isinstance(value, dict) and all(v is None or _is_number(v) for v in items)
            elif expected is list:
                ok = isinstance(value, list) and all(isinstance(v, str) for v in items)
            else:
                ok = isinstance(value, expected) and not isinstance(value, bool)
            if not ok:
                fail(f"[{i}].{name}", _EXPECTED.get(expected, expected.__name__), type(value).__name__)
        if row["epoch"] != i + 1:
            fail(f"[{i}].epoch", i + 1, row["epoch"])
    return [dict(row) for row in rows]


OPTIONAL_FIELDS = ("val_boundary_iou", "val_mboundary_iou")
_EXPECTED = {float: "a number", dict: "a mapping of numbers", list: "a list of strings"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_epoch_outputs(run_dir: Path, rows: list[dict[str, Any]], names: list[str], palette: Optional[np.ndarray] = None) -> None:
    """Every per-epoch file, rewritten from the whole history: metrics.jsonl, metrics.csv, plots/curves.png
    (per-class curves in `palette`, the run's class colours)."""
    write_history(run_dir, rows, names)
    plot_curves(rows, names, RunPaths(run_dir).curves, palette)


def write_history(run_dir: Path, rows: list[dict[str, Any]], names: list[str]) -> None:
    """metrics.jsonl (one JSON object per epoch) and metrics.csv (flat columns), rewritten atomically."""
    paths = RunPaths(run_dir)
    with atomic_write(paths.metrics_jsonl) as f:
        for row in rows:
            f.write(json.dumps(to_jsonable(row), allow_nan=False) + "\n")
    flat_keys = ["epoch", "train_loss", "val_loss", "val_miou", "val_pixel_acc", "val_mboundary_iou"]
    flat_keys += [f"val_iou_{n}" for n in names] + [f"pred_share_{n}" for n in names] + [f"val_boundary_iou_{n}" for n in names]
    flat_keys += ["grad_norm_mean", "grad_norm_max", "lr", "seconds", "warnings"]
    with atomic_write(paths.metrics_csv, "w") as f:
        writer = csv.DictWriter(f, fieldnames=flat_keys, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            flat = {k: row.get(k) for k in flat_keys}
            for n in names:
                flat[f"val_iou_{n}"] = row["val_iou"].get(n)
                flat[f"pred_share_{n}"] = row.get("pred_share", {}).get(n)
                flat[f"val_boundary_iou_{n}"] = row.get("val_boundary_iou", {}).get(n)
            flat["warnings"] = " | ".join(row.get("warnings", []))
            writer.writerow(flat)


def console_line(row: dict[str, Any], epochs: int) -> str:
    if math.isnan(row["val_miou"]) and math.isnan(row["val_loss"]):  # data.val_fraction: 0
        return (
            f"epoch {row['epoch']:>3}/{epochs}  train_loss {row['train_loss']:.4f}  (no validation split)  "
            f"lr {row['lr']:.2e}  {row['seconds']:.1f}s"
        )
    ious = " ".join(f"{n} {v:.3f}" if v is not None and not math.isnan(v) else f"{n} n/a" for n, v in row["val_iou"].items())
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
        f"val_mIoU {row['val_miou']:.4f} [{ious}]  acc {row['val_pixel_acc']:.3f}  bIoU {row.get('val_mboundary_iou', math.nan):.3f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
    )
