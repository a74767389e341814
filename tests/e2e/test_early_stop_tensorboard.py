"""train.early_stop and train.tensorboard wired into `train`, on tiny synthetic runs: an early stop
ends training after the saved epoch and still tests best.pt (and a resume of it trains no more);
the event stream read back with EventAccumulator has one step per epoch, also across a resume."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from seg_pet.cli import main
from seg_pet.training import tensorboard as tb
from tests.conftest import set_args, tiny_overrides

pytestmark = pytest.mark.slow
HAS_TB = importlib.util.find_spec("tensorboard") is not None


def train_args(tmp_path, name: str, **extra) -> list[str]:
    sets = {"data.synthetic_images": 12, "train.overlays": 1, "train.max_steps_per_epoch": 1, **extra}
    config = tmp_path / "empty.yaml"
    config.write_text("")
    return [
        "train",
        "--config",
        str(config),
        *set_args(tiny_overrides(tmp_path / "out", name, real=False, data_root=tmp_path / "synthetic", **sets)),
    ]


def epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_early_stop_ends_training_tests_best_and_a_resume_trains_no_more(tmp_path, capsys):
    # min_delta above any possible mIoU gain: epoch 1 sets the best (from -inf), epoch 2 cannot improve
    argv = train_args(tmp_path, "es", **{"optim.epochs": 5, "train.early_stop": 1, "train.early_stop_min_delta": 2.0})
    assert main(argv) == 0
    run = tmp_path / "out" / "es"
    assert "early stop after epoch 2" in capsys.readouterr().out
    assert epochs(run) == [1, 2]
    assert json.loads((run / "test_metrics.json").read_text())["split"] == "test"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["early_stop"]["bad_epochs"] == 1
    assert main(["train", "--resume", str(run)]) == 0
    assert epochs(run) == [1, 2]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_early_stop_is_refused_without_a_validation_split(tmp_path, capsys):
    argv = train_args(tmp_path, "nv", **{"train.early_stop": 2, "data.val_fraction": 0, "train.select": "last"})
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.early_stop:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "nv").exists()


def test_missing_tensorboard_refuses_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tb.importlib.util, "find_spec", lambda name: None)
    assert main(train_args(tmp_path, "tb", **{"train.tensorboard": "true"})) == 2
    err = capsys.readouterr().err
    assert tb.INSTALL in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "tb").exists()


def val_miou_steps(run) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars("val/miou")]


@pytest.mark.skipif(not HAS_TB, reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
def test_tensorboard_events_one_step_per_epoch_across_a_resume(tmp_path):
    assert main(train_args(tmp_path, "tb2", **{"train.tensorboard": "true"})) == 0
    assert val_miou_steps(tmp_path / "out" / "tb2") == [1, 2]
    argv = train_args(tmp_path, "tb3", **{"train.tensorboard": "true", "optim.epochs": 3})
    assert main(argv + ["--stop-after-epoch", "2"]) == 0
    run = tmp_path / "out" / "tb3"
    assert val_miou_steps(run) == [1, 2]
    saved = (run / "checkpoints" / "last.pt").read_bytes()
    assert main(["train", "--resume", str(run)]) == 0
    assert val_miou_steps(run) == [1, 2, 3]
    # a process killed after logging epoch 3 but before its checkpoint: the resume drops that step and logs it again
    (run / "checkpoints" / "last.pt").write_bytes(saved)
    (run / "test_metrics.json").unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert val_miou_steps(run) == [1, 2, 3]
