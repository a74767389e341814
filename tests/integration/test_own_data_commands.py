"""Your own data through every command: one tiny run on a 5-class colour-mask folder (32 px, seconds) serves
doctor, predict (index, color, trimap refused), export (model.json) and evaluate; plus one camvid-mini run."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from seg_pet.cli import main
from seg_pet.runtime.runpaths import RunPaths
from tests.conftest import REPO, SHARED_DATA, SMALL_MODEL, set_args, trained_tiny_run
from tests.integration.test_folder_source import colours, make_folder

pytestmark = pytest.mark.xdist_group("own_data_run")  # one worker trains the shared run once

N = 5
NAMES = ["road", "grass", "water", "roof", "tree"]
CAMVID = SHARED_DATA / "camvid-mini"


def own_sets(root: Path, runs: Path) -> list[str]:
    sets = {
        "data.source": "folder",
        "data.root": str(root),
        "data.classes": str(NAMES),
        "data.mask_format": "color",
        "data.class_colors": str(colours(N)),
        "data.ignore_colors": "[[0, 0, 0]]",
        "data.image_size": 32,
        "data.batch_size": 2,
        "data.num_workers": 0,
        "run.output_dir": str(runs),
        "run.name": "own",
        "model.encoder_weights": "null",
        "optim.epochs": 1,
        "train.max_steps_per_epoch": 2,
        "train.device": "cpu",
        "train.overlays": 0,
        "model.encoder": "resnet18",  # exports in seconds (the mobilenet of SMALL_MODEL does not)
    }
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.fixture(scope="module")
def own(module_tmp) -> dict[str, Path]:
    base = module_tmp
    root = make_folder(base / "data", "folders", n=N, color=True, count=8)
    config = base / "config.yaml"
    config.write_text("run:\n  name: own\n")
    sets = own_sets(root, base / "runs")
    assert main(["train", "--config", str(config), *set_args(sets)]) == 0
    return {"run": base / "runs" / "own", "data": root, "config": config, "sets": sets}  # type: ignore[dict-item]


def test_doctor_names_the_declared_classes(own, capsys):
    code = main(["doctor", "--config", str(own["config"]), *set_args(own["sets"])])
    out = capsys.readouterr()
    text = out.out + out.err
    failed = re.search(r"(\d+) FAIL in", text)
    assert failed and code == (1 if int(failed.group(1)) else 0), text  # documented: 1 if any check fails, 0 otherwise
    assert all(name in text for name in NAMES), text
    assert not re.search(r"\b(pet|background|border)\b", text), text  # the Pet classes are nowhere


def test_predict_color_and_index_use_the_declared_spec(own, tmp_path, capsys):
    images = own["data"] / "images" / "test"
    assert main(["predict", "--run", str(own["run"]), "--input", str(images), "--out", str(tmp_path / "c"), "--format", "color"]) == 0
    masks = sorted((tmp_path / "c" / "masks").glob("*.png"))
    assert len(masks) == len(list(images.iterdir()))
    seen = {tuple(c) for m in masks for c in np.asarray(Image.open(m).convert("RGB")).reshape(-1, 3).tolist()}
    assert seen and seen <= {tuple(c) for c in colours(N)}, seen
    assert main(["predict", "--run", str(own["run"]), "--input", str(images), "--out", str(tmp_path / "i"), "--format", "index"]) == 0
    values = np.concatenate([np.asarray(Image.open(m)).ravel() for m in sorted((tmp_path / "i" / "masks").glob("*.png"))])
    assert values.min() >= 0 and values.max() <= N - 1
    capsys.readouterr()
    code = main(["predict", "--run", str(own["run"]), "--input", str(images), "--out", str(tmp_path / "t"), "--format", "trimap"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0] and "trimap" in err[0], err
    assert not (tmp_path / "t" / "masks").exists() or not any((tmp_path / "t" / "masks").iterdir())


def test_export_sidecar_records_the_declared_classes(own, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", "--run", str(own["run"]), "--format", "onnx", "--out", str(out)]) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["class_names"] == NAMES
    assert sidecar["palette"] == colours(N)
    assert sidecar["labels"]["coding"] == "color" and sidecar["labels"]["class_names"] == NAMES
    codes = {tuple(v): t for v, t in sidecar["labels"]["codes"]}
    assert all(codes[tuple(c)] == i for i, c in enumerate(colours(N)))
    assert "trimap_codes" not in sidecar and "border" not in sidecar


def test_evaluate_per_class_iou_uses_the_declared_names(own, tmp_path):
    out = tmp_path / "val.json"
    assert main(["evaluate", "--run", str(own["run"]), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics["iou"]) == set(NAMES)
    test_metrics = json.loads((own["run"] / "test_metrics.json").read_text())
    assert set(test_metrics["iou"]) == set(NAMES)


@pytest.mark.skipif(not (CAMVID / "images").is_dir(), reason=f"{CAMVID} is absent")
def test_camvid_folder_config_end_to_end(tmp_path):
    sets = {
        "data.root": str(CAMVID),
        "data.image_size": 32,
        "data.num_workers": 0,
        "run.output_dir": str(tmp_path),
        "optim.epochs": 1,
        "optim.warmup_epochs": 0,
        "train.max_steps_per_epoch": 1,
        "train.overlays": 0,
        "eval.native_resolution": "false",
        **SMALL_MODEL,
    }
    code = main(["train", "--config", str(REPO / "configs/camvid_folder.yaml"), *set_args([f"{k}={v}" for k, v in sets.items()])])
    assert code == 0
    metrics = json.loads((tmp_path / "camvid_folder" / "test_metrics.json").read_text())
    names = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist"]
    assert list(metrics["iou"]) == names


def test_curves_panels_and_report_draw_the_declared_colours(own, tmp_path):
    worst = sorted((own["run"] / "worst").glob("*.png"))
    assert worst, "the run saved no worst/ panels"
    out = tmp_path / "report.html"
    assert main(["report", str(own["run"]), "--out", str(out)]) == 0
    report_curves = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="training curves', out.read_text()).group(1)
    (tmp_path / "report_curves.png").write_bytes(base64.b64decode(report_curves))
    for picture in (RunPaths(own["run"]).curves, worst[0], tmp_path / "report_curves.png"):
        pixels = np.asarray(Image.open(picture).convert("RGB")).reshape(-1, 3)
        drawn = {tuple(c) for c in np.unique(pixels, axis=0).tolist()}
        assert [c for c in colours(N) if tuple(c) not in drawn] == [], picture.name


OWN_DATA_KEYS = ("test_fraction", "classes", "mask_format", "class_colors", "ignore_values", "ignore_colors", "background")


@pytest.mark.skipif(not (SHARED_DATA / "oxford-iiit-pet").is_dir(), reason="the Pet slice is absent")
def test_a_pet_run_folder_from_before_own_data_still_evaluates(tmp_path_factory, tmp_path):
    """config.yaml without the folder-source data.* keys and checkpoints without `labels`: evaluate reads it as Pet."""
    run = tmp_path / "old"
    shutil.copytree(trained_tiny_run(tmp_path_factory), run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"] = {k: v for k, v in config["data"].items() if k not in OWN_DATA_KEYS}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for checkpoint in (RunPaths(run).best, RunPaths(run).last):
        state = torch.load(checkpoint, weights_only=True)
        state.pop("labels")
        torch.save(state, checkpoint)
    out = tmp_path / "val.json"
    assert main(["evaluate", "--run", str(run), "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())["iou"]) == ["pet", "background", "border"]
