"""Bad input: each case is one line on stderr, exit code 2, no traceback, and no run folder left behind.

Broken datasets are a generated synthetic dataset with files corrupted afterwards, read with
`data.source: oxford` so the generator never touches (or repairs) them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg_pet.cli import main
from seg_pet.data.synthetic import MARKER_NAME, make_synthetic_dataset
from tests.conftest import REPO, set_args, tiny_overrides

NAME = "run"


def fail_one_line(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; assert the bad-input contract; return the message."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "text, expected",
    [
        ("run: {name: x\n", "invalid YAML (line 2"),
        ("optim: {lr: 0.1, epoch: 3}\n", "unknown key optim.epoch; did you mean 'epochs'?"),
        ("optim: {epochs: three}\n", "optim.epochs: expected int, got 'three'"),
        ("data: {image_size: 100}\n", "data.image_size: must be a positive multiple of 32"),
        ("optim: {lr: -1}\n", "optim.lr: must be > 0"),
    ],
    ids=["yaml-syntax", "unknown-key", "wrong-type", "image-size", "negative-lr"],
)
def test_bad_config(tmp_path, capsys, text, expected):
    config = write_config(tmp_path, text)
    out = tmp_path / "out"
    message = fail_one_line(capsys, ["train", "--config", str(config), "--set", f"run.output_dir={out}"])
    assert expected in message
    assert not out.exists()


def test_missing_config_file(tmp_path, capsys):
    message = fail_one_line(capsys, ["train", "--config", str(tmp_path / "nope.yaml")])
    assert message == f"error: --config {tmp_path / 'nope.yaml'}: no such file"


def test_yaml_python_tag_is_refused_and_not_run(tmp_path, capsys):
    marker = tmp_path / "marker"
    config = write_config(tmp_path, f"run: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n")
    message = fail_one_line(capsys, ["train", "--config", str(config)])
    assert "invalid YAML (line 1, column 6): tag !!python/object/apply:builtins.open is not allowed" in message
    assert not marker.exists()


def test_cuda_requested_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    message = fail_one_line(
        capsys,
        [
            "train",
            "--config",
            str(write_config(tmp_path, "")),
            *set_args(tiny_overrides(out, NAME, real=False, **{"train.device": "cuda"})),
        ],
    )
    assert "train.device: 'cuda' requested but CUDA is not available" in message
    assert not out.exists()


# --------------------------------------------------------------------------- data files


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory) -> Path:
    """A small generated dataset; each test corrupts its own copy."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("clean") / "root", num_images=12, seed=0)


@pytest.fixture
def dataset(clean_dataset, tmp_path) -> Path:
    """A copy without the synthetic marker: to seg_pet it is just an Oxford-IIIT Pet folder."""
    copy = tmp_path / "data" / "oxford-iiit-pet"
    shutil.copytree(clean_dataset, copy)
    (copy / MARKER_NAME).unlink()
    return copy


def first_listed(dataset: Path) -> str:
    return (dataset / "annotations" / "trainval.txt").read_text().split()[0]


def train_args(tmp_path: Path, dataset: Path, **extra) -> list[str]:
    sets = {
        "data.source": "oxford",
        "data.root": str(dataset.parent),
        "data.batch_size": 1,
        "data.image_size": 64,
        "train.max_steps_per_epoch": "null",
        "optim.epochs": 1,
        **extra,
    }
    # batch 1 and no step cap: epoch 1 reads every trainval file, so a pixel problem anywhere is found
    # (at 64 px: with a batch of 1 at 32 px BatchNorm would see one value per channel, refused before training).
    return ["train", "--config", str(write_config(tmp_path, "")), *set_args(tiny_overrides(tmp_path / "out", NAME, **sets))]


def test_data_root_missing(tmp_path, capsys):
    message = fail_one_line(capsys, train_args(tmp_path, tmp_path / "nowhere" / "oxford-iiit-pet"))
    assert f"Oxford-IIIT Pet not found: expected {tmp_path / 'nowhere' / 'oxford-iiit-pet'}/images" in message
    assert "data.download: true" in message
    assert not (tmp_path / "out").exists()


def test_download_without_network(tmp_path, capsys, monkeypatch):
    import torchvision.datasets.oxford_iiit_pet as tv_pet

    def offline(*args, **kwargs):
        Path(kwargs["download_root"]).mkdir(parents=True, exist_ok=True)  # as torchvision does before fetching
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_pet, "download_and_extract_archive", offline)
    message = fail_one_line(capsys, train_args(tmp_path, tmp_path / "nodata" / "oxford-iiit-pet", **{"data.download": "true"}))
    assert "could not download Oxford-IIIT Pet" in message and "Temporary failure in name resolution" in message
    assert "set data.download: false" in message
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "nodata").exists(), "a failed download must not leave empty dataset folders"


def test_image_not_an_image(tmp_path, capsys, dataset):
    image = dataset / "images" / f"{first_listed(dataset)}.jpg"
    image.write_text("this is not a JPEG\n")
    message = fail_one_line(capsys, train_args(tmp_path, dataset))
    assert message == f"error: cannot read {image}: not an image file"
    assert not (tmp_path / "out").exists()


def test_image_truncated(tmp_path, capsys, dataset):
    image = dataset / "images" / f"{first_listed(dataset)}.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # the header survives: found when the pixels are decoded
    message = fail_one_line(capsys, train_args(tmp_path, dataset))
    assert message.startswith(f"error: cannot read image {image}: image file is truncated")
    assert not (tmp_path / "out" / NAME).exists()  # no epoch finished: the new run folder is taken away


