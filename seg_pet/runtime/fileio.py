"""Atomic file writes: a process killed at any instant leaves either the old file or the new one.

Every JSON, CSV, PNG and checkpoint the project writes goes through `atomic_write`:
write to a temporary file in the same folder, flush, then `os.replace` (atomic on POSIX
and Windows when source and target are on one filesystem). Temporary files are named
`.NAME.partial-PID-XXXX` (PID: the writing process); a process killed mid-write leaves one behind,
which `remove_partial_files` deletes, but only when that process is gone: another process's write
in progress (a training writing into the same folder) is never touched, nor a name without a PID.

A write the machine refuses (no space left, quota, read-only filesystem, I/O error) becomes a
one-line `StorageError` naming the file; the temporary file is removed and the old file stays.
`storage_error_of` finds such a refusal however a library reports it (an OSError somewhere in the
exception's chain, or torch.save's "unexpected pos" / "file write failed" RuntimeError): the CLI
maps every one of them to exit code 3.

Modes: files get 0666 minus the umask (0644 with the usual umask 022), folders 0777 minus the
umask (0755), as plain `open()` and `mkdir` would; `private_tempdir`'s owner-only folders are
opened up to that mode when they become real folders (`share_folder`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seg_pet.runtime.errors import StorageError

PARTIAL_MARK = ".partial-"
# What a full or refusing disk raises; other OSErrors (a missing folder, a bug) are not the machine's fault.
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


PID_DIGITS = 7  # /proc/sys/kernel/pid_max is at most 4194304
# torch.save reports a failed write as a RuntimeError from its zip writer, without the OSError.
TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def _partial_prefix(path: Path) -> str:
    return f".{path.name}{PARTIAL_MARK}{os.getpid()}-"


def partial_name(path: Path) -> str:
    """The longest name a temporary file of an atomic write of `path` gets (a PID and 8 random characters)."""
    return f".{path.name}{PARTIAL_MARK}{'9' * PID_DIGITS}-{'x' * 8}{path.suffix}"


def storage_error(path: str | os.PathLike, exc: OSError) -> StorageError | None:
    """A one-line StorageError for a write the machine refused, or None when `exc` is some other error."""
    reason = STORAGE_ERRNOS.get(exc.errno)
    if reason is None:
        return None
    advice = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "check the disk and its permissions"
    return StorageError(f"cannot write {path}: {reason}; the previous file is unchanged; {advice}, then run the command again")


def storage_error_of(exc: BaseException, path: str | os.PathLike | None = None) -> StorageError | None:
    """The one-line StorageError for any exception that is the machine refusing a write, else None.

    Looks through the exception's chain (__cause__, __context__) for an OSError with a storage errno,
    and recognises torch.save's RuntimeError for a failed write (which drops the OSError). `path`
    names the file when the exception does not (torch's, or an OSError without a filename)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageError):
            return current
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return storage_error(path or current.filename or "a file", current)
        if isinstance(current, RuntimeError) and any(mark in str(current) for mark in TORCH_WRITE_FAILURES):
            gist = " ".join(str(current).split())[-120:]
            return StorageError(
                f"cannot write {path or 'a file'}: the write failed ({gist}); the disk is probably full; "
                "the previous file is unchanged; free some space, then run the command again"
            )
        current = current.__cause__ or current.__context__
    return None


def is_partial_file(path: str | os.PathLike) -> bool:
    """True for a temporary file left by an atomic write that never finished."""
    name = Path(path).name
    return name.startswith(".") and PARTIAL_MARK in name


def partial_owner(path: str | os.PathLike) -> int | None:
    """The PID of the process that made a temporary file, or None when its name carries none."""
    tail = Path(path).name.split(PARTIAL_MARK, 1)[-1]
    pid, sep, _ = tail.partition("-")
    return int(pid) if sep and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_partial_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes under `folder` whose writer is gone; returns what was removed.

    A file of a process still running (this one included) or without a PID in its name is left alone."""
    removed = []
    for path in Path(folder).rglob(f".*{PARTIAL_MARK}*"):
        owner = partial_owner(path)
        if owner is None or owner == os.getpid() or _alive(owner):
            continue
        if path.is_file() and is_partial_file(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    """The permissions a plain open() would give (mkstemp makes files private, 0600)."""
    return 0o666 & ~_umask()


def share_folder(folder: str | os.PathLike) -> None:
    """Give a folder made by tempfile.mkdtemp (0700) the mode a plain mkdir would (0777 minus the umask)."""
    os.chmod(folder, 0o777 & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for libraries that want a filename (matplotlib, torch.save)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_partial_prefix(path), suffix=path.suffix)
    except OSError as exc:
        raise storage_error(path, exc) or exc from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:  # the library closed it; flush it to disk before the rename
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, Exception) and not isinstance(exc, StorageError) and (refused := storage_error_of(exc, path)) is not None:
            raise refused from None
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
