"""`seg_pet tune`: search config values with Optuna on validation mIoU (docs/tune.md).

Exit codes: 0 the search ran (or already had its trials); 1 a worker process crashed (its log says why);
2 bad input (config, space file, storage, study name, Optuna missing), before any trial; 130 / 143
interrupted, with the finished trials' results written.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from seg_pet.cli.common import add_overrides, check_paths, positive_int
from seg_pet.runtime.signals import Interrupted
from seg_pet.tune import run_tune

HELP = "search config values with Optuna on validation mIoU; never reads the test split"
PATHS = {"config": ("in", "file"), "space": ("in", "file"), "out": ("out", "dir")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="the base config every trial starts from")
    p.add_argument("--space", type=Path, required=True, metavar="SPACE.yaml", help="the search space (configs/tune_slice.yaml)")
    p.add_argument(
        "--trials", type=positive_int, required=True, metavar="N", help="finished (complete or pruned) trials the study ends with"
    )
    p.add_argument("--jobs", type=positive_int, default=1, metavar="J", help="worker processes sharing the study (default 1)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    p.add_argument("--study", metavar="NAME", help="study name (default: the space file's name)")
    p.add_argument("--out", type=Path, metavar="DIR", help="study folder (default: <run.output_dir>/<study>)")
    add_overrides(p)


def run(args: argparse.Namespace) -> int:
    check_paths(args, PATHS)
    command = "python -m seg_pet tune " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["tune"] else [])
    try:
        outcome = run_tune(
            args.config,
            args.space,
            args.trials,
            jobs=args.jobs,
            storage=args.storage,
            study=args.study,
            out=args.out,
            overrides=args.overrides,
            command=command,
        )
    except Interrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return exc.exit_code
    print(outcome.summary)
    print(f"wrote {outcome.out / 'summary.md'}, trials.csv, best.yaml (when a trial completed) and the plots")
    return 1 if outcome.workers_failed else 0