def test_trimap_missing(tmp_path, capsys, dataset):
    trimap = dataset / "annotations" / "trimaps" / f"{first_listed(dataset)}.png"
    trimap.unlink()
    message = fail_one_line(capsys, train_args(tmp_path, dataset))
    assert message == f"error: trimap file missing: {trimap} (listed in trainval.txt)"
    assert not (tmp_path / "out").exists()


def test_trimap_size_differs(tmp_path, capsys, dataset):
    trimap = dataset / "annotations" / "trimaps" / f"{first_listed(dataset)}.png"
    arr = np.asarray(Image.open(trimap))
    Image.fromarray(arr[:-3]).save(trimap)
    h, w = arr.shape
    message = fail_one_line(capsys, train_args(tmp_path, dataset))
    assert message == f"error: trimap {trimap} is {w}x{h - 3} but its image is {w}x{h}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_trimap_values_outside_1_to_3(tmp_path, capsys, dataset, workers):
    trimap = dataset / "annotations" / "trimaps" / f"{first_listed(dataset)}.png"
    arr = np.asarray(Image.open(trimap)).copy()
    arr[0, 0] = 7
    Image.fromarray(arr).save(trimap)
    # With workers the error crosses a process boundary (DataLoader re-raises it with the worker's traceback).
    message = fail_one_line(capsys, train_args(tmp_path, dataset, **{"data.num_workers": workers}))
    assert message == f"error: trimap {trimap} has values [1, 2, 3, 7]; expected only 1 (pet), 2 (background), 3 (border)"
    assert not (tmp_path / "out" / NAME).exists()


# --------------------------------------------------------------------------- checkpoints and run folders


@pytest.fixture(scope="module")
def trained_run(module_tmp) -> Path:
    """One finished 1-epoch run on synthetic data (read-only for the tests below: they copy it)."""
    out = module_tmp
    argv = [
        "train",
        "--config",
        str(write_config(out, "")),
        *set_args(tiny_overrides(out, NAME, real=False, **{"optim.epochs": 1, "data.synthetic_images": 16, "train.overlays": 1})),
    ]
    assert main(argv) == 0
    return out / NAME


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    copy = tmp_path / "copy" / NAME
    shutil.copytree(trained_run, copy)
    return copy


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.border=pet", "was trained with 3 classes ['pet', 'background', 'border'], the config has 2"),
        ("model.arch=fpn", "holds a unet/resnet18 model, the config asks for model.arch='fpn'"),
    ],
    ids=["classes", "architecture"],
)
def test_checkpoint_does_not_fit_config(trained_run, capsys, override, expected):
    before = folder_bytes(trained_run)
    message = fail_one_line(capsys, ["evaluate", "--run", str(trained_run), "--set", override])
    assert expected in message
    message = fail_one_line(capsys, ["train", "--resume", str(trained_run), "--set", override])
    assert expected in message
    assert folder_bytes(trained_run) == before  # the refused resume changed nothing


def test_truncated_checkpoint(run_copy, capsys):
    last = run_copy / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    message = fail_one_line(capsys, ["train", "--resume", str(run_copy)])
    assert message.startswith(f"error: {last} is truncated or not a checkpoint (")


def test_file_that_is_not_a_checkpoint(trained_run, tmp_path, capsys):
    fake = tmp_path / "model.pt"
    fake.write_text("not a checkpoint\n")
    message = fail_one_line(capsys, ["evaluate", "--run", str(trained_run), "--checkpoint", str(fake)])
    assert message == f"error: {fake} is not a checkpoint (not a file written by torch.save)"
    tensors = tmp_path / "tensors.pt"
    torch.save({"weight": torch.zeros(2)}, tensors)
    message = fail_one_line(capsys, ["evaluate", "--run", str(trained_run), "--checkpoint", str(tensors)])
    assert message == f"error: {tensors} is not a seg_pet checkpoint (missing format, model, config, epoch, class_names)"


def test_resume_without_checkpoint(run_copy, capsys):
    (run_copy / "checkpoints" / "last.pt").unlink()
    message = fail_one_line(capsys, ["train", "--resume", str(run_copy)])
    assert message == f"error: --resume {run_copy}: no checkpoints/last.pt to resume from"


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    message = fail_one_line(capsys, ["train", "--resume", str(tmp_path)])
    assert message == f"error: --resume {tmp_path}: not a seg_pet run folder (no config.yaml)"
    assert list(tmp_path.iterdir()) == []


def test_evaluate_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    message = fail_one_line(capsys, ["evaluate", "--run", str(tmp_path)])
    assert message == f"error: --run {tmp_path}: not a seg_pet run folder (no config.yaml)"


def test_resume_and_overwrite_together(run_copy, capsys):
    before = folder_bytes(run_copy)
    message = fail_one_line(capsys, ["train", "--resume", str(run_copy), "--overwrite"])
    assert "use one of them" in message
    assert folder_bytes(run_copy) == before


# --------------------------------------------------------------------------- end to end: a real process


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "seg_pet", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_subprocess_unknown_key_has_no_traceback(tmp_path):
    config = write_config(tmp_path, "optim:\n  lr: 0.1\n  epoch: 3\n")
    result = run_module(["train", "--config", str(config)], tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: unknown key optim.epoch; did you mean 'epochs'?\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


@pytest.mark.slow
def test_subprocess_bad_trimap_in_worker_has_no_traceback(tmp_path, dataset):
    trimap = dataset / "annotations" / "trimaps" / f"{first_listed(dataset)}.png"
    arr = np.asarray(Image.open(trimap)).copy()
    arr[arr == 3] = 0
    Image.fromarray(arr).save(trimap)
    result = run_module(train_args(tmp_path, dataset, **{"data.num_workers": 2}), tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: trimap {trimap} has values [0, 1, 2]; expected only 1 (pet), 2 (background), 3 (border)"
    )
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out" / NAME).exists()
