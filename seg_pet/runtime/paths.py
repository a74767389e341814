"""Every path a command takes, checked before any work: the right kind, readable or writable, a name the OS can hold.

One checker for all commands and config keys, so every path problem reads the same way,
`WHAT PATH: PROBLEM` (WHAT is the flag or key that gave the path):

    check_input(path, what, kind)    exists, is a file / folder, and can be read
    check_output(path, what, kind)   "may I write here": not the wrong kind, its folder can be
                                     created and written, and it is not one of a run's own files
    check_text(text, what)           no control characters (they end up in file names and logs)
    check_name(path, what)           not empty, no control characters, short enough for the OS

Permissions: `os.access` answers for the current user. Root may read and write anything, so a
file or folder without any read (or write) bit is treated as unreadable (read-only) even for
root: it was marked so on purpose (the disk cache follows the same rule).

A run folder (`config.yaml` + `checkpoints/`) owns the names in `RUN_ENTRIES`; user-chosen outputs
(`evaluate --out`, `predict --out`, `export --out`, `doctor --out`, `run.output_dir`) may sit in a
run folder under other names, but never replace or enter those, nor the run folder itself.

    OutputRoot(root, what)           the output-root rule: every file a command writes under the
                                     output it was given (`predict --out DIR`; `export --out M.onnx`
                                     and its sidecar) is planned through `.file(...)`, which refuses,
                                     before anything is written, a path that resolves (after symbolic
                                     links and `..`) outside the root, onto a run's own entries, or
                                     onto something that is not a regular file (a folder)
    walk_files(folder)               every file under a folder, following symbolic links to folders
                                     but entering each real folder once (a link loop ends)
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from seg_pet.runtime.errors import SegPetError
from seg_pet.runtime.fileio import partial_name
from seg_pet.runtime.runpaths import RUN_ENTRIES, RunPaths

NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs, APFS, NTFS in UTF-16 units)
PATH_MAX = 4096  # bytes in a whole path (Linux)


def check_text(text: str, what: str, error: type[SegPetError] = SegPetError) -> str:
    """Refuse control characters (newline, tab, NUL, escape...) in a value that becomes a name or a log line."""
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text):
        raise error(f"{what}: must not contain control characters, got {text!r}")
    return text


def _examined(check):
    """An OSError while looking at a path (a folder on the way that may not be searched) is that path's problem, in one line."""

    def checked(path, what, *args, **kwargs):
        try:
            return check(path, what, *args, **kwargs)
        except OSError as exc:
            raise SegPetError(f"{what} {path}: cannot be examined ({exc.strerror or type(exc).__name__})") from None
        except RuntimeError as exc:  # Path.resolve on a symbolic-link loop
            raise SegPetError(f"{what} {path}: cannot be examined ({exc})") from None

    checked.__doc__ = check.__doc__
    return checked


@_examined
def check_input(path: str | os.PathLike, what: str, kind: str = "file") -> Path:
    """An existing, readable file (kind="file") or folder (kind="dir")."""
    path = check_name(path, what)
    if not path.exists():
        broken = " (a broken symbolic link)" if os.path.lexists(path) else ""
        raise SegPetError(f"{what} {path}: no such {'file' if kind == 'file' else 'folder'}{broken}")
    _check_kind(path, what, kind)
    if not _readable(path, folder=kind == "dir"):
        raise SegPetError(f"{what} {path}: not readable (permission denied)")
    return path


@_examined
def check_output(path: str | os.PathLike, what: str, kind: str = "file", *, run_folder: bool = False) -> Path:
    """A file or folder this command may create or replace: see the module docstring.

    `run_folder`: the path is the command's own run folder (train), which may be a run folder itself.
    """
    path = check_name(path, what)
    if kind == "file":
        name = partial_name(path)  # the temporary name an atomic write uses beside it must fit too
        if len(os.fsencode(name)) > NAME_MAX:
            raise SegPetError(
                f"{what} {path}: the file name is too long ({len(os.fsencode(path.name))} bytes; at most "
                f"{NAME_MAX - len(os.fsencode(name)) + len(os.fsencode(path.name))})"
            )
    if os.path.lexists(path) and not path.exists():
        raise SegPetError(f"{what} {path}: is a broken symbolic link")
    if path.exists():
        _check_kind(path, what, kind)
        if not _writable(path, folder=kind == "dir"):
            raise SegPetError(f"{what} {path}: not writable (permission denied)")
    else:
        _check_creatable(path, what)
    _check_not_a_run_entry(path, what, skip_self=run_folder)
    return path


