"""Early stopping on validation mIoU (train.early_stop: patience in epochs; train.early_stop_min_delta),
counted by training/state.py `Progress` and saved in its checkpoints.

An epoch improves when its validation mIoU exceeds the best so far by more than min_delta; after
`patience` epochs in a row without improvement training stops and the test runs on best.pt. The
state (best, epochs without improvement) goes into every checkpoint, so `--resume` decides exactly as
the uninterrupted run would. Under torchrun the validation mIoU is all-reduced, so every process
counts the same numbers; the decision is still taken from rank 0's counter so none is left waiting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from seg_pet.runtime.distributed import decided_by_main


@dataclass
class EarlyStop:
    patience: Optional[int]  # None: off
    min_delta: float = 0.0
    best: float = -math.inf
    bad_epochs: int = 0

    @property
    def stopped(self) -> bool:
        """The counter has run out: no further epoch is trained (also after a resume)."""
        return self.patience is not None and self.bad_epochs >= self.patience

    def update(self, miou: float) -> bool:
        """Count one epoch's validation mIoU; True when training stops now (the same answer in every process)."""
        if self.patience is None:
            return False
        if not math.isnan(miou) and miou > self.best + self.min_delta:
            self.best, self.bad_epochs = miou, 0
        else:
            self.bad_epochs += 1
        return bool(decided_by_main(self.stopped))

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load(self, state: Optional[dict[str, Any]]) -> None:
        """A checkpoint's counter; a checkpoint written before early stopping existed (None) starts afresh."""
        if isinstance(state, dict):
            self.best = float(state.get("best", -math.inf))
            self.bad_epochs = int(state.get("bad_epochs", 0))
