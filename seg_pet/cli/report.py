"""`seg_pet report`: one self-contained HTML page about one run, or comparing several."""

from __future__ import annotations

import argparse
from pathlib import Path

from seg_pet.report import build_report

HELP = "write one self-contained HTML page about a run, or comparing several runs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folder(s)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.html", help="the page to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    build_report(args.runs, args.out, overwrite=args.overwrite)
    return 0
