"""Shared test fixtures: where the real data slice lives, and tiny CPU-sized run configs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# Tiny tensors: one intra-op thread is faster than two, and on a shared CPU two spinning threads
# can slow a step tenfold. Subprocesses started by tests inherit the environment variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the real two-breed slice sits beside the repo
PET_DIR = SHARED_DATA / "oxford-iiit-pet"

requires_pet = pytest.mark.skipif(
    not (PET_DIR / "annotations" / "trainval.txt").is_file(),
    reason=f"real Oxford-IIIT Pet slice not found at {PET_DIR} (CI always has it; see README, Tests)",
)


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """A folder for one module's shared runs, deleted when the module ends if none of its tests failed
    (tmp_path_retention_policy = "failed" in pyproject.toml does this for tmp_path): the suite writes
    about 15 GB of checkpoints in all, more than a CI machine's free disk."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed:
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`--dist loadgroup`, set in pyproject.toml) the tests of a file that share a
    module-scoped fixture run in one worker, so the fixture (often a trained run) is built once; the other
    tests are spread one by one. A file can name its own group with `pytest.mark.xdist_group`."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        fixtures = getattr(item, "_fixtureinfo", None)  # pytest's own record of the fixtures a test uses
        if fixtures is None or any(chain and chain[-1].scope == "module" for chain in fixtures.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


# Smaller than the usual tiny setting (resnet18, 170 MB checkpoints): a 0.9 M-parameter LinkNet, 10 MB
# checkpoints, for tests that write many checkpoints and do not care which model it is.
SMALL_MODEL = {"model.arch": "linknet", "model.encoder": "timm-mobilenetv3_small_minimal_100"}


def tiny_overrides(output_dir: Path, name: str = "run", *, real: bool = True, data_root: Path | None = None, **extra) -> list[str]:
    """--set overrides for a CPU run that takes seconds: 32 px, resnet18, random init, few steps."""
    sets = {
        "run.output_dir": str(output_dir),
        "run.name": name,
        "data.image_size": 32,
        "data.batch_size": 8,
        "data.num_workers": 0,
        "model.encoder": "resnet18",
        "model.encoder_weights": "null",
        "optim.epochs": 2,
        "optim.lr": 0.003,
        "train.device": "cpu",
        "train.overlays": 2,
        "train.max_steps_per_epoch": 3,
    }
    if real:
        sets.update({"data.source": "oxford", "data.root": str(data_root or SHARED_DATA)})
    else:
        sets.update({"data.source": "synthetic", "data.root": str(data_root or output_dir / "synthetic"), "data.synthetic_images": 24})
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def set_args(overrides: list[str]) -> list[str]:
    """['a=1', 'b=2'] -> ['--set', 'a=1', '--set', 'b=2'] for cli.main."""
    return [arg for item in overrides for arg in ("--set", item)]


def trained_tiny_run(tmp_path_factory) -> Path:
    """One 32 px run on the real slice, trained once per test session and shared by the modules that
    only read a finished run (predict, export)."""
    from seg_pet.cli import main

    base = tmp_path_factory.getbasetemp() / "tiny_shared_run"
    run_dir = base / "run"
    if not (run_dir / "test_metrics.json").is_file():
        args = ["train", "--config", str(REPO / "configs/smoke.yaml"), *set_args(tiny_overrides(base, "run", **{"train.overlays": 0}))]
        assert main([*args, "--overwrite"]) == 0
    return run_dir
