"""Colourising and overlay arithmetic, and that every plot writes a real PNG, even from awkward inputs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg_pet.labels import IGNORE_INDEX, PALETTE
from seg_pet.viz import (
    colorize,
    normalise_rows,
    overlay,
    per_image_iou,
    plot_class_balance,
    plot_confusion,
    plot_curves,
    save_overlay,
    save_panel,
)

NAMES3 = ["pet", "background", "border"]


def _assert_png(path: Path, size: tuple[int, int] | None = None) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        if size is not None:
            assert im.size == size
        # A drawn figure, not a blank canvas.
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 2
        # No temporary files left beside it (atomic write cleaned up).
        assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []
        return im


def _sample(h: int = 20, w: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, size=(h, w))
    mask[0, 0] = IGNORE_INDEX
    return image, mask


def test_palette_distinct_uint8() -> None:
    assert PALETTE.dtype == np.uint8 and PALETTE.shape == (3, 3)
    assert len({tuple(c) for c in PALETTE.tolist()}) == 3
    assert (0, 0, 0) not in {tuple(c) for c in PALETTE.tolist()}  # black is reserved for ignore


def test_colorize_maps_classes_and_ignore() -> None:
    mask = np.array([[0, 1], [2, IGNORE_INDEX]])
    out = colorize(mask, 3)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == PALETTE[0].tolist()
    assert out[0, 1].tolist() == PALETTE[1].tolist()
    assert out[1, 0].tolist() == PALETTE[2].tolist()
    assert out[1, 1].tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        colorize(mask, 2)  # class 2 does not exist in the 2-class modes
    with pytest.raises(ValueError):
        colorize(np.array([[7]]), 3)


def test_overlay_math_and_ignore_unchanged() -> None:
    image = np.full((2, 2, 3), [10, 200, 101], dtype=np.uint8)
    mask = np.array([[0, 1], [2, IGNORE_INDEX]])
    out = overlay(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    for (y, x), c in (((0, 0), 0), ((0, 1), 1), ((1, 0), 2)):
        expected = [round(0.6 * v + 0.4 * p) for v, p in zip(image[y, x].tolist(), PALETTE[c].tolist())]
        assert out[y, x].tolist() == expected
    assert out[1, 1].tolist() == [10, 200, 101]
    # pet pixel spelled out: 0.6 * 10 + 0.4 * 255 = 108, 0.6 * 200 + 0.4 * 140 = 176, ...
    assert out[0, 0].tolist() == [108, 176, 71]


def test_overlay_accepts_tensors_and_rejects_shape_mismatch() -> None:
    image, mask = _sample()
    chw_float = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    assert np.array_equal(overlay(chw_float, torch.from_numpy(mask)), overlay(image, mask))
    with pytest.raises(ValueError):
        overlay(image, mask[:-1])


def test_save_overlay_png_same_size(tmp_path: Path) -> None:
    image, mask = _sample(20, 30)
    path = tmp_path / "sub" / "overlay.png"
    save_overlay(path, image, mask)
    im = _assert_png(path, size=(30, 20))
    assert np.array_equal(np.asarray(im.convert("RGB")), overlay(image, mask))


def test_per_image_iou() -> None:
    target = np.array([[0, 0, 1, 1], [1, 1, 1, IGNORE_INDEX]])
    pred = np.array([[0, 1, 1, 1], [1, 1, 1, 0]])
    ious = per_image_iou(target, pred, 3)
    assert ious[0] == pytest.approx(1 / 2)
    assert ious[1] == pytest.approx(5 / 6)
    assert math.isnan(ious[2])  # border in neither mask: not scored


@pytest.mark.parametrize("title", [None, "Blobcat_1"])
def test_save_panel_writes_png(tmp_path: Path, title: str | None) -> None:
    image, target = _sample(40, 60)
    pred = np.where(target == IGNORE_INDEX, 1, target)
    path = tmp_path / "panel.png"
    save_panel(path, image, target, pred, NAMES3, title=title)
    im = _assert_png(path)
    assert im.size[0] > 2 * im.size[1]  # three panels side by side


def test_save_panel_two_classes_and_size_mismatch(tmp_path: Path) -> None:
    image, _ = _sample(30, 30)
    target = np.zeros((30, 30), dtype=np.int64)
    target[10:20, 10:20] = 1
    save_panel(tmp_path / "p2.png", image, target, target, ["pet", "background"], show_iou=False)
    _assert_png(tmp_path / "p2.png")
    with pytest.raises(ValueError):
        save_panel(tmp_path / "bad.png", image, target, target[:5], ["pet", "background"])
    assert not (tmp_path / "bad.png").exists()


def _rows(n: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_loss": 1.2 / e if e != 2 else float("nan"),
            "val_miou": 0.5 + 0.02 * e,
            "val_iou": {"pet": 0.6, "background": 0.9, "border": None if e == 1 else 0.2},
            "val_pixel_acc": 0.9,
        }
        for e in range(1, n + 1)
    ]


def test_plot_curves_many_and_single_epoch(tmp_path: Path) -> None:
    plot_curves(_rows(5), NAMES3, tmp_path / "curves.png")
    _assert_png(tmp_path / "curves.png")
    plot_curves(_rows(1), NAMES3, tmp_path / "one.png")
    _assert_png(tmp_path / "one.png")


def test_plot_curves_awkward_rows(tmp_path: Path) -> None:
    rows = [
        # JSON round trip: per-class IoU keyed by index strings, NaN written as null.
        {"epoch": 1, "train_loss": 0.9, "val_miou": None, "val_iou": {"0": None, "1": 0.5}},
        {"epoch": 2, "train_loss": 0.7, "val_miou": 0.4, "val_iou": None, "lr": 1e-3},
    ]
    plot_curves(rows, ["pet", "background"], tmp_path / "c.png")
    _assert_png(tmp_path / "c.png")
    with pytest.raises(ValueError):
        plot_curves([], NAMES3, tmp_path / "empty.png")


def test_normalise_rows() -> None:
    mat = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    norm = normalise_rows(mat)
    assert norm.dtype == np.float64
    assert not np.isnan(norm).any()
    assert np.allclose(norm.sum(axis=1), [1.0, 0.0, 1.0])
    assert norm[0].tolist() == [0.75, 0.25, 0.0]
    assert norm[2].tolist() == [0.25, 0.25, 0.5]
    assert np.array_equal(normalise_rows(torch.tensor(mat)), norm)
    with pytest.raises(ValueError):
        normalise_rows(np.zeros((2, 3)))


def test_plot_confusion(tmp_path: Path) -> None:
    mat = torch.tensor([[50, 5, 1], [3, 200, 7], [0, 0, 0]])
    plot_confusion(mat, NAMES3, tmp_path / "conf.png", title="val")
    _assert_png(tmp_path / "conf.png")
    with pytest.raises(ValueError):
        plot_confusion(mat, ["pet", "background"], tmp_path / "bad.png")


def test_plot_class_balance(tmp_path: Path) -> None:
    plot_class_balance({"pet": 30, "background": 60, "border": 9, "ignore": 1}, NAMES3, tmp_path / "d.png")
    _assert_png(tmp_path / "d.png")
    plot_class_balance([0, 0], ["pet", "background"], tmp_path / "zero.png")
    _assert_png(tmp_path / "zero.png")
    with pytest.raises(ValueError):
        plot_class_balance([1, 2], NAMES3, tmp_path / "bad.png")


def test_import_leaves_pyplot_alone() -> None:
    code = "import sys, seg_pet.viz; print('matplotlib.pyplot' in sys.modules)"
    # `-c` puts the working directory on sys.path: run from the repository root.
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert result.stdout.strip() == "False"
