"""`seg_pet study`: run the CE-vs-Dice loss study grid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg_pet.cli.common import add_overrides, check_paths
from seg_pet.runtime.signals import Interrupted
from seg_pet.study.run import run_study

HELP = "run the CE-vs-Dice loss study grid"
PATHS = {"config": ("in", "file")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True)
    add_overrides(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing study folder")


def run(args: argparse.Namespace) -> int:
    check_paths(args, PATHS)
    try:
        run_study(args.config, args.overrides, overwrite=args.overwrite)
    except Interrupted as exc:  # the finished runs, the summary and the plots are written
        print(f"\n{exc}", file=sys.stderr)
        return exc.exit_code
    return 0
