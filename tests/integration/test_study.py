"""Loss study: the toy data's class balance, the convergence rule, config errors, and a miniature grid end to end."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from seg_pet.cli import main
from seg_pet.runtime.errors import ConfigError
from seg_pet.study.config import BACKGROUND_ID, FOREGROUND_ID, StudyModelConfig, is_converged, load_study_config, run_outcome
from seg_pet.study.run import run_study, runs_columns, steps_columns
from seg_pet.study.tasks import build_study_model, make_noise_batch, toy_task
from tests.conftest import REPO, SHARED_DATA, requires_pet, set_args

PNGS = ("loss_curves.png", "grad_norm_curves.png", "final_iou_heatmap.png")


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def mini(tmp_path: Path, name: str = "mini", **extra) -> list[str]:
    """Two runs (ce and dice; BN on; Adam) of 6 steps on 16 px noise: seconds on a CPU."""
    sets = {
        "study.output_dir": str(tmp_path),
        "study.name": name,
        "study.device": "cpu",
        "data.fg_ratios": "[0.2]",
        "data.image_size": 16,
        "data.batch_size": 4,
        "data.eval_images": 8,
        "model.channels": 4,
        "model.layers": 2,
        "grid.losses": "[ce, dice]",
        "grid.batch_norm": "[true]",
        "grid.optimizers": "[adam]",
        "optim.steps": 6,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


# --------------------------------------------------------------------------- toy data


@pytest.mark.parametrize("ratio", [0.05, 0.5, 0.95])
def test_noise_batch_has_the_requested_foreground_ratio(ratio):
    x, y = make_noise_batch(16, 32, ratio, torch.Generator().manual_seed(1))
    assert x.shape == (16, 1, 32, 32) and y.shape == (16, 32, 32) and y.dtype == torch.int64
    share = (y == FOREGROUND_ID).float().mean().item()
    assert abs(share - ratio) < 0.01
    # The rule itself: foreground exactly where the pixel value exceeds 1 - ratio.
    assert torch.equal(y == FOREGROUND_ID, x[:, 0] > 1 - ratio)
    assert set(y.unique().tolist()) <= {FOREGROUND_ID, BACKGROUND_ID}


def test_every_run_sees_the_same_batches():
    cfg = load_study_config(REPO / "configs" / "study.yaml", ["optim.steps=5"])
    a, b = toy_task(cfg, 0.05, torch.device("cpu")), toy_task(cfg, 0.05, torch.device("cpu"))
    assert torch.equal(a.batch(3)[0], b.batch(3)[0]) and torch.equal(a.eval_y, b.eval_y)
    assert not torch.equal(a.batch(3)[0], a.batch(4)[0])
    assert abs(a.pixel_counts[0] / sum(a.pixel_counts) - 0.05) < 0.01


# --------------------------------------------------------------------------- convergence rule


@pytest.mark.parametrize(
    "ious, finite, expected",
    [
        ({"foreground": 0.97, "background": 0.99}, True, True),  # solved
        ({"foreground": 0.90, "background": 0.95}, True, True),  # exactly at the threshold
        ({"foreground": 0.89, "background": 0.99}, True, False),  # foreground just short
        ({"foreground": 0.951, "background": 0.0}, True, False),  # 95 % fg, all predicted fg: collapsed
        ({"foreground": 0.0, "background": 0.95}, True, False),  # 5 % fg, all predicted bg: collapsed
        ({"foreground": 0.99, "background": 0.99}, False, False),  # loss went NaN/Inf
        ({"pet": 0.95, "background": 0.97, "border": math.nan}, True, True),  # absent class not scored
        ({"foreground": math.nan, "background": math.nan}, True, False),  # nothing scored
    ],
)
def test_convergence_rule(ious, finite, expected):
    assert is_converged(ious, 0.9, finite) is expected


@pytest.mark.parametrize(
    "ious, finite, expected",
    [
        ({"foreground": 0.97, "background": 0.99}, True, "converged"),
        ({"foreground": 0.83, "background": 0.99}, True, "partial"),
        ({"foreground": 0.951, "background": 0.0}, True, "collapsed"),
        ({"foreground": 0.02, "background": 0.95}, True, "collapsed"),
        ({"foreground": 0.99, "background": 0.99}, False, "diverged"),
    ],
)
def test_run_outcome(ious, finite, expected):
    assert run_outcome(ious, 0.9, finite) == expected


# --------------------------------------------------------------------------- config


def test_shipped_configs_load():
    toy = load_study_config(REPO / "configs" / "study.yaml")
    pet = load_study_config(REPO / "configs" / "study_pet.yaml")
    assert toy.data.source == "toy" and toy.data.fg_ratios == [0.05, 0.5, 0.95]
    assert toy.grid.losses == ["ce", "dice", "dice_sq", "dice_fg", "dice_fg_sq"]
    assert pet.data.source == "pet" and pet.model.arch == "unet"
    assert pet.grid.losses == ["ce", "wce", "dice", "dice_fg", "ce_dice"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["grid.loses=[ce]"], "unknown key grid.loses; did you mean 'losses'?"),
        (["grid.losses=[ce, dcie]"], "grid.losses: unknown value 'dcie'"),
        (["grid.losses=[]"], "grid.losses: must list at least one"),
        (["grid.optimizers=[adam, adam]"], "grid.optimizers: lists a value twice"),
        (["data.fg_ratios=[0.5, 1.0]"], "data.fg_ratios: every ratio must be between 0 and 1"),
        (["data.source=pet"], "data.fg_ratios applies only to data.source: toy"),
        (["model.encoder=resnet18"], "model.encoder applies only to model.arch: unet"),
        (["optim.steps=0"], "optim.steps: must be >= 1"),
        (["studdy.name=x"], "unknown study config section 'studdy'"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_study_config(REPO / "configs" / "study.yaml", overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- the grid end to end


def test_two_run_study_writes_every_output(tmp_path):
    out = run_study(None, mini(tmp_path), progress=False, log=lambda _: None)
    assert out == tmp_path / "mini"
    columns, runs = read_csv(out / "runs.csv")
    assert columns == runs_columns(["ce", "dice"], ["foreground", "background"])
    assert [r["loss"] for r in runs] == ["ce", "dice"] and len({r["run_id"] for r in runs}) == 2
    for r in runs:
        assert r["converged"] in ("yes", "no") and r["diverged"] == "no" and r["steps_done"] == "6"
        assert float(r["fg_ratio"]) == pytest.approx(0.2)
        assert 0.0 <= float(r["fg_iou"]) <= 1.0 and float(r["loss_ce"]) > 0 and 0.0 <= float(r["loss_dice"]) <= 1.0
        assert r["converged"] == ("yes" if float(r["min_iou"]) >= 0.9 else "no")
        assert r["outcome"] in ("converged", "partial", "collapsed")
    columns, steps = read_csv(out / "steps.csv")
    assert columns == steps_columns(["ce", "dice"])
    assert len(steps) == 2 * 6 and [s["step"] for s in steps[:6]] == [str(i) for i in range(1, 7)]
    assert all(float(s["grad_norm"]) > 0 for s in steps)
    # Every loss is recorded, not only the trained one, and the runs differ in what they train.
    assert steps[0]["loss_ce"] == steps[6]["loss_ce"]  # same init, same first batch
    assert steps[1]["loss_ce"] != steps[7]["loss_ce"]  # one update of different losses later
    for name in PNGS:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
    # The saved config is the one that ran, and it loads again (keys that do not apply are left out).
    again = load_study_config(out / "study_config.yaml")
    assert again == load_study_config(None, mini(tmp_path))
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.png"))  # no temp files left behind


def test_a_diverging_run_is_recorded_not_fatal(tmp_path):
    # An absurd SGD step overflows the logits: the run stops at the first NaN/Inf and the study goes on.
    sets = mini(tmp_path, "nan", **{"grid.losses": "[ce]", "grid.optimizers": "[sgd]", "optim.sgd_lr": "1e30"})
    out = run_study(None, sets, progress=False, log=lambda _: None)
    _, runs = read_csv(out / "runs.csv")
    assert runs[0]["diverged"] == "yes" and runs[0]["outcome"] == "diverged" and runs[0]["converged"] == "no"
    assert int(runs[0]["steps_done"]) < 6 and runs[0]["fg_iou"] == ""
    for name in PNGS:
        assert (out / name).is_file()


def test_existing_folder_is_refused_unless_overwrite(tmp_path, capsys):
    args = ["study", "--config", str(REPO / "configs" / "study.yaml"), *set_args(mini(tmp_path, "again", **{"grid.losses": "[ce]"}))]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert main([*args, "--overwrite"]) == 0
    # A folder that is not a study is never deleted.
    (tmp_path / "notastudy").mkdir()
    (tmp_path / "notastudy" / "keep.txt").write_text("x")
    other = ["study", "--config", str(REPO / "configs" / "study.yaml"), *set_args(mini(tmp_path, "notastudy")), "--overwrite"]
    assert main(other) == 2
    assert (tmp_path / "notastudy" / "keep.txt").is_file()


def test_unet_without_batch_norm_has_none_left():
    cfg = StudyModelConfig(arch="unet", decoder_channels=[16, 8, 8, 8, 8])
    bn = torch.nn.modules.batchnorm._BatchNorm
    assert not any(isinstance(m, bn) for m in build_study_model(cfg, 3, 3, batch_norm=False).modules())
    assert any(isinstance(m, bn) for m in build_study_model(cfg, 3, 3, batch_norm=True).modules())


@requires_pet
def test_pet_study_runs_on_the_real_slice(tmp_path):
    # The tiny net keeps this fast; the real config uses a U-Net. wce needs pixel counts, border is the focus class.
    sets = mini(tmp_path, "pet", **{"data.source": "pet", "data.root": str(SHARED_DATA), "data.image_size": 32,
                                     "grid.losses": "[wce, dice_fg]", "optim.steps": 3})
    sets = [s for s in sets if not s.startswith(("data.fg_ratios", "data.eval_images"))]
    out = run_study(None, sets, progress=False, log=lambda _: None)
    columns, runs = read_csv(out / "runs.csv")
    assert {"iou_pet", "iou_background", "iou_border", "loss_wce", "loss_dice_fg"} <= set(columns)
    assert len(runs) == 2
    share = float(runs[0]["fg_ratio"])  # the border's share of training pixels
    assert 0.05 < share < 0.25
    for name in PNGS:
        assert (out / name).is_file()
