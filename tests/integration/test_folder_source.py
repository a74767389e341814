"""`data.source: folder`: each layout, index and colour masks, N classes, and each bad-input case (tiny synthetic PNGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg_pet.cli import main
from seg_pet.config import label_spec, load_config
from seg_pet.data.sources import build_datasets, build_test_dataset
from seg_pet.labels import IGNORE_INDEX, declared_spec
from seg_pet.losses import build_loss, compute_class_weights
from seg_pet.metrics import ConfusionMatrix, compute_metrics
from seg_pet.training.monitors import epoch_warnings

SIZE = (40, 32)  # width, height: not square, any size works


def colours(n: int) -> list[list[int]]:
    return [[(37 * i + 20) % 256, (91 * i + 40) % 256, (53 * i + 60) % 256] for i in range(n)]


def write_pair(images: Path, masks: Path, stem: str, n: int, seed: int, color: bool, ignore: int | None) -> None:
    rng = np.random.default_rng(seed)
    ids = (np.arange(SIZE[0] * SIZE[1]).reshape(SIZE[1], SIZE[0]) + seed) % n  # every class in every mask
    if ignore is not None:
        ids[0, :] = ignore
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)).save(images / f"{stem}.png")
    if color:
        table = np.array(colours(n) + [[0, 0, 0]], dtype=np.uint8)
        Image.fromarray(table[np.where(ids == (ignore if ignore is not None else -1), n, ids)]).save(masks / f"{stem}.png")
    else:
        Image.fromarray(ids.astype(np.uint8)).save(masks / f"{stem}.png")


def make_folder(root: Path, layout: str, n: int = 3, color: bool = False, ignore: int | None = 255, count: int = 10) -> Path:
    for i in range(count):
        if layout == "folders":
            split = "test" if i < 2 else "val" if i < 4 else "train"
            write_pair(root / "images" / split, root / "masks" / split, f"im{i:02d}", n, i, color, ignore)
        else:
            write_pair(root / "images", root / "masks", f"im{i:02d}", n, i, color, ignore)
    if layout == "lists":
        (root / "test.txt").write_text("im00\nim01\n")
        (root / "val.txt").write_text("im02.png\nim03\n")
        (root / "train.txt").write_text("\n".join(f"im{i:02d}" for i in range(4, count)) + "\n")
    return root


def folder_cfg(root: Path, n: int, color: bool = False, ignore: int | None = 255, *extra: str):
    sets = [
        "data.source=folder",
        f"data.root={root}",
        f"data.classes={[f'c{i}' for i in range(n)]}",
        "data.image_size=32",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.val_fraction=0.25",
        f"run.output_dir={root.parent / 'runs'}",
        "model.encoder=resnet18",
        "model.encoder_weights=null",
        "optim.epochs=1",
        "train.max_steps_per_epoch=1",
        "train.device=cpu",
        "train.overlays=1",
    ]
    if color:
        sets += ["data.mask_format=color", f"data.class_colors={colours(n)}", "data.ignore_colors=[[0, 0, 0]]"]
    else:
        sets += [f"data.ignore_values={[] if ignore is None else [ignore]}"]
    return load_config(None, sets + list(extra))


@pytest.mark.parametrize("layout, sizes", [("folders", (6, 2, 2)), ("lists", (6, 2, 2)), ("pool", (7, 2, 1))])
@pytest.mark.parametrize("color", [False, True], ids=["index", "color"])
def test_layouts_and_codings_give_the_declared_class_ids(tmp_path, layout, sizes, color):
    root = make_folder(tmp_path / "data", layout, n=3, color=color)
    cfg = folder_cfg(root, 3, color)
    datasets, test = build_datasets(cfg), build_test_dataset(cfg)
    assert (len(datasets["train"]), len(datasets["val"]), len(test)) == sizes
    image, target = datasets["val"][0]
    assert image.shape == (3, 32, 32)
    assert set(target.unique().tolist()) == {0, 1, 2, IGNORE_INDEX}
    # native size, exact ids: the first row is ignore, the rest is (x + y*W + seed) % 3
    for split in (datasets["train"], datasets["val"], test):
        seed = int(split.name(0)[2:])
        expected = (np.arange(SIZE[0] * SIZE[1]).reshape(SIZE[1], SIZE[0]) + seed) % 3
        expected[0, :] = IGNORE_INDEX
        assert (split.labels(0).numpy() == expected).all()


@pytest.mark.parametrize("n, ignore", [(2, None), (5, 255), (12, 12), (12, None)])
def test_n_classes_losses_weights_metrics_monitors(tmp_path, n, ignore):
    root = make_folder(tmp_path / "data", "folders", n=n, ignore=ignore)
    cfg = folder_cfg(root, n, False, ignore, "loss.name=wce")
    spec = label_spec(cfg.data)
    train = build_datasets(cfg)["train"]
    counts = torch.zeros(n, dtype=torch.int64)
    for i in range(len(train)):
        labels = train.labels(i)
        counts += torch.bincount(labels[labels != IGNORE_INDEX], minlength=n)
    assert (counts > 0).all()
    weights = compute_class_weights("inverse", counts.tolist())
    assert len(weights) == n
    _, target = train[0]
    target = target[None]
    valid = target != IGNORE_INDEX
    perfect = 20.0 * torch.nn.functional.one_hot(torch.where(valid, target, 0), n).permute(0, 3, 1, 2).float()
    wrong = perfect.roll(1, dims=1)  # every labelled pixel's top logit is another class
    noise = torch.where(valid[:, None], 0.0, 50.0 * torch.randn_like(perfect))  # only at ignored pixels
    for name in ("wce", "ce_dice", "dice", "lovasz", "focal"):
        loss_cfg = load_config(None, [f"loss.name={name}"]).loss
        loss = build_loss(loss_cfg, list(spec.names), weights if name == "wce" else None)
        assert loss(perfect, target) < loss(wrong, target), name
        assert torch.allclose(loss(perfect + noise, target), loss(perfect, target), atol=1e-5), name  # ignored pixels count for nothing
    matrix = ConfusionMatrix(n)
    matrix.update(target, target)
    metrics = compute_metrics(matrix.mat, list(spec.names))
    assert set(metrics["iou"]) == set(spec.names) and metrics["miou"] == pytest.approx(1.0)
    collapsed = {"pred_share": {spec.names[0]: 1.0}, "iou": dict.fromkeys(spec.names, 0.0), "pixel_acc": 0.1, "miou": 0.0}
    assert any(spec.names[0] in w for w in epoch_warnings({"train_loss": 1.0}, [], collapsed, list(spec.names)))


def test_fg_dice_needs_a_declared_background(tmp_path):
    root = make_folder(tmp_path / "data", "folders")
    with pytest.raises(Exception, match="data.background"):
        folder_cfg(root, 3, False, 255, "loss.name=dice_fg")
    cfg = folder_cfg(root, 3, False, 255, "loss.name=dice_fg", "data.background=c1")
    spec = label_spec(cfg.data)
    assert spec.background == "c1"


def test_declared_spec_round_trips_and_refuses_clashes():
    spec = declared_spec(["a", "b"], coding="color", colors=[[1, 2, 3], [4, 5, 6]], ignore_colors=[[0, 0, 0]])
    assert type(spec).from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="3 classes but 2 colours"):
        declared_spec(["a", "b", "c"], coding="color", colors=[[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="ignore value 1 is also a class id"):
        declared_spec(["a", "b"], ignore_values=[1])


# --------------------------------------------------------------------------- bad input: one line, exit 2, no run folder


def fail_train(capsys, cfg_sets: list[str], runs: Path) -> str:
    config = runs.parent / "config.yaml"
    config.write_text("run:\n  name: pet_unet\n")
    code = main(["train", "--config", str(config), *[a for s in cfg_sets for a in ("--set", s)]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert not (runs / "pet_unet").exists()
    return err[0]


def sets_for(root: Path, n: int = 3, *extra: str) -> list[str]:
    return [
        "data.source=folder",
        f"data.root={root}",
        f"data.classes={[f'c{i}' for i in range(n)]}",
        "data.image_size=32",
        "data.num_workers=0",
        f"run.output_dir={root.parent / 'runs'}",
        "model.encoder_weights=null",
        "train.device=cpu",
        *extra,
    ]


def test_mask_value_no_class_has(tmp_path, capsys):
    root = make_folder(tmp_path / "data", "folders")
    Image.fromarray(np.full((SIZE[1], SIZE[0]), 7, np.uint8)).save(root / "masks" / "train" / "im05.png")
    line = fail_train(capsys, sets_for(root), tmp_path / "runs")
    assert "im05.png has values [7] that no declared class has; allowed: 0 (c0), 1 (c1), 2 (c2), 255 (ignore)" in line


def test_mask_colour_no_class_has(tmp_path, capsys):
    root = make_folder(tmp_path / "data", "folders", color=True)
    Image.fromarray(np.full((SIZE[1], SIZE[0], 3), 9, np.uint8)).save(root / "masks" / "val" / "im02.png")
    extra = ["data.mask_format=color", f"data.class_colors={colours(3)}", "data.ignore_colors=[[0, 0, 0]]"]
    line = fail_train(capsys, sets_for(root, 3, *extra), tmp_path / "runs")
    assert "im02.png has colours [[9, 9, 9]] that no declared class has" in line


def test_image_without_mask_and_mask_without_image(tmp_path, capsys):
    root = make_folder(tmp_path / "data", "folders")
    (root / "masks" / "train" / "im05.png").unlink()
    line = fail_train(capsys, sets_for(root), tmp_path / "runs")
    assert "im05.png has no mask: expected" in line
    write_pair(root / "images" / "x", root / "masks" / "train", "im05", 3, 5, False, 255)
    write_pair(root / "images" / "x", root / "masks" / "train", "orphan", 3, 5, False, 255)
    line = fail_train(capsys, sets_for(root), tmp_path / "runs")
    assert "orphan.png has no image" in line


def test_sizes_differ(tmp_path, capsys):
    root = make_folder(tmp_path / "data", "folders")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "train" / "im05.png")
    line = fail_train(capsys, sets_for(root), tmp_path / "runs")
    assert "im05.png is 8x8 but its image is 40x32" in line


def test_empty_split(tmp_path, capsys):
    root = make_folder(tmp_path / "data", "folders")
    for p in (root / "images" / "test").iterdir():
        p.unlink()
    for p in (root / "masks" / "test").iterdir():
        p.unlink()
    line = fail_train(capsys, sets_for(root), tmp_path / "runs")
    assert "the test split is empty" in line


def test_duplicate_stems(tmp_path, capsys):
    root = make_folder(tmp_path / "data", "folders")
    Image.open(root / "images" / "train" / "im05.png").save(root / "images" / "train" / "im05.jpg")
    line = fail_train(capsys, sets_for(root), tmp_path / "runs")
    assert "duplicate stem 'im05'" in line


def test_more_classes_than_the_palette_has(tmp_path, capsys):
    root = make_folder(tmp_path / "data", "folders", color=True)
    line = fail_train(capsys, sets_for(root, 3, "data.mask_format=color", f"data.class_colors={colours(2)}"), tmp_path / "runs")
    assert "data.class_colors" in line and "3 classes but 2 colours" in line


def test_class_that_never_occurs_warns(tmp_path, capsys):
    root = make_folder(tmp_path / "data", "folders", n=3)
    cfg = folder_cfg(root, 4)
    lines = []
    build_datasets(cfg, log=lines.append)
    assert any("class 'c3' occurs in no mask" in line for line in lines)
