"""What keeps a run safe while its epochs run, kept out of the training flow: `guarded_run`.

Inside it a first Ctrl-C / SIGTERM only asks to stop at a safe point (`RunGuard.stop_if_asked`
turns it into `Interrupted`, saying what is saved and how to resume); a diverged loss says what was
kept and what to try; bad input found while reading pixels, before this new run finished an epoch,
takes the run folder away again (and puts back a run --overwrite replaced).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

from seg_pet.runtime.distributed import agreed_signal
from seg_pet.runtime.errors import SegPetError, TrainingDiverged, is_input_error
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


@contextlib.contextmanager
def guarded_run(paths: RunPaths, new_folder: Optional[NewRunFolder], rows: list[Any]) -> Iterator[RunGuard]:
    """Signals deferred, divergence explained, and `new_folder` abandoned on bad input while `rows` (finished epochs) is empty."""
    with DeferredStop() as stop:
        try:
            yield RunGuard(paths, stop)
        except TrainingDiverged as exc:
            raise TrainingDiverged(
                f"{exc}; training stopped. Checkpoints and metrics up to the last finished epoch are kept in {paths.root}. "
                "Try a lower optim.lr, optim.grad_clip, or train.amp: false"
            ) from None
        except (SegPetError, RuntimeError) as exc:
            # A DataLoader worker re-raises bad input (a truncated image, a trimap value outside 1..3) with its type.
            if new_folder is not None and not rows and is_input_error(exc):
                new_folder.abandon()
            raise
