"""Replace safely: how an `--overwrite` of a whole folder keeps the old result until the new one is complete.

    replacing(target, what)   the old folder is moved aside (hidden, `.NAME.replaced-*` beside it) while
                              the block builds the new one in its place. The block completes: the old
                              one is deleted. It fails or is interrupted (any exception, Ctrl-C and
                              SIGTERM included): the incomplete new folder is deleted and the old one
                              put back; if even that fails, the error says in one line where the old
                              one is. Without an old folder a failed new one is deleted, unless the
                              exception is one of `keep_new_on` (a study interrupted on purpose keeps
                              its finished runs).

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


@contextlib.contextmanager
def replacing(target: Path, what: str, keep_new_on: tuple[type[BaseException], ...] = ()) -> Iterator[Optional[Path]]:
    """Build a new `target` folder in the block; yields where the old one waits (None when there was none)."""
    target = Path(target)
    aside: Optional[Path] = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{REPLACED_MARK}"))
        os.replace(target, aside)  # onto the empty folder just made: atomic
    try:
        yield aside
    except BaseException as exc:
        if aside is None:
            if not isinstance(exc, keep_new_on):
                shutil.rmtree(target, ignore_errors=True)
            raise
        try:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(aside, target)
        except OSError as restore:
            raise StorageError(
                f"{what} {target}: the new one is incomplete and the old one could not be put back "
                f"({restore.strerror or restore}); it is in {aside}: move it back by hand"
            ) from exc
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
