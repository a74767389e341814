"""`seg_pet doctor`: check data, model and loss wiring for the classic failure modes."""

from __future__ import annotations

import argparse
from pathlib import Path

from seg_pet.cli.common import add_overrides, check_paths
from seg_pet.config import load_config
from seg_pet.doctor.run import run_doctor
from seg_pet.runtime.distributed import leave_process_group

DATA_PARALLEL = True  # under torchrun every process joins for the `processes` check
HELP = "check data, model and loss wiring for the classic failure modes"
PATHS = {"config": ("in", "file"), "out": ("out", "dir")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True)
    add_overrides(p)
    p.add_argument("--out", type=Path, metavar="DIR", help="also save a class-balance bar chart in DIR (by default doctor writes nothing)")


def run(args: argparse.Namespace) -> int:
    check_paths(args, PATHS)
    cfg = load_config(args.config, args.overrides)  # bad config: one line, exit 2, before any process group
    try:
        return run_doctor(cfg, out=args.out)
    finally:
        leave_process_group()  # under torchrun
