"""Tests for seg_pet.diagnostics: every doctor check and training monitor fires on a broken case and stays quiet on a healthy one."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seg_pet.doctor.run as diagnostics
import seg_pet.training.epoch as train_module
from seg_pet.checkpoint import load_checkpoint
from seg_pet.cli import main
from seg_pet.config import load_config
from seg_pet.data.sources import build_datasets
from seg_pet.doctor.checks import FAIL, PASS, WARN, check_baseline, check_class_balance, check_images, check_masks, majority_baseline
from seg_pet.doctor.model_checks import check_initial_loss, check_loss_floor, check_output, check_overfit, overfit_batch
from seg_pet.losses import compute_class_weights
from seg_pet.metrics import compute_metrics
from seg_pet.models import build_model
from seg_pet.training.monitors import epoch_warnings
from tests.conftest import SHARED_DATA, requires_pet, set_args, tiny_overrides

NAMES = ["pet", "background", "border"]
C = len(NAMES)


def healthy_targets(n: int = 2, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, C, (n, size, size), generator=g)
    target[:, 0, :] = 255  # a row of ignored pixels, as data.border=ignore would give
    return target


# --------------------------------------------------------------------------- masks


def test_masks_healthy_pass():
    result = check_masks(healthy_targets(), C)
    assert result.status == PASS, result.message
    assert "int64 (2, 8, 8)" in result.message and "{0, 1, 2, 255}" in result.message


def test_masks_left_at_trimap_values_fail_and_say_so():
    raw = healthy_targets().clamp(max=2) + 1  # 1 pet, 2 background, 3 border: never remapped
    result = check_masks(raw, C)
    assert result.status == FAIL
    assert "raw trimap" in result.message and "remap" in result.fix


def test_masks_with_channel_dim_fail():
    result = check_masks(healthy_targets().unsqueeze(1), C)
    assert result.status == FAIL
    assert "(N, 1, H, W)" in result.message and "squeeze(1)" in result.fix


def test_masks_one_hot_fail():
    onehot = F.one_hot(healthy_targets().clamp(max=2), C).permute(0, 3, 1, 2)
    result = check_masks(onehot, C)
    assert result.status == FAIL
    assert "one-hot" in result.message and "argmax(1)" in result.fix


def test_masks_float_scaled_like_an_image_fail():
    scaled = (healthy_targets().clamp(max=2) + 1).float() / 255  # ToTensor on a trimap
    result = check_masks(scaled, C)
    assert result.status == FAIL
    assert "int64" in result.message and "scaled like an image" in result.message


def test_masks_wrong_int_dtype_and_all_ignored_fail():
    assert check_masks(healthy_targets().to(torch.uint8), C).status == FAIL
    assert "dtype uint8" in check_masks(healthy_targets().to(torch.uint8), C).message
    all_ignored = torch.full((2, 8, 8), 255)
    result = check_masks(all_ignored, C)
    assert result.status == FAIL and "every pixel is the ignore index" in result.message


# --------------------------------------------------------------------------- images


def test_images_normalised_pass():
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert check_images(images).status == PASS


def test_images_uint8_unscaled_channels_last_fail_and_0_1_warns():
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 3, 16, 16), generator=g, dtype=torch.uint8)
    assert check_images(pixels).status == FAIL
    unscaled = check_images(pixels.float())
    assert unscaled.status == FAIL and "0..255" in unscaled.message
    channels_last = check_images(pixels.float().div(255).permute(0, 2, 3, 1))
    assert channels_last.status == FAIL and "channels-last" in channels_last.message
    not_normalised = check_images(pixels.float().div(255))
    assert not_normalised.status == WARN and "Normalize" in not_normalised.fix


# --------------------------------------------------------------------------- class balance and baseline


def test_class_balance_reports_shares_ratio_and_every_weight_scheme():
    counts = [300, 600, 100]
    result = check_class_balance(counts, NAMES)
    assert result.status == PASS
    assert "pet 30.0%, background 60.0%, border 10.0%" in result.message
    assert "imbalance 6.0:1 (background : border)" in result.message
    inverse = compute_class_weights("inverse", counts)
    assert any(line.startswith("loss.class_weights: inverse") and f"border {inverse[2]:.3g}" in line for line in result.details)
    assert {line.split()[1] for line in result.details} == {"inverse", "median", "sqrt_inverse"}


def test_class_balance_extreme_warns_and_missing_class_fails():
    assert check_class_balance([100, 5000, 10], NAMES).status == WARN
    missing = check_class_balance([100, 500, 0], NAMES)
    assert missing.status == FAIL and "'border'" in missing.message


def test_majority_baseline_has_high_accuracy_but_low_miou():
    # 60 % background, 30 % pet, 10 % border: all-background scores acc 0.6, IoU (0, 0.6, 0) -> mIoU 0.2.
    target = torch.tensor([[1] * 6 + [0] * 3 + [2]]).reshape(1, 1, 10)
    metrics = majority_baseline([target, target], NAMES.index("background"), NAMES)
    assert metrics["pixel_acc"] == pytest.approx(0.6)
    assert metrics["miou"] == pytest.approx(0.2)
    result = check_baseline(metrics, "background")
    assert result.status == PASS and "pixel acc 0.600 but mIoU 0.200" in result.message
    trap = torch.tensor([[1] * 9 + [0]]).reshape(1, 1, 10)
    assert check_baseline(majority_baseline([trap], 1, NAMES), "background").status == WARN


# --------------------------------------------------------------------------- model and loss wiring


def test_output_logits_pass_softmax_fails_sigmoid_warns():
    logits = torch.randn(2, C, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    assert check_output(logits, C, (8, 8)).status == PASS
    softmaxed = check_output(logits.softmax(1), C, (8, 8))
    assert softmaxed.status == FAIL and "softmax" in softmaxed.message
    assert check_output(logits.sigmoid(), C, (8, 8)).status == WARN
    assert check_output(logits[:, :2], C, (8, 8)).status == FAIL
    assert check_output(logits, C, (16, 16)).status == FAIL


def test_model_ending_in_softmax_is_caught():
    cfg = load_config(None, ["model.encoder=resnet18", "model.encoder_weights=null"])
    torch.manual_seed(0)
    model = nn.Sequential(build_model(cfg.model, C), nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert check_output(out, C, (32, 32)).status == FAIL


def test_initial_loss_near_ln_c_passes_confident_logits_warn():
    target = healthy_targets()
    zero = check_initial_loss(torch.zeros(2, C, 8, 8), target, C)
    assert zero.status == PASS and f"{math.log(3):.4f}" in zero.message
    wrong = F.one_hot((target.clamp(max=2) + 1) % C, C).permute(0, 3, 1, 2).float() * 20  # confidently wrong
    assert check_initial_loss(wrong, target, C).status == WARN


def test_loss_floor_passes_for_ce_and_shows_the_one_hot_pitfall():
    target = healthy_targets()
    result = check_loss_floor(nn.CrossEntropyLoss(ignore_index=255), target, C)
    assert result.status == PASS
    assert "CE 0.5514" in result.message  # log(1 + 2/e), the one-hot target fed as logits (3 classes)


def test_loss_floor_fails_for_a_loss_that_applies_softmax_twice():
    def double_softmax(logits, target):
        return F.cross_entropy(logits.softmax(1), target, ignore_index=255)

    result = check_loss_floor(double_softmax, healthy_targets(), C)
    assert result.status == FAIL and "does not reach the loss minimum" in result.message


def test_loss_floor_accepts_label_smoothing_floor():
    smoothed = nn.CrossEntropyLoss(ignore_index=255, label_smoothing=0.1)
    result = check_loss_floor(smoothed, healthy_targets(), C, label_smoothing=0.1)
    assert result.status == PASS and "floor is above 0 by design" in result.message


# --------------------------------------------------------------------------- overfit one batch


def _real_batch_and_model():
    cfg = load_config(
        None,
        [
            f"data.root={SHARED_DATA}",
            "data.download=false",
            "data.image_size=64",
            "model.encoder=resnet18",
            "model.encoder_weights=null",
            "train.device=cpu",
        ],
    )
    images, targets = overfit_batch(build_datasets(cfg)["train"], size=32, count=4)
    torch.manual_seed(0)
    return images, targets, build_model(cfg.model, C)


@requires_pet
def test_overfit_one_batch_passes_on_real_slice():
    images, targets, model = _real_batch_and_model()
    assert images.shape == (4, 3, 32, 32) and targets.shape == (4, 32, 32)
    result = check_overfit(model, images, targets, nn.CrossEntropyLoss(ignore_index=255), C)
    assert result.status == PASS, result.message


@requires_pet
def test_overfit_one_batch_fails_with_frozen_weights():
    images, targets, model = _real_batch_and_model()
    model.requires_grad_(False)
    result = check_overfit(model, images, targets, nn.CrossEntropyLoss(ignore_index=255), C)
    assert result.status == FAIL and "cannot learn even one batch: wiring bug" in result.message


def test_overfit_fails_for_a_model_that_does_not_learn():
    # Trainable weights, but a softmax output fed to CE: the loss cannot fall by 90 % (floor 0.5514 of ln 3).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, C, 1), nn.Softmax(dim=1))
    images = torch.randn(2, 3, 8, 8)
    result = check_overfit(model, images, healthy_targets(), nn.CrossEntropyLoss(ignore_index=255), C, steps=20, lr=0.1)
    assert result.status == FAIL and "after 20 Adam steps" in result.message


# --------------------------------------------------------------------------- doctor end to end


@requires_pet
def test_doctor_on_real_slice_passes(tmp_path, capsys):
    config = tmp_path / "empty.yaml"
    config.write_text("")
    sets = [
        f"data.root={SHARED_DATA}",
        "data.download=false",
        "data.image_size=64",
        "data.batch_size=8",
        "data.num_workers=0",
        "model.encoder=resnet18",
        "model.encoder_weights=null",
        "train.device=cpu",
    ]
    code = main(["doctor", "--config", str(config), *set_args(sets)])
    out = capsys.readouterr().out
    assert code == 0, out
    for check in ("masks", "images", "class balance", "baseline", "model output", "initial loss", "loss floor", "overfit batch"):
        assert any(line.startswith(f"PASS  {check}") for line in out.splitlines()), f"{check} did not PASS:\n{out}"
    assert "0 FAIL" in out
    assert not any(tmp_path.glob("**/*.pt")) and list(tmp_path.iterdir()) == [config]  # doctor writes nothing by default


def test_doctor_exits_1_for_a_model_ending_in_softmax(tmp_path, capsys, monkeypatch):
    real_build_model = build_model
    monkeypatch.setattr(diagnostics, "build_model", lambda cfg, n: nn.Sequential(real_build_model(cfg, n), nn.Softmax(dim=1)))
    monkeypatch.setattr(diagnostics, "OVERFIT_STEPS", 3)  # it cannot pass; a few steps show that
    config = tmp_path / "empty.yaml"
    config.write_text("")
    sets = tiny_overrides(tmp_path / "out", real=False, **{"data.synthetic_images": 8, "data.batch_size": 4})
    code = main(["doctor", "--config", str(config), *set_args(sets), "--out", str(tmp_path / "doctor")])
    out = capsys.readouterr().out
    assert code == 1
    assert any(line.startswith("FAIL  model output") and "softmax" in line for line in out.splitlines()), out
    assert any(line.startswith("FAIL  overfit batch") for line in out.splitlines()), out
    assert (tmp_path / "doctor" / "class_balance.png").is_file()


# --------------------------------------------------------------------------- training monitors


def val_metrics(matrix: list[list[int]]) -> dict:
    return compute_metrics(torch.tensor(matrix), NAMES)


def row_for(metrics: dict, train_loss: float = 0.5, epoch: int = 1, grad: float = 1.0) -> dict:
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_miou": metrics["miou"],
        "val_iou": metrics["iou"],
        "val_pixel_acc": metrics["pixel_acc"],
        "pred_share": metrics["pred_share"],
        "grad_norm_mean": grad,
    }


HEALTHY = [[280, 15, 5], [20, 570, 10], [15, 15, 70]]  # rows true, cols predicted


def test_monitors_quiet_on_healthy_epoch():
    metrics = val_metrics(HEALTHY)
    history = [row_for(metrics, 1.0), row_for(metrics, 0.6)]
    assert epoch_warnings(row_for(metrics, 0.3, epoch=3), history, metrics, NAMES) == []


def test_monitor_collapse_to_background():
    metrics = val_metrics([[0, 300, 0], [0, 600, 0], [0, 100, 0]])  # everything predicted background
    warnings = epoch_warnings(row_for(metrics), [], metrics, NAMES)
    assert any(w.startswith("collapse: 100.0% of validation pixels are predicted as 'background'") for w in warnings), warnings


def test_monitor_accuracy_trap_names_the_class():
    # 92 % pixel accuracy, but 'border' is never predicted.
    metrics = val_metrics([[290, 10, 0], [10, 630, 0], [30, 30, 0]])
    warnings = epoch_warnings(row_for(metrics), [], metrics, NAMES)
    trap = [w for w in warnings if w.startswith("accuracy trap")]
    assert len(trap) == 1 and "'border'" in trap[0] and "'pet'" not in trap[0]


def test_monitor_ignores_a_class_absent_from_val():
    # No border pixel in val ground truth, a few predicted: IoU 0 by construction, not a dead class.
    metrics = val_metrics([[290, 5, 5], [5, 690, 5], [0, 0, 0]])
    assert epoch_warnings(row_for(metrics), [], metrics, NAMES) == []


def test_monitor_low_train_loss_with_low_val_miou():
    metrics = val_metrics([[100, 150, 50], [150, 300, 150], [30, 40, 30]])  # mIoU about 0.2
    history = [row_for(metrics, 1.0), row_for(metrics, 0.5)]
    warnings = epoch_warnings(row_for(metrics, 0.1, epoch=3), history, metrics, NAMES)
    assert any(w.startswith("train loss fell to 0.1000 (10% of epoch 1)") for w in warnings), warnings
    near_zero = epoch_warnings(row_for(metrics, 0.0), [], metrics, NAMES)  # loss 0 from the start: every pixel ignored?
    assert any("the loss is not measuring the task" in w for w in near_zero), near_zero


def test_monitor_zero_gradients():
    metrics = val_metrics(HEALTHY)
    warnings = epoch_warnings(row_for(metrics, grad=0.0), [], metrics, NAMES)
    assert any(w.startswith("gradients are all zero") for w in warnings), warnings


def test_nan_loss_stops_with_exit_1_and_keeps_best_and_last(tmp_path, capsys, monkeypatch):
    """A loss that turns NaN in epoch 2: exit 1, a clear message, epoch-1 best.pt byte-identical, metrics kept."""
    real_train_one_epoch = train_module.train_one_epoch
    seen = {}

    def poisoned_epoch(model, loader, loss_fn, *args, desc: str = "", **kwargs):
        if desc.startswith("epoch 2/"):
            seen["best"] = (run_dir / "checkpoints" / "best.pt").read_bytes()
            return real_train_one_epoch(model, loader, lambda logits, t: loss_fn(logits, t) * math.nan, *args, desc=desc, **kwargs)
        return real_train_one_epoch(model, loader, loss_fn, *args, desc=desc, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", poisoned_epoch)
    config = tmp_path / "empty.yaml"
    config.write_text("")
    sets = tiny_overrides(
        tmp_path / "out",
        "nan",
        real=False,
        **{
            "data.synthetic_images": 8,
            "data.batch_size": 4,
            "train.max_steps_per_epoch": 1,
            "train.overlays": 0,
            "model.encoder": "mobilenet_v2",
        },
    )
    run_dir = tmp_path / "out" / "nan"
    code = main(["train", "--config", str(config), *set_args(sets)])
    captured = capsys.readouterr()
    assert code == 1
    assert "error: loss is nan at step 1 of epoch 2/2" in captured.err and "training stopped" in captured.err
    assert captured.err.count("\n") == 1  # one line, no traceback
    assert (run_dir / "checkpoints" / "best.pt").read_bytes() == seen["best"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and "pred_share" in rows[0] and "warnings" in rows[0]
    assert not (run_dir / "test_metrics.json").exists()
