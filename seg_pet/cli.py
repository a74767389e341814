"""Command line: parse, load the config, call one function, map known errors to exit codes.

Exit codes: 0 success; 1 a `doctor` check failed or training diverged (NaN/Inf loss);
2 bad input (config, flags, data files, checkpoints) with a one-line message;
130 / 143 interrupted by Ctrl-C / SIGTERM after saving a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from seg_pet.errors import SegPetError, TrainingDiverged, is_input_error


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seg_pet", description="Semantic segmentation on Oxford-IIIT Pet that tells the truth.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    overrides = dict(action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key (value parsed as YAML); repeatable")

    p = sub.add_parser("train", help="train a model; evaluates the best checkpoint on test once at the end")
    p.add_argument("--config", type=Path, help="YAML config file (not needed with --resume)")
    p.add_argument("--set", dest="overrides", **overrides)
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--stop-after-epoch", type=_positive_int, metavar="N",
                   help="exit cleanly once epoch N is saved (the schedule still spans optim.epochs); continue later with --resume")

    p = sub.add_parser("evaluate", help="evaluate a trained run (default: validation split)")
    p.add_argument("--run", type=Path, required=True, metavar="RUN_DIR")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--checkpoint", default="best", help="best | last | path to a checkpoint file")
    p.add_argument("--set", dest="overrides", **overrides)
    p.add_argument("--out", type=Path, metavar="FILE.json", help="also write the metrics to this JSON file")
    p.add_argument("--force", action="store_true", help="evaluate on test even though the run already did")

    p = sub.add_parser("doctor", help="check data, model and loss wiring for the classic failure modes")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--set", dest="overrides", **overrides)
    p.add_argument("--out", type=Path, metavar="DIR", help="also save a class-balance bar chart in DIR (by default doctor writes nothing)")

    p = sub.add_parser("study", help="run the CE-vs-Dice loss study grid")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--set", dest="overrides", **overrides)
    p.add_argument("--overwrite", action="store_true", help="replace an existing study folder")
    return parser


def one_line(exc: BaseException) -> str:
    """The message of a known error; errors re-raised by DataLoader workers carry a traceback: keep its last line."""
    text = str(exc).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if text.startswith("seg_pet.errors.") else text
    return text.splitlines()[0] if text else type(exc).__name__


class Terminated(BaseException):
    """SIGTERM outside the phases that handle it themselves (training saves and raises Interrupted).

    A BaseException, like KeyboardInterrupt, so `except Exception` in library code cannot swallow it.
    """


_MAIN_PID = os.getpid()


def _terminate(signum, frame):
    if os.getpid() != _MAIN_PID:  # a forked DataLoader worker: die as SIGTERM's default action would
        os._exit(128 + signum)
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM becomes an exception like Ctrl-C's KeyboardInterrupt: `finally` blocks and atomic
    # writes clean up, and the exit code is 143 wherever it lands.
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return run_command(args)
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return 143
    except TrainingDiverged as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (SegPetError, RuntimeError) as exc:
        if not is_input_error(exc):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        # A DataLoader error's traceback is a reference cycle that keeps the loader's iterator (and
        # its worker processes) alive. Collect it now, so the workers are shut down in order instead
        # of being terminated at interpreter exit (which prints "Exception ignored in atexit ...").
        gc.collect()


def run_command(args: argparse.Namespace) -> int:
    from seg_pet.config import load_config

    if args.command == "train":
        from seg_pet.train import Interrupted, resume_command, train

        if args.resume is not None:
            if args.overwrite:
                raise SegPetError("--resume continues a run and --overwrite replaces it: use one of them")
            if args.config is not None:
                raise SegPetError("--resume uses the run's own config.yaml; drop --config (use --set to change a key, e.g. optim.epochs)")
            cfg = load_config(args.resume / "config.yaml", args.overrides) if (args.resume / "config.yaml").is_file() else None
            if cfg is None:
                raise SegPetError(f"--resume {args.resume}: not a seg_pet run folder (no config.yaml)")
            # The folder given is the run, wherever it has been moved since.
            cfg.run.output_dir, cfg.run.name = str(args.resume.parent), args.resume.name
        elif args.config is None:
            raise SegPetError("train needs --config FILE (or --resume RUN_DIR)")
        else:
            cfg = load_config(args.config, args.overrides)
        try:
            train(cfg, resume=args.resume is not None, overwrite=args.overwrite, stop_after_epoch=args.stop_after_epoch)
        except Interrupted as exc:
            print(f"\n{exc}", file=sys.stderr)
            return exc.exit_code
        except (Terminated, KeyboardInterrupt):  # outside the phases that say more (setup, a second Ctrl-C)
            if (cfg.run_dir / "checkpoints" / "last.pt").is_file():
                print(f"{cfg.run_dir} is resumable: {resume_command(cfg.run_dir)}", file=sys.stderr)
            raise
        return 0
    if args.command == "evaluate":
        from seg_pet.evaluate import evaluate_run

        evaluate_run(args.run, split=args.split, checkpoint=args.checkpoint, overrides=args.overrides, out=args.out, force=args.force)
        return 0
    if args.command == "doctor":
        from seg_pet.diagnostics import run_doctor

        cfg = load_config(args.config, args.overrides)
        return run_doctor(cfg, out=args.out)
    if args.command == "study":
        from seg_pet.study import run_study

        run_study(args.config, args.overrides, overwrite=args.overwrite)
        return 0
    raise AssertionError(args.command)
