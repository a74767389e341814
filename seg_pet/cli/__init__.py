"""The command line: parse, load the config, call one function, map known errors to exit codes.

Each command is a module here with `add_arguments(parser)` and `run(args) -> int`; `COMMANDS`
maps the command name to it.

Exit codes: 0 success; 1 a `doctor` check failed, training diverged (NaN/Inf loss), `predict`
could not read some images (the rest were predicted), or `export`'s ONNX model disagreed with torch;
2 bad input (config, flags, paths, data files, checkpoints) with a one-line message;
3 the machine refused a write (disk full, quota, read-only): one line naming the file, the old file
kept, a run left resumable; 130 / 143 interrupted by Ctrl-C / SIGTERM after saving a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import gc
import sys
import unicodedata
from collections.abc import Sequence
from typing import Optional

from seg_pet.cli import doctor, evaluate, export, predict, study, train
from seg_pet.runtime.errors import SegPetError, TrainingDiverged, is_input_error
from seg_pet.runtime.signals import Terminated, terminate_as_exception

COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "doctor": doctor,
    "study": study,
    "predict": predict,
    "export": export,
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # SIGTERM becomes an exception like Ctrl-C's KeyboardInterrupt: `finally` blocks and atomic
        # writes clean up, and the exit code is 143 wherever it lands.
        with terminate_as_exception():
            return COMMANDS[args.command].run(args)
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
        return getattr(exc, "exit_code", 2)
    finally:
        # A DataLoader error's traceback is a reference cycle that keeps the loader's iterator (and
        # its worker processes) alive. Collect it now, so the workers are shut down in order instead
        # of being terminated at interpreter exit (which prints "Exception ignored in atexit ...").
        gc.collect()
