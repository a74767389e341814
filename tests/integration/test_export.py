"""`export --format onnx`: onnxruntime against torch at three image sizes, the sidecar, the verification
failure (exit 1, nothing written), refusing to overwrite, and the message when onnx is missing (exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seg_pet.cli import main
from seg_pet.config import load_config
from seg_pet.data.sources import build_datasets
from seg_pet.export import MAX_MISMATCH, ONNX_OPSET, logit_tolerance, unit_batch
from seg_pet.predict import Predictor, load_rgb
from tests.conftest import requires_pet, trained_tiny_run

pytestmark = [requires_pet, pytest.mark.xdist_group("tiny_shared_run")]  # one worker trains the shared run once


@pytest.fixture(scope="module")
def ort():
    """onnxruntime, or a skip where it is not installed (the missing-onnx test needs neither)."""
    return pytest.importorskip("onnxruntime")


def export(*args) -> int:
    try:
        return main(["export", *map(str, args)])
    except SystemExit as exc:
        return exc.code


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return trained_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory, ort) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert export("--run", run_dir, "--format", "onnx", "--out", out) == 0
    return out


def val_images(run_dir: Path, count: int = 2) -> list[Path]:
    return build_datasets(load_config(run_dir / "config.yaml"))["val"].images[:count]


def test_sidecar_describes_the_model(exported, run_dir):
    sidecar = json.loads(exported.with_suffix(".json").read_text())
    assert sidecar["class_names"] == ["pet", "background", "border"]
    assert sidecar["palette"] == [[255, 140, 26], [52, 64, 100], [170, 230, 40]]
    assert sidecar["mean"] == [0.485, 0.456, 0.406] and sidecar["std"] == [0.229, 0.224, 0.225]
    assert sidecar["image_size"] == 32 and sidecar["opset"] == ONNX_OPSET
    assert sidecar["input"]["name"] == "image" and sidecar["output"]["name"] == "logits"
    check = sidecar["verification"]
    assert check["max_abs_logit_diff"] <= logit_tolerance(check["max_abs_logit"]) == check["logit_tolerance"]
    assert check["argmax_mismatch_share"] <= MAX_MISMATCH and check["atol"] == 1e-3
    assert len(check["images"]) == 3 and all(Path(p).is_file() for p in check["images"])  # real slice images, not random ones
    assert len(check["sizes"]) == 3


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (160, 128)])
def test_onnxruntime_matches_torch_at_three_sizes(exported, run_dir, ort, size):
    """Dynamic batch, height and width: the ONNX model (RGB 0..1 in, normalisation inside) gives torch's logits."""
    predictor = Predictor.from_run(run_dir, device="cpu")
    rgbs = [load_rgb(p) for p in val_images(run_dir)]
    batch = unit_batch(rgbs, size)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"image": batch.numpy()})[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        torch_logits = predictor.model((batch - mean) / std).numpy()
    assert onnx_logits.shape == (2, 3, *size)
    assert np.abs(onnx_logits - torch_logits).max() <= logit_tolerance(np.abs(torch_logits).max())
    assert (onnx_logits.argmax(1) != torch_logits.argmax(1)).mean() <= MAX_MISMATCH


def test_onnx_reproduces_predict_at_the_original_size(exported, run_dir, ort):
    """The recipe the docs give (resize to image_size, /255, run, resize logits back, argmax) gives predict's mask."""
    predictor = Predictor.from_run(run_dir, device="cpu")
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for path in val_images(run_dir):
        rgb = load_rgb(path)
        logits = torch.from_numpy(session.run(None, {"image": unit_batch([rgb], (32, 32)).numpy()})[0])
        mask = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)[0].argmax(0).numpy()
        assert (mask != predictor.predict(rgb)).mean() <= MAX_MISMATCH


def test_verification_failure_exits_1_and_writes_nothing(run_dir, tmp_path, monkeypatch, capsys, ort):
    real_run = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a, **k: [real_run(self, *a, **k)[0] + 1.0])
    out = tmp_path / "model.onnx"
    capsys.readouterr()
    # --opset 17: the quicker TorchScript exporter; verification is the same whichever exporter wrote the file
    assert export("--run", run_dir, "--out", out, "--opset", "17") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match torch" in err and "tolerance" in err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(exported, run_dir, capsys):
    before = exported.stat().st_mtime_ns
    capsys.readouterr()
    assert export("--run", run_dir, "--out", exported) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert exported.stat().st_mtime_ns == before


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_missing_onnx_says_how_to_install(run_dir, tmp_path, monkeypatch, capsys, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    capsys.readouterr()
    assert export("--run", run_dir, "--out", tmp_path / "model.onnx") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[export]"' in err and module in err
    assert not (tmp_path / "model.onnx").exists()


def test_bad_run_or_flag_exits_2(tmp_path, capsys):
    assert export("--run", tmp_path, "--out", tmp_path / "model.onnx") == 2
    assert "not a seg_pet run folder" in capsys.readouterr().err
    assert export("--run", tmp_path, "--format", "tflite", "--out", tmp_path / "model.onnx") == 2
