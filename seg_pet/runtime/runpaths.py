"""The run folder's layout: every file a run holds, named in one place (`RunPaths`)."""

from __future__ import annotations

import os
from pathlib import Path

from seg_pet.runtime.errors import SegPetError


class RunPaths:
    """The paths of the run folder `root`: `RunPaths(cfg.run_dir).last`, `.metrics_jsonl`, ..."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.metrics_jsonl = self.root / "metrics.jsonl"
        self.metrics_csv = self.root / "metrics.csv"
        self.class_weights = self.root / "class_weights.json"
        self.test_metrics = self.root / "test_metrics.json"
        self.test_confusion = self.root / "test_confusion.csv"
        self.test_log = self.root / "test_evaluations.jsonl"
        self.plots = self.root / "plots"
        self.curves = self.plots / "curves.png"
        self.test_confusion_plot = self.plots / "test_confusion.png"
        self.overlays = self.root / "overlays"
        self.cache = self.root / "cache"
        self.tensorboard = self.root / "tensorboard"

    def checkpoint(self, which: str) -> Path:
        """`best` or `last`: the run's own checkpoint file."""
        return {"best": self.best, "last": self.last}[which]

    def epoch_overlays(self, epoch: int) -> Path:
        return self.overlays / f"epoch_{epoch:03d}"

    def is_run_folder(self) -> bool:
        return self.config.is_file() and self.checkpoints.is_dir()

    def require_config(self, what: str, then: str = "") -> RunPaths:
        """Refuse a folder without config.yaml: `WHAT ROOT: not a seg_pet run folder (no config.yaml)[THEN]`."""
        if not self.config.is_file():
            raise SegPetError(f"{what} {self.root}: not a seg_pet run folder (no config.yaml){then}")
        return self


# The names a run folder owns at its top level (user-chosen outputs never replace or enter them).
RUN_ENTRIES = tuple(dict.fromkeys(path.parts[0] for path in vars(RunPaths("")).values() if path.parts))
