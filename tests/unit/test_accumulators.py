"""Tests for the metric accumulators of seg_pet.metrics: boundary IoU against a hand-worked case and a
naive erosion, per-image counts (and their order under torchrun), per-group tables, old history rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import seg_pet.metrics as metrics_mod
from seg_pet.evaluation import per_group, per_image_rows
from seg_pet.metrics import BoundaryIoU, ConfusionMatrix, PerImage, boundary_width, counts_metrics, format_table, inner_boundary
from seg_pet.runtime.errors import CheckpointError
from seg_pet.training.records import EpochRecord, check_history

NAMES = ["background", "pet"]


def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """6x6: the true pet is the square rows 1-4, cols 1-4; the predicted one is shifted right by one (cols 2-5)."""
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[0, 1:5, 1:5] = 1
    pred = torch.zeros(1, 6, 6, dtype=torch.long)
    pred[0, 1:5, 2:6] = 1
    return target, pred


def test_boundary_iou_hand_worked_case() -> None:
    # d = round(0.1 * hypot(6, 6)) = round(0.85) = 1.
    # pet: the true ring has 12 pixels, the predicted ring 12 (its right side lies on the image frame);
    #   they share rows 1 and 4 at cols 2-4: 6 pixels -> 6 / (12 + 12 - 6) = 1/3.
    # background: the true background is the frame (20 pixels, all boundary); the predicted one is
    #   rows 0 and 5 plus cols 0-1 of rows 1-4 (20, all boundary); they share 16 -> 16 / 24 = 2/3.
    target, pred = hand_case()
    assert boundary_width(6, 6, 0.1) == 1
    acc = BoundaryIoU(2, 0.1)
    acc.update(target, pred)
    out = acc.compute(NAMES)
    assert out["boundary_iou"]["pet"] == pytest.approx(1 / 3)
    assert out["boundary_iou"]["background"] == pytest.approx(2 / 3)
    assert out["mboundary_iou"] == pytest.approx(0.5)
    # dataset-level: a second, perfect image adds its counts before dividing (not a mean of per-image values)
    acc.update(target, target)
    assert acc.compute(NAMES)["boundary_iou"]["pet"] == pytest.approx((6 + 12) / (18 + 12))


def naive_inner_boundary(mask: torch.Tensor, d: int) -> torch.Tensor:
    """Pixels of `mask` with a non-mask pixel (or the outside of the image) within chessboard distance d."""
    h, w = mask.shape
    out = torch.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            y0, y1, x0, x1 = y - d, y + d + 1, x - d, x + d + 1
            if y0 < 0 or x0 < 0 or y1 > h or x1 > w or not mask[y0:y1, x0:x1].all():
                out[y, x] = True
    return out


@pytest.mark.parametrize("d", [1, 2, 3])
def test_max_pool_erosion_matches_a_naive_erosion(d: int) -> None:
    g = torch.Generator().manual_seed(d)
    masks = torch.rand(3, 13, 17, generator=g) > 0.3
    got = inner_boundary(masks, d)
    for m, b in zip(masks, got):
        assert torch.equal(b, naive_inner_boundary(m, d))


def test_boundary_ignores_ignored_pixels_and_width_scales_with_the_image() -> None:
    target, pred = hand_case()
    target[0, 0, :] = 255  # ignored: neither counted in the intersection nor in the union
    acc = BoundaryIoU(2, 0.1)
    acc.update(target, pred)
    counts = acc.counts
    assert counts[1].tolist()[0] == 24 - 6  # background union loses the 6 ignored frame pixels
    assert boundary_width(256, 256, 0.02) == 7
    assert boundary_width(8, 8, 0.02) == 1


def test_per_image_counts_and_rows() -> None:
    target, pred = hand_case()
    acc = PerImage(2, 0.1)
    acc.update(torch.cat([target, target]), torch.cat([pred, target]))
    rows = acc.compute(NAMES)["per_image_counts"]
    first = counts_metrics([rows[0]], NAMES)
    assert first["iou"]["pet"] == pytest.approx(12 / 20)
    assert first["iou"]["background"] == pytest.approx(16 / 24)
    assert first["pixel_acc"] == pytest.approx(28 / 36)  # cols 1 and 5 of rows 1-4 are wrong
    assert first["mboundary_iou"] == pytest.approx(0.5)
    assert counts_metrics([rows[1]], NAMES)["miou"] == 1.0
    both = counts_metrics(rows, NAMES)  # summed before dividing
    assert both["iou"]["pet"] == pytest.approx((12 + 16) / (20 + 16))


def test_per_image_sync_puts_each_process_share_back_in_dataset_order(monkeypatch) -> None:
    # Two processes: rank 0 scored images 0, 2, 4 and rank 1 images 1, 3 (runtime.distributed.shard).
    shares = [[[0], [2], [4]], [[1], [3]]]
    monkeypatch.setattr(metrics_mod, "gathered", lambda rows: shares)
    monkeypatch.setattr(metrics_mod, "world_size", lambda: 2)
    acc = PerImage(1, 0.02)
    acc.sync()
    assert acc.rows == [[0], [1], [2], [3], [4]]


class FakeDataset:
    def __init__(self, groups):
        self.groups = groups

    def name(self, idx: int) -> str:
        return f"img{idx}"

    def group(self, idx: int):
        return self.groups[idx]


def test_per_group_tables_are_dataset_level_within_each_group() -> None:
    target, pred = hand_case()
    acc = PerImage(2, 0.1)
    acc.update(torch.cat([target, target, target]), torch.cat([pred, target, target]))
    counts = acc.rows
    ds = FakeDataset([{"breed": "A", "species": "cat"}, {"breed": "B", "species": "cat"}, {"breed": "B", "species": "dog"}])
    table = per_group(ds, counts, NAMES)
    assert [r["breed"] for r in table["breed"]] == ["A", "B"]
    cats = next(r for r in table["species"] if r["species"] == "cat")
    assert cats["num_images"] == 2
    assert cats["iou"]["pet"] == pytest.approx((12 + 16) / (20 + 16))
    assert table["breed"][1]["miou"] == 1.0
    rows = per_image_rows(ds, counts, NAMES)
    assert rows[0]["image"] == "img0" and rows[0]["group"] == {"breed": "A", "species": "cat"}
    assert per_group(FakeDataset([None, None, None]), counts, NAMES) == {}


def test_confusion_matrix_compute_and_table_show_boundary_iou() -> None:
    target, pred = hand_case()
    cm, b = ConfusionMatrix(2), BoundaryIoU(2, 0.1)
    for acc in (cm, b):
        acc.update(target, pred)
    out = {**cm.compute(NAMES), **b.compute(NAMES)}
    assert out["confusion"] == [[16, 4], [4, 12]]
    table = format_table(out, NAMES)
    assert "bndry IoU" in table and "0.3333" in table


def row(epoch: int, **extra) -> dict:
    rec = EpochRecord(epoch, 1.0, 1.0, 0.5, {"pet": 0.5}, 0.9, {"pet": 0.5}, 1.0, 2.0, 1e-3, 1.0)
    r = rec.row()
    r.pop("val_boundary_iou"), r.pop("val_mboundary_iou")
    return {**r, **extra}


def test_history_rows_written_before_boundary_iou_still_load() -> None:
    old = [row(1), row(2)]
    assert check_history(old, 2, Path("last.pt")) == old
    new = [row(1, val_boundary_iou={"pet": 0.4}, val_mboundary_iou=0.4)]
    assert check_history(new, 1, Path("last.pt")) == new
    with pytest.raises(CheckpointError, match="val_mboundary_iou"):
        check_history([row(1, val_mboundary_iou="x")], 1, Path("last.pt"))
    assert math.isnan(EpochRecord(1, 1.0, 1.0, 0.5, {}, 0.9, {}, 1.0, 2.0, 1e-3, 1.0).val_mboundary_iou)


def test_error_map_marks_wrong_pixels_red_and_ignored_pixels_apart(tmp_path) -> None:
    from seg_pet.labels import IGNORE_COLOUR
    from seg_pet.viz import ERROR_COLOUR, error_map, save_panel

    image = torch.full((3, 6, 6), 0.5)
    target, pred = hand_case()
    target[0, 0, 0] = 255
    out = error_map(image, target[0], pred[0])
    wrong = (target[0] != pred[0]) & (target[0] != 255)
    assert (out[wrong.numpy()] == ERROR_COLOUR).all() and (out[~wrong.numpy()] != ERROR_COLOUR).any(axis=1).all()
    assert (out[0, 0] == IGNORE_COLOUR).all()
    save_panel(tmp_path / "p.png", image, target[0], pred[0], NAMES, errors=True)
    assert (tmp_path / "p.png").stat().st_size > 1000
