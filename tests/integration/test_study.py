"""Loss study: the toy data, config errors, every loss's gradient norm, seeds and summaries, interrupts, a miniature grid end to end."""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from seg_pet.cli import main
from seg_pet.runtime.errors import ConfigError
from seg_pet.study.config import BACKGROUND_ID, FOREGROUND_ID, StudyModelConfig, load_study_config, study_optimizer
from seg_pet.study.losses import CLASSIC_LOSSES, build_losses
from seg_pet.study.run import run_study, runs_columns, steps_columns
from seg_pet.study.tasks import build_study_model, make_noise_batch, toy_task
from seg_pet.study.train import train_run
from tests.conftest import REPO, SHARED_DATA, requires_pet, set_args

CLASSES = ["foreground", "background"]
CLASSIC = list(CLASSIC_LOSSES)
PNGS = ("loss_curves.png", "grad_norm_curves.png", "outcome_heatmap.png", "all_losses_bn_adam.png")


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def mini(tmp_path: Path, name: str = "mini", **extra) -> list[str]:
    """Two runs (ce and dice; BN on; Adam) of 6 steps on 16 px noise, every step logged: seconds on a CPU."""
    sets = {
        "study.output_dir": str(tmp_path),
        "study.name": name,
        "study.device": "cpu",
        "study.seeds": "[0]",
        "study.log_every": 1,
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


def quiet(*args, **kwargs):
    return run_study(*args, progress=False, log=lambda _: None, **kwargs)


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


def test_every_run_of_a_seed_sees_the_same_batches():
    cfg = load_study_config(REPO / "configs" / "study.yaml", ["optim.steps=5"])
    cpu = torch.device("cpu")
    a, b = toy_task(cfg, 0.05, 0, cpu), toy_task(cfg, 0.05, 0, cpu)
    assert torch.equal(a.batch(3)[0], b.batch(3)[0]) and torch.equal(a.eval_y, b.eval_y)
    assert not torch.equal(a.batch(3)[0], a.batch(4)[0])
    assert abs(a.pixel_counts[0] / sum(a.pixel_counts) - 0.05) < 0.01
    other = toy_task(cfg, 0.05, 1, cpu)  # another seed: another stream and another held-out set
    assert not torch.equal(a.batch(3)[0], other.batch(3)[0]) and not torch.equal(a.eval_x, other.eval_x)


# --------------------------------------------------------------------------- config


def test_shipped_configs_load():
    toy = load_study_config(REPO / "configs" / "study.yaml")
    pet = load_study_config(REPO / "configs" / "study_pet.yaml")
    classic = load_study_config(REPO / "configs" / "study_classic.yaml")
    assert toy.data.source == "toy" and toy.data.fg_ratios == [0.05, 0.5, 0.95] and toy.study.losses == "project"
    assert toy.grid.losses == ["ce", "dice", "dice_sq", "dice_fg", "dice_fg_sq"]
    assert "sgd" in toy.grid.optimizers and "sgd_momentum" in toy.grid.optimizers  # plain SGD beside SGD with momentum
    assert pet.data.source == "pet" and pet.model.arch == "unet"
    assert pet.grid.losses == ["ce", "wce", "dice", "dice_fg", "ce_dice"]
    assert classic.study.losses == "classic" and classic.grid.losses == CLASSIC and classic.study.seeds == [0, 1, 2]
    assert classic.data.fg_ratios == [0.05, 0.5, 0.95] and classic.grid.batch_norm == [False, True]
    assert classic.grid.optimizers == ["adam", "sgd"]  # the original's: Adam and plain SGD


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["grid.loses=[ce]"], "unknown key grid.loses; did you mean 'losses'?"),
        (["grid.losses=[ce, dcie]"], "grid.losses: unknown value 'dcie'"),
        (["grid.losses=[]"], "grid.losses: must list at least one"),
        (["study.losses=classic"], "grid.losses: unknown value 'ce'; did you mean 'cce'?"),  # the project's names
        (["study.losses=keras"], "study.losses: must be one of classic, project"),
        (["grid.optimizers=[adam, adam]"], "grid.optimizers: lists a value twice"),
        (["grid.optimizers=[sgdm]"], "grid.optimizers: unknown value 'sgdm'"),
        (["data.fg_ratios=[0.5, 1.0]"], "data.fg_ratios: must list 1 to 64 ratios between 0 and 1"),
        (["data.source=pet"], "data.fg_ratios applies only to data.source: toy"),
        (["model.encoder=resnet18"], "model.encoder applies only to model.arch: unet"),
        (["optim.steps=0"], "optim.steps: must be >= 1"),
        (["study.seeds=[]"], "study.seeds: must list 1 to 64 seeds"),
        (["study.seeds=[0, 0]"], "study.seeds: must list 1 to 64 seeds, each >= 0 and none twice"),
        (["study.seeds=0"], "study.seeds: expected list of int"),
        (["study.seed=1"], "unknown key study.seed; did you mean 'seeds'?"),
        (["study.log_every=0"], "study.log_every: must be >= 1"),
        (["study.converged_acc_gap=1"], "study.converged_acc_gap: must be > 0 and < 1"),
        (["studdy.name=x"], "unknown study config section 'studdy'"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_study_config(REPO / "configs" / "study.yaml", overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- one run


def grad_norm_by_hand(model: torch.nn.Module, loss: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.zero_grad()
    loss(model(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()


@pytest.mark.parametrize("batch_norm", [False, True])
def test_every_loss_value_and_gradient_norm_is_logged_on_the_same_batch(batch_norm):
    cfg = load_study_config(None, mini(Path("unused"), **{"study.losses": "classic", "grid.losses": f"[{', '.join(CLASSIC)}]"}))
    cpu = torch.device("cpu")
    task = toy_task(cfg, 0.2, 0, cpu)
    losses = build_losses("classic", CLASSIC, CLASSES, task.pixel_counts, cpu)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_study_model(cfg.model, 1, 2, batch_norm)

    model = fresh()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # plain SGD: the update is -0.5 * the applied gradient
    rows, ended = train_run(model, optimizer, task, "dice", losses, steps=1, log_every=1)
    assert ended == "done" and len(rows) == 1
    x, y = task.batch(0)
    for name, fn in losses.items():
        reference = fresh()
        assert rows[0][f"grad_norm_{name}"] == pytest.approx(grad_norm_by_hand(reference, fn, x, y), rel=1e-5), name
        with torch.no_grad():
            assert rows[0][f"loss_{name}"] == pytest.approx(float(fn(fresh()(x), y)), rel=1e-6), name
    # The losses pull in different directions, and the update applied is the trained loss's gradient only.
    assert len({round(rows[0][f"grad_norm_{n}"], 6) for n in CLASSIC}) == len(CLASSIC)
    reference = fresh()
    grad_norm_by_hand(reference, losses["dice"], x, y)
    for p0, p1, ref in zip(start, model.parameters(), reference.parameters()):
        assert torch.allclose(p1.detach(), p0 - 0.5 * ref.grad, atol=1e-6)


def test_only_logged_steps_are_in_steps_csv(tmp_path):
    out = quiet(None, mini(tmp_path, **{"study.log_every": 4, "optim.steps": 10}))
    _, steps = read_csv(out / "steps.csv")
    assert [s["step"] for s in steps[:4]] == ["1", "4", "8", "10"]  # the first, every 4th, the last


# --------------------------------------------------------------------------- the grid end to end


def test_two_run_study_writes_every_output(tmp_path):
    out = quiet(None, mini(tmp_path))
    assert out == tmp_path / "mini"
    columns, runs = read_csv(out / "runs.csv")
    assert columns == runs_columns(["ce", "dice"], CLASSES)
    assert [r["loss"] for r in runs] == ["ce", "dice"] and len({r["run_id"] for r in runs}) == 2
    for r in runs:
        assert r["diverged"] == "no" and r["steps_done"] == "6" and r["seed"] == "0" and r["task"] == "fg 20%"
        assert float(r["fg_ratio"]) == pytest.approx(0.2)
        assert 0.0 <= float(r["fg_iou"]) <= 1.0 and float(r["loss_ce"]) > 0 and 0.0 <= float(r["loss_dice"]) <= 1.0
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and float(r["base_rate"]) == pytest.approx(0.8, abs=0.03)
        assert r["converged_iou"] == ("yes" if float(r["min_iou"]) >= 0.9 else "no")
        assert r["outcome"] in ("converged", "accurate", "partial", "collapsed")
    columns, steps = read_csv(out / "steps.csv")
    assert columns == steps_columns(["ce", "dice"], CLASSES)
    assert len(steps) == 2 * 6 and [s["step"] for s in steps[:6]] == [str(i) for i in range(1, 7)]
    for s in steps:  # every loss's value and gradient norm, the batch's accuracy, IoUs and foreground share
        assert all(float(s[f"grad_norm_{n}"]) > 0 for n in ("ce", "dice")) and 0 <= float(s["accuracy"]) <= 1
        assert s["iou_foreground"] and s["iou_background"] and 0 <= float(s["pred_fg_share"]) <= 1
    assert steps[0]["loss_ce"] == steps[6]["loss_ce"] and steps[0]["grad_norm_dice"] == steps[6]["grad_norm_dice"]  # same init, batch
    assert steps[1]["loss_ce"] != steps[7]["loss_ce"]  # one update of different losses later
    for name in (*PNGS, "all_losses_bn_adam.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
    _, summary = read_csv(out / "summary.csv")
    assert [(s["loss"], s["seeds"]) for s in summary] == [("ce", "1"), ("dice", "1")]
    # The saved config is the one that ran, and it loads again (keys that do not apply are left out).
    again = load_study_config(out / "study_config.yaml")
    assert again == load_study_config(None, mini(tmp_path))
    assert not list(out.glob(".*partial*"))  # no temp files left behind


def test_seeds_are_repeated_and_summarised_with_the_classic_losses(tmp_path):
    printed: list[str] = []
    sets = mini(tmp_path, "seeds", **{"study.seeds": "[0, 1, 2]", "study.losses": "classic", "grid.losses": "[cce, dicefg]"})
    out = run_study(None, sets, progress=False, log=printed.append)
    _, runs = read_csv(out / "runs.csv")
    assert [(r["seed"], r["loss"]) for r in runs] == [(s, n) for s in "012" for n in ("cce", "dicefg")]
    assert runs[0]["loss_cce"] != runs[2]["loss_cce"]  # the seeds differ
    columns, summary = read_csv(out / "summary.csv")
    assert {
        "converged_accuracy",
        "converged_iou",
        "collapsed",
        "accuracy_median",
        "accuracy_min",
        "accuracy_max",
        "min_iou_median",
        "learned_step_median",
        "never_learned",
    } <= set(columns)
    assert [(s["task"], s["loss"], s["seeds"]) for s in summary] == [("fg 20%", "cce", "3"), ("fg 20%", "dicefg", "3")]
    cce = [r for r in runs if r["loss"] == "cce"]
    assert int(summary[0]["collapsed"]) == sum(r["collapsed"] == "yes" for r in cce)
    accuracies = sorted(float(r["accuracy"]) for r in cce)
    assert float(summary[0]["accuracy_median"]) == pytest.approx(accuracies[1], abs=1e-5)
    assert float(summary[0]["accuracy_min"]) == pytest.approx(accuracies[0], abs=1e-5)
    table = (out / "summary.md").read_text()
    assert "| task | BN, optimiser | loss | acc. rule | IoU rule | collapsed | accuracy |" in table
    assert table.count("| fg 20% | BN, adam |") == 2 and "/3 |" in table
    assert any("| fg 20% | BN, adam | cce |" in line for line in printed)  # the console prints the table
    assert "converged by the accuracy rule" in printed[-1] and "by the IoU rule" in printed[-1]


def test_a_diverging_run_is_recorded_not_fatal(tmp_path):
    # An absurd SGD step overflows the logits: the run stops at the first NaN/Inf and the study goes on.
    sets = mini(tmp_path, "nan", **{"grid.losses": "[ce]", "grid.optimizers": "[sgd]", "optim.sgd_lr": "1e30"})
    out = quiet(None, sets)
    _, runs = read_csv(out / "runs.csv")
    assert runs[0]["diverged"] == "yes" and runs[0]["outcome"] == "diverged" and runs[0]["converged_accuracy"] == "no"
    assert int(runs[0]["steps_done"]) < 6 and runs[0]["fg_iou"] == ""
    for name in PNGS[:3]:
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


@pytest.mark.parametrize("where", ["output_dir", "name", "below"])
def test_an_output_path_that_is_a_file_is_one_line_exit_2(tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    output_dir, name = {"output_dir": (blocker, "study"), "name": (tmp_path, "blocker"), "below": (blocker / "deeper", "study")}[where]
    sets = mini(tmp_path, name, **{"study.output_dir": str(output_dir)})
    assert main(["study", "--config", str(REPO / "configs" / "study.yaml"), *set_args(sets), "--overwrite"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "is a file" in captured.err and "folder" in captured.err and captured.out == ""
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.mark.parametrize(
    "signum, code, after", [(signal.SIGINT, 130, "runs"), (signal.SIGTERM, 143, "runs"), (signal.SIGINT, 130, "start")]
)
def test_an_interrupted_study_writes_runs_summary_and_plots(tmp_path, capsys, signum, code, after):
    # Four runs of 600 steps; the signal arrives once the first run is in runs.csv, or as soon as the folder is set up.
    sets = mini(tmp_path, "stop", **{"optim.steps": 600, "study.log_every": 100, "grid.optimizers": "[adam, sgd]"})
    out = tmp_path / "stop"
    wait_for = out / ("runs.csv" if after == "runs" else "steps.csv")

    def send_signal() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (wait_for.is_file() and (after == "start" or read_csv(wait_for)[1])):
            time.sleep(0.02)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=send_signal, daemon=True)
    thread.start()
    assert main(["study", "--config", str(REPO / "configs" / "study.yaml"), *set_args(sets)]) == code
    thread.join()
    err = capsys.readouterr().err
    assert f"{signal.Signals(signum).name} received after" in err and "of 4 runs" in err
    _, runs = read_csv(out / "runs.csv")
    assert (1 <= len(runs) < 4) if after == "runs" else len(runs) == 0  # the finished runs; the unfinished one is dropped
    _, steps = read_csv(out / "steps.csv")
    assert {s["run_id"] for s in steps} == {r["run_id"] for r in runs}
    _, summary = read_csv(out / "summary.csv")
    assert sum(int(s["seeds"]) for s in summary) == len(runs) and (out / "summary.md").is_file()
    for name in PNGS:
        assert (out / name).is_file()


def test_unet_without_batch_norm_has_none_left():
    cfg = StudyModelConfig(arch="unet", decoder_channels=[16, 8, 8, 8, 8])
    bn = torch.nn.modules.batchnorm._BatchNorm
    assert not any(isinstance(m, bn) for m in build_study_model(cfg, 3, 3, batch_norm=False).modules())
    assert any(isinstance(m, bn) for m in build_study_model(cfg, 3, 3, batch_norm=True).modules())


def test_plain_sgd_has_no_momentum():
    cfg = load_study_config(REPO / "configs" / "study.yaml")
    params = [torch.nn.Parameter(torch.zeros(1))]
    assert study_optimizer("sgd", cfg.optim, params).param_groups[0]["momentum"] == 0
    assert study_optimizer("sgd_momentum", cfg.optim, params).param_groups[0]["momentum"] == cfg.optim.sgd_momentum > 0


@requires_pet
def test_pet_study_runs_on_the_real_slice(tmp_path):
    # The tiny net keeps this fast; the real config uses a U-Net. wce needs pixel counts, border is the focus class.
    sets = mini(
        tmp_path,
        "pet",
        **{"data.source": "pet", "data.root": str(SHARED_DATA), "data.image_size": 32, "grid.losses": "[wce, dice_fg]", "optim.steps": 3},
    )
    sets = [s for s in sets if not s.startswith(("data.fg_ratios", "data.eval_images"))]
    out = quiet(None, sets)
    columns, runs = read_csv(out / "runs.csv")
    assert {"iou_pet", "iou_background", "iou_border", "loss_wce", "loss_dice_fg", "grad_norm_first"} <= set(columns)
    assert len(runs) == 2 and {r["task"] for r in runs} == {"border"}
    share = float(runs[0]["fg_ratio"])  # the border's share of training pixels
    assert 0.05 < share < 0.25
    for name in PNGS:
        assert (out / name).is_file()
