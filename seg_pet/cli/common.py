"""Argument types and options shared by several commands, and the check of every path a command is given."""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from seg_pet.runtime.paths import check_input, check_output

RUN_CHECKPOINTS = ("best", "last")  # --checkpoint names of a run's own files; anything else is a path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config key (value parsed as YAML); repeatable",
    )


def check_paths(args: argparse.Namespace, spec: dict[str, tuple[str, str]]) -> None:
    """Check each path argument before the command starts (seg_pet.runtime.paths).

    `spec`: argument name -> (direction, kind); direction "in" (must exist and be readable) or
    "out" (may be created or replaced here); kind "file", "dir", or "any" (a file or a folder; a
    glob pattern or a missing path is left to the command, which explains what it looked for).
    """
    for name, (direction, kind) in spec.items():
        value = getattr(args, name, None)
        flag = "--" + name.replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            if item is None or (name == "checkpoint" and item in RUN_CHECKPOINTS):
                continue
            if kind == "any":
                if not glob.has_magic(str(item)) and Path(item).exists():
                    check_input(item, flag, "dir" if Path(item).is_dir() else "file")
            elif direction == "in":
                check_input(item, flag, kind)
            else:
                check_output(item, flag, kind)
