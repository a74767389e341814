"""The recipe's training options end to end: training on all of trainval with a fixed schedule, and EMA weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seg_pet.checkpoint import load_checkpoint
from seg_pet.cli import main
from tests.conftest import set_args, tiny_overrides

EPOCHS = 3


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("syn")


def train(tmp_path: Path, data_root: Path, name: str, **extra) -> Path:
    config = tmp_path / "empty.yaml"
    config.write_text("")
    sets = {"data.synthetic_images": 16, "data.batch_size": 4, "train.max_steps_per_epoch": 2, "optim.epochs": EPOCHS, **extra}
    assert (
        main(["train", "--config", str(config), *set_args(tiny_overrides(tmp_path / "out", name, real=False, data_root=data_root, **sets))])
        == 0
    )
    return tmp_path / "out" / name


def test_all_of_trainval_trains_on_every_image_and_tests_the_last_epoch(tmp_path, data_root, capsys):
    run = train(tmp_path, data_root, "all", **{"data.val_fraction": 0, "train.select": "last", "train.overlays": 2})
    out = capsys.readouterr().out
    assert "(no validation split)" in out and " 0 val images" in out
    trainval = len((data_root / "oxford-iiit-pet" / "annotations" / "trainval.txt").read_text().splitlines())
    assert f"run {run}: {trainval} train / 0 val images" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_miou"] for r in rows] == [None] * EPOCHS  # NaN, written as null: nothing was validated
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == EPOCHS
    assert json.loads((run / "test_metrics.json").read_text())["checkpoint_epoch"] == EPOCHS
    assert not (run / "overlays").exists()  # overlays are of validation images: there are none

    assert main(["evaluate", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no validation split" in err and "--split test" in err


def test_select_last_tests_the_final_epoch_with_a_validation_split(tmp_path, data_root):
    run = train(tmp_path, data_root, "last", **{"train.select": "last", "train.overlays": 0})
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == EPOCHS
    assert load_checkpoint(run / "checkpoints" / "last.pt")["best_epoch"] == EPOCHS


def test_ema_weights_are_the_ones_validated_saved_and_tested(tmp_path, data_root, capsys):
    run = train(tmp_path, data_root, "ema", **{"train.ema": 0.5, "train.overlays": 0, "train.select": "last"})
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["ema_updates"] == EPOCHS * 2
    differs = [k for k, v in last["model"].items() if v.is_floating_point() and not torch.equal(v, last["train_weights"][k])]
    assert differs, "the averaged weights equal the trained ones"
    # What `evaluate` scores (checkpoint "model") is exactly what training validated in the last epoch.
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    report = tmp_path / "val.json"
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--checkpoint", "last", "--out", str(report)]) == 0
    assert json.loads(report.read_text())["miou"] == pytest.approx(logged["val_miou"], abs=1e-6)
