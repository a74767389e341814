"""`seg_pet train`: train a model; evaluates the best checkpoint on test once at the end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg_pet.cli.common import add_overrides, check_paths, positive_int
from seg_pet.config import Config, load_config
from seg_pet.runtime.distributed import launch, leave_process_group
from seg_pet.runtime.errors import SegPetError, StorageError
from seg_pet.runtime.runpaths import RunPaths
from seg_pet.runtime.signals import Interrupted, Terminated
from seg_pet.training.rundir import replaced_runs, resume_command
from seg_pet.training.train import train

DATA_PARALLEL = True  # runs under torchrun (one process per GPU)
HELP = "train a model; evaluates the best checkpoint on test once at the end"
PATHS = {"config": ("in", "file"), "resume": ("in", "dir")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config file (not needed with --resume)")
    add_overrides(p)
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--stop-after-epoch",
        type=positive_int,
        metavar="N",
        help="exit cleanly once epoch N is saved (the schedule still spans optim.epochs); continue later with --resume",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config, paths, run folder, data files, batch plan and model, then exit without writing anything",
    )


def load_train_config(args: argparse.Namespace) -> Config:
    """--config FILE, or the run's own config.yaml with --resume (the folder given is the run, wherever it moved)."""
    if args.resume is None:
        if args.config is None:
            raise SegPetError("train needs --config FILE (or --resume RUN_DIR)")
        return load_config(args.config, args.overrides)
    if args.overwrite:
        raise SegPetError("--resume continues a run and --overwrite replaces it: use one of them")
    if args.config is not None:
        raise SegPetError("--resume uses the run's own config.yaml; drop --config (use --set to change a key, e.g. optim.epochs)")
    cfg = load_config(RunPaths(args.resume).require_config("--resume").config, args.overrides)
    cfg.run.output_dir, cfg.run.name = str(args.resume.parent), args.resume.name
    return cfg


def run(args: argparse.Namespace) -> int:
    """Under torchrun every process runs this; train() joins the process group, left here whatever happens."""
    check_paths(args, PATHS)
    cfg = load_train_config(args)
    main_process = launch().rank == 0
    try:
        train(cfg, resume=args.resume is not None, overwrite=args.overwrite, stop_after_epoch=args.stop_after_epoch, dry_run=args.dry_run)
    except StorageError as exc:  # a full disk: the run stays resumable from its last complete checkpoint
        if RunPaths(cfg.run_dir).last.is_file():
            raise StorageError(f"{exc}; the run is resumable: {resume_command(cfg.run_dir)}") from None
        raise
    except Interrupted as exc:
        if main_process:
            print(f"\n{exc}", file=sys.stderr)
        return exc.exit_code
    except (Terminated, KeyboardInterrupt):  # outside the phases that say more (setup, a second Ctrl-C)
        if main_process and RunPaths(cfg.run_dir).last.is_file():
            print(f"{cfg.run_dir} is resumable: {resume_command(cfg.run_dir)}", file=sys.stderr)
        if main_process and args.overwrite and (old := replaced_runs(cfg.run_dir)):
            print(f"the run --overwrite replaced is kept in {old[-1]}", file=sys.stderr)
        raise
    finally:
        leave_process_group()
    return 0
