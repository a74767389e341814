"""TensorBoard logging read back with tensorboard's EventAccumulator (a resumed stream has no duplicate
steps), the missing-package message, and the early-stopping counter (decisions, checkpoint round trip)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from PIL import Image

from seg_pet.runtime.errors import SegPetError
from seg_pet.training import tensorboard as tb
from seg_pet.training.early_stop import EarlyStop

HAS_TB = importlib.util.find_spec("tensorboard") is not None


def row(epoch: int, miou: float, warnings=()) -> dict:
    return {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "val_loss": 2.0 / epoch,
        "val_miou": miou,
        "val_iou": {"pet": miou, "background": None},
        "val_pixel_acc": 0.9,
        "val_boundary_iou": {"pet": miou / 2},
        "val_mboundary_iou": miou / 2,
        "grad_norm_mean": 1.0,
        "grad_norm_max": 2.0,
        "lr": 1e-3,
        "warnings": list(warnings),
    }


def read(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.skipif(not HAS_TB, reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
def test_events_read_back_and_a_resumed_stream_has_no_duplicate_steps(tmp_path):
    panel = tmp_path / "img1_panel.png"
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(panel)
    log = tb.TensorBoardLog(tmp_path)
    for epoch in (1, 2, 3):  # epoch 3 was logged, but the process died before its checkpoint
        log.epoch(row(epoch, 0.1 * epoch, warnings=["collapse: x"] if epoch == 2 else []), [panel])
    log.close()
    resumed = tb.TensorBoardLog(tmp_path, start_epoch=3)  # last.pt holds epoch 2
    resumed.epoch(row(3, 0.9), [panel])
    resumed.test({"miou": 0.5, "mboundary_iou": 0.25}, {"optim": {"lr": 0.001, "name": "adamw"}, "train": {"ema": None}}, panel, 0.9, 3)
    resumed.close()
    acc = read(tmp_path / tb.FOLDER)
    tags = acc.Tags()
    miou = acc.Scalars("val/miou")
    assert [e.step for e in miou] == [1, 2, 3]
    assert miou[-1].value == pytest.approx(0.9)  # the resumed process's epoch 3, not the lost one
    for tag in ("loss/train", "loss/val", "lr", "grad_norm/mean", "val_iou/pet", "val_boundary_iou/pet", "val/mboundary_iou"):
        assert tag in tags["scalars"], tag
    assert "val_iou/background" not in tags["scalars"]  # NaN/None is not logged
    assert [e.step for e in acc.Images("panels/img1_panel")] == [1, 2, 3]
    assert "test/confusion" in tags["images"]
    assert any("warnings" in t for t in tags["tensors"])
    hp = read(tmp_path / tb.FOLDER / ".")
    assert "hparam/test_miou" in hp.Tags()["scalars"]


def test_missing_tensorboard_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setattr(tb.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SegPetError, match=r'pip install -e "\.\[tensorboard\]"'):
        tb.require_tensorboard(True)
    tb.require_tensorboard(False)  # off: nothing needed


def test_early_stop_counts_epochs_without_improvement_beyond_min_delta():
    stop = EarlyStop(patience=2, min_delta=0.01)
    decisions = [stop.update(m) for m in (0.50, 0.505, 0.52, 0.525, 0.529)]
    # 0.505 is not > 0.50 + 0.01 (1 bad); 0.52 improves (reset); 0.525 bad (1); 0.529 bad (2): stop
    assert decisions == [False, False, False, False, True]
    assert stop.best == 0.52 and stop.stopped
    assert EarlyStop(patience=None).update(0.1) is False
    assert EarlyStop(patience=1).update(math.nan) is True  # NaN never improves


def test_early_stop_state_round_trips_through_a_checkpoint():
    stop = EarlyStop(patience=3)
    for m in (0.4, 0.3):
        stop.update(m)
    again = EarlyStop(patience=3)
    again.load(stop.state())
    assert (again.best, again.bad_epochs) == (0.4, 1)
    assert [again.update(m) for m in (0.3, 0.3)] == [False, True]
    fresh = EarlyStop(patience=3)
    fresh.load(None)  # a checkpoint from before early stopping existed
    assert fresh.best == -math.inf and fresh.bad_epochs == 0
