"""The run folder's rules: when one may be created, replaced or resumed, and how it appears atomically."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from seg_pet.checkpoint import load_checkpoint, save_checkpoint
from seg_pet.runtime.distributed import launch_command
from seg_pet.runtime.errors import CheckpointError, SegPetError


def resume_command(run_dir: Path) -> str:
    return f"{launch_command()} -m seg_pet train --resume {shlex.quote(str(run_dir))}"


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise SegPetError(f"--resume {run_dir}: not a seg_pet run folder (no config.yaml)")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise SegPetError(
                f"run folder {run_dir} already exists; continue it with --resume {run_dir}, "
                "replace it with --overwrite, or choose another run.name"
            )
        if not (run_dir / "config.yaml").is_file():
            raise SegPetError(f"--overwrite: {run_dir} is not a seg_pet run folder (no config.yaml); refusing to delete it")


def create_run_dir(run_dir: Path, write_initial) -> None:
    """Make the run folder appear complete or not at all.

    `write_initial(folder)` fills a hidden staging folder beside `run_dir` (config.yaml, the
    epoch-0 last.pt, ...), which is then renamed into place; an existing run (--overwrite,
    checked by check_run_dir) is swapped out first and deleted after. A process killed at any
    instant leaves either no run folder, the old one, or a new one that --resume accepts.
    """
    parent = run_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{run_dir.name}.staging-*"):  # left by a process killed during setup
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{run_dir.name}.staging-"))
    try:
        write_initial(staging)
        if run_dir.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{run_dir.name}.staging-old-"))
            os.replace(run_dir, old)  # onto the empty folder just made
            os.replace(staging, run_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def repair_best_checkpoint(run_dir: Path, last_state: dict[str, Any]) -> bool:
    """last.pt is written before best.pt, so a kill between the two leaves best.pt one improvement behind.

    When last.pt says its own epoch is the best one, best.pt must hold that epoch: rewrite it from
    last.pt if it does not. Returns True when it was rewritten.
    """
    epoch = last_state["epoch"]
    if epoch < 1 or last_state.get("best_epoch") != epoch:
        return False
    best_path = run_dir / "checkpoints" / "best.pt"
    try:
        if load_checkpoint(best_path)["epoch"] == epoch:
            return False
    except CheckpointError:
        pass
    save_checkpoint(best_path, last_state)
    return True
