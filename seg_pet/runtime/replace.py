"""Replace safely: how an `--overwrite` of a whole folder keeps the old result until the new one is complete.

    replacing(target, what)   the old folder is moved aside (hidden, `.NAME.replaced-*` beside it) while
                              the block builds the new one in its place. The block completes: the old
                              one is deleted. It fails or is interrupted (any exception, Ctrl-C and
                              SIGTERM included): the incomplete new folder is deleted and the old one
                              put back; if even that fails, the error says in one line where the old
                              one is. Without an old folder a failed new one is deleted, unless the
                              exception is one of `keep_new_on` (a study interrupted on purpose keeps
                              its finished runs).
    Replacement(target, what) the same rule where the new folder is complete at a point the caller
                              decides (`complete()`; `put_back()` on failure): train --overwrite, whose
                              new run is complete once it has saved its first finished epoch

Files are replaced the same way, one at a time, by runtime.fileio.atomic_path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from seg_pet.runtime.errors import StorageError

REPLACED_MARK = ".replaced-"


class Replacement:
    """An old folder moved aside while a new one is built in its place: `complete` deletes the old one,
    `put_back` deletes the new one and moves the old one back (or says in one line where it is)."""

    def __init__(self, target: Path, what: str) -> None:
        self.target = Path(target)
        self.what = what
        self.aside: Optional[Path] = None
        if self.target.exists():
            aside = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}{REPLACED_MARK}"))
            try:
                os.replace(self.target, aside)  # onto the empty folder just made: atomic
            except BaseException:
                aside.rmdir()
                raise
            self.aside = aside

    def complete(self) -> None:
        """The new folder is complete: the old one goes."""
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def put_back(self) -> None:
        """The new folder is incomplete: it goes and the old one comes back; StorageError (one line) if that fails."""
        if self.aside is None:
            return
        try:
            shutil.rmtree(self.target, ignore_errors=True)
            os.replace(self.aside, self.target)
        except OSError as restore:
            raise StorageError(
                f"{self.what} {self.target}: the new one is incomplete and the old one could not be put back "
                f"({restore.strerror or restore}); it is in {self.aside}: move it back by hand"
            ) from None
        self.aside = None


@contextlib.contextmanager
def replacing(target: Path, what: str, keep_new_on: tuple[type[BaseException], ...] = ()) -> Iterator[Optional[Path]]:
    """Build a new `target` folder in the block; yields where the old one waits (None when there was none)."""
    target = Path(target)
    replacement = Replacement(target, what)
    try:
        yield replacement.aside
    except BaseException as exc:
        if replacement.aside is None:
            if not isinstance(exc, keep_new_on):
                shutil.rmtree(target, ignore_errors=True)
            raise
        try:
            replacement.put_back()
        except StorageError as failed:
            raise failed from exc
        raise
    replacement.complete()
