"""What keeps a run safe while its epochs run, kept out of the training flow: `guarded_run`.

Inside it a first Ctrl-C / SIGTERM only asks to stop at a safe point (`RunGuard.stop_if_asked`
turns it into `Interrupted`, saying what is saved and how to resume); a diverged loss says what was
kept and what to try. Before a new run has saved its first finished epoch, a run --overwrite replaced
is put back whatever stops it (bad input, Ctrl-C, SIGTERM, a crash, another torchrun process failing),
and the message says so; a new run replacing nothing is taken away again on bad input only (an
interrupted one stays resumable from its epoch-0 last.pt).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, Optional

from seg_pet.runtime.distributed import agreed_signal, is_main
from seg_pet.runtime.errors import TrainingDiverged, is_input_error
from seg_pet.runtime.runpaths import RunPaths
from seg_pet.runtime.signals import DeferredStop, Interrupted
from seg_pet.training.rundir import NewRunFolder, resume_command


def saved_note(paths: RunPaths, epoch: int) -> str:
    return f"{paths.last} holds epoch {epoch}. Resume with: {resume_command(paths.root)}"


class RunGuard:
    """The stop request of a guarded run; every process must call `stop_if_asked` at the same points (it agrees)."""

    def __init__(self, paths: RunPaths, stop: DeferredStop) -> None:
        self.paths = paths
        self.stop = stop

    @property
    def requested(self) -> bool:
        """A stop signal reached this process (polled between steps)."""
        return self.stop.requested

    def stop_if_asked(self, epoch: int, *, finished: bool) -> None:
        """Raise Interrupted when any process got a stop signal: during `epoch` (discarded) or after it (saved)."""
        if signum := agreed_signal(self.stop.signum):
            if finished:
                raise Interrupted(signum, f"after epoch {epoch}; {saved_note(self.paths, epoch)}")
            raise Interrupted(signum, f"during epoch {epoch} (its unfinished steps are discarded); {saved_note(self.paths, epoch - 1)}")


def old_run_back(paths: RunPaths) -> str:
    return f"the new run had no finished epoch: it was removed, and the old run is back in {paths.root}"


@contextlib.contextmanager
def guarded_run(paths: RunPaths, new_folder: Optional[NewRunFolder], rows: list[Any]) -> Iterator[RunGuard]:
    """Signals deferred, divergence explained, and `new_folder` abandoned as the module says while it is not complete."""
    with DeferredStop() as stop:
        try:
            yield RunGuard(paths, stop)
        except BaseException as exc:
            old_back = new_folder is not None and not new_folder.completed and new_folder.replaced is not None
            if old_back or (new_folder is not None and not rows and is_input_error(exc)):
                new_folder.abandon()  # StorageError, saying where the old run is, if it cannot be put back
            if isinstance(exc, TrainingDiverged):
                kept = (
                    old_run_back(paths) if old_back else f"Checkpoints and metrics up to the last finished epoch are kept in {paths.root}"
                )
                raise TrainingDiverged(
                    f"{exc}; training stopped. {kept}. Try a lower optim.lr, optim.grad_clip, or train.amp: false"
                ) from None
            if old_back and isinstance(exc, Interrupted):
                raise Interrupted(exc.signum, f"before the new run finished an epoch; {old_run_back(paths)}") from None
            if old_back and not is_input_error(exc) and is_main():  # bad input: the one-line error alone (nothing changed)
                print(old_run_back(paths), file=sys.stderr)
            raise
