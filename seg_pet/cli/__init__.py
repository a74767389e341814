"""The command line: parse, load the config, call one function, map known errors to exit codes.

Each command is a module here with `add_arguments(parser)` and `run(args) -> int`; `COMMANDS`
maps the command name to it.

Exit codes: 0 success; 1 a `doctor` check failed, training diverged (NaN/Inf loss), `predict`
could not read some images (the rest were predicted), `export`'s ONNX model disagreed with torch, or
under torchrun another process of the job failed first; 2 bad input (config, flags, paths, data
files, checkpoints) with a one-line message; 3 the machine refused a write (disk full, quota,
read-only): one line naming the file, the old file kept, a run left resumable; 130 / 143
interrupted by Ctrl-C / SIGTERM after saving a resumable checkpoint.

Under torchrun every process runs this; `report` decides which of them prints.
"""

from __future__ import annotations

import argparse
import gc
import sys
import unicodedata
from collections.abc import Sequence
from typing import Optional

from seg_pet.cli import doctor, evaluate, export, predict, report, study, train, tune
from seg_pet.runtime.distributed import has_joined, launch, lost_contact
from seg_pet.runtime.errors import SegPetError, TrainingDiverged, is_input_error
from seg_pet.runtime.signals import Terminated, terminate_as_exception

COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "doctor": doctor,
    "study": study,
    "tune": tune,
    "predict": predict,
    "export": export,
    "report": report,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seg_pet", description="Semantic segmentation on Oxford-IIIT Pet that tells the truth.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP))
    return parser


def one_line(exc: BaseException) -> str:
    """The message of a known error; errors re-raised by DataLoader workers carry a traceback: keep its last line.

    Control characters that came in with the input (a key with a newline in it) are shown escaped, so
    the message stays one line and shows what was there."""
    text = str(exc).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if text.startswith("seg_pet.") else text
    text = "".join(repr(ch)[1:-1] if unicodedata.category(ch) == "Cc" else ch for ch in text)
    return text or type(exc).__name__


def report(line: str, *, shared: bool) -> None:
    """One line on stderr. Under torchrun an outcome all processes share (bad input found before they
    connected, a stop or a NaN loss they agreed on) is printed by rank 0 alone; a process's own failure
    is printed by that process, after its rank."""
    job = launch()
    if not job.by_torchrun:
        print(line, file=sys.stderr)
    elif not shared:
        error, _, rest = line.partition("error: ")
        print(f"error: rank {job.rank}: {rest}" if not error and rest else f"rank {job.rank}: {line}", file=sys.stderr)
    elif job.rank == 0:
        print(line, file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # SIGTERM becomes an exception like Ctrl-C's KeyboardInterrupt: `finally` blocks and atomic
        # writes clean up, and the exit code is 143 wherever it lands.
        with terminate_as_exception():
            return COMMANDS[args.command].run(args)
    except Terminated:
        report("terminated (SIGTERM)", shared=True)
        return 143
    except TrainingDiverged as exc:
        report(f"error: {one_line(exc)}", shared=True)  # under torchrun the processes agree on it
        return 1
    except KeyboardInterrupt:
        report("interrupted", shared=True)
        return 130
    except (SegPetError, RuntimeError) as exc:
        if (gist := lost_contact(exc)) is not None:
            report(f"stopped: lost contact with another process of the job ({gist}); the process that failed first says why", shared=False)
            return 1
        if not is_input_error(exc):
            raise
        # Found before the processes connected: the same in all of them. After: this process's own (its shard, its device).
        report(f"error: {one_line(exc)}", shared=not has_joined())
        return getattr(exc, "exit_code", 2)
    finally:
        # A DataLoader error's traceback is a reference cycle that keeps the loader's iterator (and
        # its worker processes) alive. Collect it now, so the workers are shut down in order instead
        # of being terminated at interpreter exit (which prints "Exception ignored in atexit ...").
        gc.collect()
