"""Atomic file writes: a process killed at any instant leaves either the old file or the new one.

Every JSON, CSV, PNG and checkpoint the project writes goes through `atomic_write`:
write to a temporary file in the same folder, flush, then `os.replace` (atomic on POSIX
and Windows when source and target are on one filesystem). Temporary files are named
`.NAME.partial-XXXX`; a process killed mid-write leaves one behind, which
`remove_partial_files` deletes (training does so when it resumes a run).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

PARTIAL_MARK = ".partial-"


def _partial_prefix(path: Path) -> str:
    return f".{path.name}{PARTIAL_MARK}"


def is_partial_file(path: str | os.PathLike) -> bool:
    """True for a temporary file left by an atomic write that never finished."""
    name = Path(path).name
    return name.startswith(".") and PARTIAL_MARK in name


def remove_partial_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes under `folder`; returns what was removed."""
    removed = []
    for path in Path(folder).rglob(f".*{PARTIAL_MARK}*"):
        if path.is_file() and is_partial_file(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _default_mode() -> int:
    """The permissions a plain open() would give (mkstemp makes files private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for libraries that want a filename (matplotlib, torch.save)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_partial_prefix(path), suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:  # the library closed it; flush it to disk before the rename
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success it replaces `path`, on error it is removed."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def to_jsonable(value: Any) -> Any:
    """NaN and Inf are not JSON: write them as null (NaN IoU means 'class absent, not scored')."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return to_jsonable(value.item())
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_write(path) as f:
        json.dump(to_jsonable(data), f, indent=2, allow_nan=False)
        f.write("\n")
