"""DDP on GPUs: NCCL, SyncBatchNorm, bf16 autocast, channels_last and torch.compile under torchrun.

Marked `cuda`; skipped, with the reason, where fewer than 2 CUDA devices are visible (NCCL needs one
GPU per process). Not yet run: no multi-GPU machine was available when it was written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seg_pet.checkpoint import load_checkpoint
from seg_pet.evaluation import evaluate_run
from tests.conftest import REPO, set_args, tiny_overrides

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason=f"needs 2 CUDA devices, {torch.cuda.device_count()} visible"),
]


@pytest.mark.parametrize("compile_model", [False, True], ids=["eager", "compile"])
def test_two_gpus_train_and_the_checkpoint_evaluates_in_one_process(tmp_path: Path, compile_model: bool) -> None:
    (tmp_path / "empty.yaml").write_text("")
    sets = tiny_overrides(
        tmp_path / "out",
        "r",
        real=False,
        **{
            "train.device": "auto",
            "train.amp": "true",
            "train.sync_bn": "true",
            "train.compile": str(compile_model).lower(),
            "data.synthetic_images": 35,
            "data.val_fraction": 0.2,
        },
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "seg_pet",
        "train",
        "--config",
        str(tmp_path / "empty.yaml"),
        *set_args(sets),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes x batch 8 = global batch 16" in done.stdout and "cuda:0" in done.stdout
    run_dir = tmp_path / "out" / "r"
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and not any(key.startswith("module.") for key in state["model"])
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    metrics = evaluate_run(run_dir, split="val", checkpoint="last", log=lambda *_: None)  # one process, cuda:0, bf16
    assert last["val_miou"] == pytest.approx(metrics["miou"], abs=0.02)  # bf16 kernels may pick other algorithms per batch size
