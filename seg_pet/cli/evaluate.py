"""`seg_pet evaluate`: evaluate a trained run (default: the validation split)."""

from __future__ import annotations

import argparse
from pathlib import Path

from seg_pet.cli.common import add_overrides, check_paths
from seg_pet.evaluation import evaluate_run

HELP = "evaluate a trained run (default: validation split)"
PATHS = {"run": ("in", "dir"), "checkpoint": ("in", "file"), "out": ("out", "file"), "details": ("out", "dir")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, metavar="RUN_DIR")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--checkpoint", default="best", help="best | last | path to a checkpoint file")
    add_overrides(p)
    p.add_argument("--out", type=Path, metavar="FILE.json", help="also write the metrics to this JSON file")
    p.add_argument(
        "--details", type=Path, metavar="DIR", help="write per_image.csv and worst/ (the lowest-mIoU images) into this new folder"
    )
    p.add_argument("--force", action="store_true", help="evaluate on test even though the run already did")


def run(args: argparse.Namespace) -> int:
    check_paths(args, PATHS)
    evaluate_run(
        args.run,
        split=args.split,
        checkpoint=args.checkpoint,
        overrides=args.overrides,
        out=args.out,
        details=args.details,
        force=args.force,
    )
    return 0
