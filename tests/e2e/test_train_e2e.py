"""End to end on the real slice: `train` for 2 epochs, then `evaluate`, asserting on the run folder."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from seg_pet.cli import main
from tests.conftest import REPO, requires_pet, set_args, tiny_overrides

SMOKE = str(REPO / "configs" / "smoke.yaml")

pytestmark = [requires_pet, pytest.mark.slow]


@pytest.fixture(scope="module")
def run_dir(module_tmp):
    out = module_tmp
    code = main(["train", "--config", SMOKE, *set_args(tiny_overrides(out, "e2e"))])
    assert code == 0
    return out / "e2e"


def test_metrics_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr", "seconds", "grad_norm_mean"):
            assert math.isfinite(row[key]), key
        assert set(row["val_iou"]) == {"pet", "background", "border"}
        assert sum(row["pred_share"].values()) == pytest.approx(1.0)
        assert isinstance(row["warnings"], list)
    csv_lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and "val_iou_border" in csv_lines[0]


def test_overlays_and_plots(run_dir):
    for epoch in (1, 2):
        folder = run_dir / "overlays" / f"epoch_{epoch:03d}"
        assert len(list(folder.glob("*_overlay.png"))) == 2
        assert len(list(folder.glob("*_panel.png"))) == 2
    assert (run_dir / "plots" / "curves.png").stat().st_size > 1000
    assert (run_dir / "plots" / "test_confusion.png").stat().st_size > 1000


def test_checkpoints_load_with_weights_only(run_dir):
    for name in ("best", "last"):
        state = torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)
        assert state["class_names"] == ["pet", "background", "border"]
        assert state["config"]["data"]["image_size"] == 32
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_resolved_config_written(run_dir):
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["run"]["name"] == "e2e" and saved["model"]["encoder"] == "resnet18" and saved["train"]["max_steps_per_epoch"] == 3


def test_test_split_evaluated_once(run_dir):
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_images"] == 198
    assert metrics["checkpoint_epoch"] in (1, 2)
    assert set(metrics["iou"]) == set(metrics["dice"]) == {"pet", "background", "border"}
    assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["pixel_acc"] <= 1
    matrix = torch.tensor(metrics["confusion"])
    assert matrix.shape == (3, 3) and matrix.sum() > 0
    assert (run_dir / "test_confusion.csv").read_text().startswith("true\\pred,pet,background,border")


def test_evaluate_val_writes_out_and_leaves_test_metrics(run_dir, tmp_path, capsys):
    before = (run_dir / "test_metrics.json").read_bytes()
    out = tmp_path / "val.json"
    assert main(["evaluate", "--run", str(run_dir), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["split"] == "val" and metrics["num_images"] == 20
    assert "mIoU" in capsys.readouterr().out
    assert (run_dir / "test_metrics.json").read_bytes() == before


def test_evaluate_test_refused_without_force(run_dir, capsys):
    assert main(["evaluate", "--run", str(run_dir), "--split", "test"]) == 2
    assert "test set" in capsys.readouterr().err
    before = (run_dir / "test_metrics.json").read_bytes()
    assert main(["evaluate", "--run", str(run_dir), "--split", "test", "--force", "--checkpoint", "last"]) == 0
    assert (run_dir / "test_metrics.json").read_bytes() == before


def test_existing_run_folder_is_refused(run_dir, capsys):
    code = main(["train", "--config", SMOKE, *set_args(tiny_overrides(run_dir.parent, "e2e"))])
    assert code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err


def test_boundary_iou_every_epoch_and_in_test_metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert set(row["val_boundary_iou"]) == {"pet", "background", "border"}
        assert 0 <= row["val_mboundary_iou"] <= 1
    assert "val_boundary_iou_border" in (run_dir / "metrics.csv").read_text().splitlines()[0]
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert set(metrics["boundary_iou"]) == {"pet", "background", "border"} and 0 <= metrics["mboundary_iou"] <= 1


def test_per_image_and_per_group_results_of_the_test(run_dir):
    lines = (run_dir / "per_image.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["image", "breed", "species"] and "iou_border" in header and header[-3:] == ["miou", "pixel_acc", "boundary_iou"]
    assert len(lines) == 1 + 198
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert "per_image" not in metrics
    breeds = metrics["groups"]["breed"]
    assert sum(r["num_images"] for r in breeds) == 198 and len(breeds) == 2
    assert sum(r["num_images"] for r in metrics["groups"]["species"]) == 198
    worst = sorted((run_dir / "worst").glob("*.png"))
    assert len(worst) == 8 and worst[0].name.startswith("01_")
    mious = {line.split(",")[0]: float(line.split(",")[header.index("miou")]) for line in lines[1:]}
    assert mious[worst[0].name[3:-4]] == min(mious.values())  # the first panel is the lowest-mIoU image


def test_evaluate_details_writes_per_image_csv_and_worst_panels(run_dir, tmp_path, capsys):
    details = tmp_path / "details"
    assert main(["evaluate", "--run", str(run_dir), "--details", str(details), "--set", "eval.worst=3"]) == 0
    assert len((details / "per_image.csv").read_text().splitlines()) == 1 + 20
    assert len(list((details / "worst").glob("*.png"))) == 3
    assert "breed" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(run_dir), "--details", str(details)]) == 2  # not empty: refused
    assert "not empty" in capsys.readouterr().err