class OutputRoot:
    """Where one command writes: every file it plans goes through `file()`, checked before any work."""

    def __init__(self, root: str | os.PathLike, what: str):
        self.root, self.what = Path(root), what
        self.resolved = self.root.resolve()

    def file(self, relative: str | os.PathLike, what: str | None = None) -> Path:
        """ROOT/relative, refused unless it stays inside the root, is no run's own file, and is not a folder."""
        what = what or self.what
        path = self.root / relative
        try:
            target = path.resolve()
        except (OSError, RuntimeError) as exc:  # a symbolic-link loop on the way
            raise SegPetError(f"{what} {path}: cannot be examined ({exc})") from None
        if target != self.resolved and self.resolved not in target.parents:
            raise SegPetError(f"{what} {path}: resolves to {target}, outside {self.root}; refusing to write there")
        check_output(path, what, "file")
        return path

    def sibling(self, name: str, what: str) -> Path:
        """A file beside a single-file root (export's sidecar beside the model), under the same rules."""
        path = self.root.with_name(name)
        if path.resolve().parent != self.resolved.parent:
            raise SegPetError(f"{what} {path}: resolves to {path.resolve()}, not beside {self.root}; refusing to write there")
        check_output(path, what, "file")
        return path


def walk_files(folder: Path) -> Iterator[Path]:
    """Every file under `folder` (symbolic links to folders followed, each real folder entered once: no loop)."""
    seen: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        info = os.stat(top)
        if (info.st_dev, info.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs.sort()
        for name in sorted(files):
            yield Path(top) / name


def is_writable_dir(folder: Path) -> bool:
    """An existing folder this process may create files in."""
    return folder.is_dir() and _writable(folder, folder=True)


# --------------------------------------------------------------------------- the checks


def check_name(path: str | os.PathLike, what: str) -> Path:
    """A path the OS can hold: not empty, no control characters, names and the whole path not too long."""
    text = os.fspath(path)
    if not text:
        raise SegPetError(f"{what}: the path is empty (use '.' for the current folder)")
    check_text(text, what)
    if len(os.fsencode(text)) > PATH_MAX:
        raise SegPetError(f"{what}: the path is {len(os.fsencode(text))} bytes long; at most {PATH_MAX}")
    for part in Path(text).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise SegPetError(f"{what}: the name {part[:24]}... is {len(os.fsencode(part))} bytes long; at most {NAME_MAX}")
    return Path(text)


def _check_kind(path: Path, what: str, kind: str) -> None:
    if kind == "file" and path.is_dir():
        raise SegPetError(f"{what} {path}: is a folder, expected a file")
    if kind == "dir" and not path.is_dir():
        raise SegPetError(f"{what} {path}: is a file, expected a folder")
    if kind == "file" and not path.is_file():
        raise SegPetError(f"{what} {path}: is not a regular file")


def _check_creatable(path: Path, what: str) -> None:
    """The nearest existing ancestor must be a writable folder (the rest is created)."""
    ancestor = path.parent
    while not ancestor.exists():
        if os.path.lexists(ancestor):
            raise SegPetError(f"{what} {path}: {ancestor} is a broken symbolic link")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SegPetError(f"{what} {path}: {ancestor} is a file, not a folder")
    if not _writable(ancestor, folder=True):
        raise SegPetError(f"{what} {path}: cannot create it, {ancestor} is not writable (permission denied)")


def _check_not_a_run_entry(path: Path, what: str, skip_self: bool) -> None:
    target = path.resolve()
    for folder in target.parents if skip_self else (target, *target.parents):
        if not RunPaths(folder).is_run_folder():
            continue
        if folder == target:
            raise SegPetError(f"{what} {path}: is a run folder; refusing to write into it (choose a new folder)")
        entry = target.relative_to(folder).parts[0]
        if entry in RUN_ENTRIES:
            raise SegPetError(f"{what} {path}: refusing to write over {folder}'s own {entry} (choose another name)")
        return


def _readable(path: Path, folder: bool) -> bool:
    mode = path.stat().st_mode
    wanted = os.R_OK | os.X_OK if folder else os.R_OK
    return bool(stat.S_IMODE(mode) & 0o444) and os.access(path, wanted)


def _writable(path: Path, folder: bool) -> bool:
    mode = path.stat().st_mode
    wanted = os.W_OK | os.X_OK if folder else os.W_OK
    return bool(stat.S_IMODE(mode) & 0o222) and os.access(path, wanted)
