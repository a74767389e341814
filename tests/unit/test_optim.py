"""Learning-rate schedules with warmup, and the rule that picks the tested epoch (train.select)."""

from __future__ import annotations

import math

import pytest
import torch

from seg_pet.training.optim import build_scheduler
from seg_pet.training.records import EpochRecord
from seg_pet.training.state import Progress


def lrs(name: str, total: int, warmup: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(name, optimizer, total, warmup)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return seen


def test_warmup_rises_linearly_then_the_schedule_spans_the_rest() -> None:
    seen = lrs("cosine", total=10, warmup=4)
    assert seen[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    rest = [0.5 * (1 + math.cos(math.pi * i / 6)) for i in range(6)]  # cosine over the 6 steps after warmup
    assert seen[4:] == pytest.approx(rest)


def test_warmup_without_a_schedule_holds_the_peak() -> None:
    assert lrs("none", total=5, warmup=2) == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0])
    assert lrs("none", total=3, warmup=0) == [1.0, 1.0, 1.0]  # no scheduler at all


def test_no_warmup_keeps_the_plain_schedule() -> None:
    assert lrs("poly", total=4, warmup=0) == pytest.approx([(1 - i / 4) ** 0.9 for i in range(4)])


def record(epoch: int, miou: float) -> EpochRecord:
    nan = math.nan
    return EpochRecord(
        epoch=epoch,
        train_loss=1.0,
        val_loss=nan,
        val_miou=miou,
        val_iou={},
        val_pixel_acc=nan,
        pred_share={},
        grad_norm_mean=nan,
        grad_norm_max=nan,
        lr=0.1,
        seconds=0.0,
    )


def selected(select: str, mious: list[float]) -> list[bool]:
    progress = Progress()
    return [progress.add(record(i + 1, miou), select) for i, miou in enumerate(mious)]


def test_select_best_val_needs_a_better_number_and_last_takes_every_epoch() -> None:
    assert selected("best_val", [0.5, 0.6, 0.6, 0.4, 0.7]) == [True, True, False, False, True]
    assert selected("best_val", [math.nan, 0.1]) == [False, True]  # no validation number: never "best"
    assert selected("last", [0.9, 0.1, math.nan]) == [True, True, True]
    progress = Progress()
    for i, miou in enumerate([0.5, 0.7, 0.6]):
        progress.add(record(i + 1, miou), "best_val")
    assert (progress.best_epoch, progress.best_miou, [r["epoch"] for r in progress.rows]) == (2, 0.7, [1, 2, 3])
