"""`--input` values -> the images to predict and their output names.

A file is taken whatever its extension (a non-image is then reported as failed); a folder gives its
images (IMAGE_EXTENSIONS, any case; recursive; hidden files and folders skipped), named by their
path relative to the folder; a glob pattern (`*`, `?`, `[...]`, `**` recursive) gives the files it
matches, named relative to the pattern's folder part; `**` follows symbolic links to folders but
enters each real folder once, so a link loop ends. A name never climbs out of the output folder: a
match whose path relative to the pattern's folder part goes up (`..`) is named by its own file
name. Files under the output folder are never collected, and a file given twice is predicted once.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from seg_pet.runtime.errors import SegPetError
from seg_pet.runtime.paths import walk_files

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class InputImage:
    """One image to predict and its output name: `key` is the relative path without extension (mirrors folders)."""

    path: Path
    key: PurePosixPath


def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _inside(path: Path, folder: Optional[Path]) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _key(path: Path, base: Path) -> PurePosixPath:
    """The output name of `path`: relative to `base`, without extension; its own name when that would climb out (`..`)."""
    rel = PurePosixPath(os.path.normpath(os.path.relpath(path, base)).replace(os.sep, "/"))
    if rel.is_absolute() or ".." in rel.parts:
        rel = PurePosixPath(path.name)
    return rel.with_suffix("")


def _pattern_regex(parts: Sequence[str]) -> re.Pattern:
    """Glob components (with `**`) -> a regex over '/'-joined relative file paths, as glob matches them:
    `*` and `?` never match '/', and no wildcard matches a name's leading dot."""
    pieces = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            pieces.append(r"(?:[^/.][^/]*/)*" + (r"[^/.][^/]*" if last else ""))
            continue
        piece = "" if part.startswith(".") else "(?![.])"
        i = 0
        while i < len(part):
            ch = part[i]
            close = part.find("]", i + 2)
            if ch == "*":
                piece += "[^/]*"
            elif ch == "?":
                piece += "[^/]"
            elif ch == "[" and close != -1:
                inner = part[i + 1 : close]
                inner = "^" + inner[1:] if inner.startswith("!") else inner
                piece += "[" + inner.replace("\\", "\\\\") + "]"
                i = close
            else:
                piece += re.escape(ch)
            i += 1
        pieces.append(piece if last else piece + "/")
    return re.compile("".join(pieces) + r"\Z")


def _recursive_matches(base: Path, rest: Sequence[str]) -> list[Path]:
    """What glob.glob(pattern, recursive=True) matches under `base` (files only), without following a link loop forever."""
    regex = _pattern_regex(rest)
    found = []
    for path in walk_files(base):
        if regex.match(Path(os.path.relpath(path, base)).as_posix()):
            found.append(path)
    return found


def _folder_images(folder: Path, base: Path, exclude: Optional[Path]) -> list[InputImage]:
    """Image files under `folder` (recursive, hidden names skipped), keyed relative to `base`."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or not _is_image_name(path):
            continue
        if _inside(path, exclude):
            continue
        found.append(InputImage(path, _key(path, base)))
    return sorted(found, key=lambda item: item.key.as_posix())


def _glob_images(pattern: str, exclude: Optional[Path]) -> list[InputImage]:
    """The files a pattern matches (folders it matches: their images), keyed relative to its folder part."""
    parts = Path(pattern).parts
    first_magic = next(i for i, part in enumerate(parts) if _has_magic(part))
    base = Path(*parts[:first_magic]) if first_magic else Path(".")
    found = []
    if "**" in parts:  # glob.glob would follow a symbolic-link loop forever
        matches = _recursive_matches(base, parts[first_magic:]) if base.is_dir() else []
    else:
        matches = [Path(m) for m in sorted(glob.glob(pattern))]
    for path in matches:
        if path.is_dir():
            found.extend(_folder_images(path, base, exclude))
        elif path.is_file() and not _inside(path, exclude):
            found.append(InputImage(path, _key(path, base)))
    return found


def _images_of(text: str, exclude: Optional[Path]) -> list[InputImage]:
    """One --input value -> its images; a SegPetError when it matches none."""
    path = Path(text)
    if path.is_file():
        return [InputImage(path, PurePosixPath(path.stem))]
    if path.is_dir():
        found = _folder_images(path, path, exclude)
        if not found:
            raise SegPetError(f"--input {text}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)}, any case, recursively)")
        return found
    if _has_magic(text):
        found = _glob_images(text, exclude)
        if not found:
            raise SegPetError(f"--input {text!r}: the pattern matched no files")
        return found
    raise SegPetError(f"--input {text}: no such file or folder")


def collect_inputs(specs: Sequence[str | os.PathLike], exclude: Optional[str | os.PathLike] = None) -> list[InputImage]:
    """--input values -> images to predict, in order, each once (see the module docstring).

    Files under `exclude` (the output folder) are never collected. An input that matches nothing,
    or two inputs that would write the same output name, is a SegPetError (exit code 2) before
    anything is predicted.
    """
    exclude_dir = Path(exclude).resolve() if exclude is not None else None
    unique: dict[Path, InputImage] = {}
    for spec in specs:
        for item in _images_of(os.fspath(spec), exclude_dir):  # the same file given twice is predicted once
            unique.setdefault(item.path.resolve(), item)
    by_key: dict[str, InputImage] = {}
    for item in unique.values():
        other = by_key.setdefault(item.key.as_posix().casefold(), item)
        if other is not item:
            raise SegPetError(
                f"--input: {other.path} and {item.path} would both be written as {item.key}.png; "
                "rename one, or predict them into different --out folders"
            )
    return list(unique.values())
