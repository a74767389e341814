"""The run folder's rules: when one may be created, replaced or resumed, and how it appears atomically.

    check_run_dir          before anything is built: the paths are the right kind, --resume / --overwrite fit
    create_run_dir         the run folder appears complete or not at all; returns a `NewRunFolder`
    NewRunFolder.complete  the new run saved its first finished epoch: the run it replaced is deleted
    NewRunFolder.abandon   the new run failed before that: it goes, the run it replaced comes back, and
                           folders made for it go too
    replaced_runs          `.NAME.replaced-*` folders beside a run (left by a process killed mid-replace)

With --overwrite the old run is moved aside (hidden, `.NAME.replaced-*` beside the run folder) by
runtime.replace's `Replacement` and kept until the new run has saved a finished epoch; only the
process that moved it aside deletes it, and nothing else ever does (a resume only says it is there).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from seg_pet.checkpoint import load_checkpoint, save_checkpoint
from seg_pet.runtime.distributed import launch_command
from seg_pet.runtime.errors import CheckpointError, SegPetError
from seg_pet.runtime.fileio import share_folder
from seg_pet.runtime.paths import check_input, check_output
from seg_pet.runtime.replace import REPLACED_MARK, Replacement
from seg_pet.runtime.runpaths import RunPaths


def resume_command(run_dir: Path) -> str:
    return f"{launch_command()} -m seg_pet train --resume {shlex.quote(str(run_dir))}"


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        check_input(run_dir, "--resume", "dir")
        RunPaths(run_dir).require_config("--resume")
        check_output(run_dir, "--resume", "dir", run_folder=True)
        return
    check_output(run_dir.parent, "run.output_dir", "dir")
    check_output(run_dir, "run folder", "dir", run_folder=True)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise SegPetError(
                f"run folder {run_dir} already exists; continue it with --resume {run_dir}, "
                "replace it with --overwrite, or choose another run.name"
            )
        RunPaths(run_dir).require_config("--overwrite", "; refusing to delete it")


@dataclass
class NewRunFolder:
    """A run folder create_run_dir just made, the run it replaced (moved aside), and the parent folders made for it."""

    run_dir: Path
    replacement: Optional[Replacement] = None
    made_parents: list[Path] = field(default_factory=list)  # deepest first
    completed: bool = False

    @property
    def replaced(self) -> Optional[Path]:
        """Where the run this one replaces waits (None: there was none, or it is gone or back)."""
        return self.replacement.aside if self.replacement is not None else None

    def complete(self) -> None:
        """The new run saved a finished epoch: it is known good, and the run it replaced goes."""
        self.completed = True
        if self.replacement is not None:
            self.replacement.complete()

    def abandon(self) -> None:
        """Take the new run away again: the replaced run (if any) is put back, empty parents made for it are removed.

        Raises StorageError (one line saying where the old run is) if it cannot be put back."""
        if self.replaced is not None:
            self.replacement.put_back()
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        for folder in self.made_parents:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def create_run_dir(run_dir: Path, write_initial) -> NewRunFolder:
    """Make the run folder appear complete or not at all.

    `write_initial(folder)` fills a hidden staging folder beside `run_dir` (config.yaml, the
    epoch-0 last.pt, ...), which is then renamed into place; an existing run (--overwrite,
    checked by check_run_dir) is moved aside to `.NAME.replaced-*` first, and deleted once the new
    run has a finished epoch (`NewRunFolder.complete`). A process killed at any instant leaves either
    no run folder, the old one, or a new one that --resume accepts (and perhaps the old one aside).
    The folder gets the mode a plain mkdir would (0777 minus the umask).
    """
    parent = run_dir.parent
    made = NewRunFolder(run_dir, made_parents=[p for p in (parent, *parent.parents) if not p.exists()])
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{run_dir.name}.staging-*"):  # left by a process killed during setup
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{run_dir.name}.staging-"))
    try:
        share_folder(staging)
        write_initial(staging)
        made.replacement = Replacement(run_dir, "run folder")
        os.replace(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not run_dir.exists():
            made.abandon()
        raise
    return made


def replaced_runs(run_dir: Path) -> list[Path]:
    """Runs an `--overwrite` moved aside for this run folder and never put back or deleted (its process was killed)."""
    return sorted(run_dir.parent.glob(f".{run_dir.name}{REPLACED_MARK}*"))


def repair_best_checkpoint(run_dir: Path, last_state: dict[str, Any]) -> bool:
    """last.pt is written before best.pt, so a kill between the two leaves best.pt one improvement behind.

    When last.pt says its own epoch is the best one, best.pt must hold that epoch: rewrite it from
    last.pt if it does not. Returns True when it was rewritten.
    """
    epoch = last_state["epoch"]
    if epoch < 1 or last_state.get("best_epoch") != epoch:
        return False
    best_path = RunPaths(run_dir).best
    try:
        if load_checkpoint(best_path)["epoch"] == epoch:
            return False
    except CheckpointError:
        pass
    save_checkpoint(best_path, last_state)
    return True
