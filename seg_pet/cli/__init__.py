"""The command line: parse, load the config, call one function, map known errors to exit codes.

Each command is a module here with `add_arguments(parser)` and `run(args) -> int`; `COMMANDS`
maps the command name to it.

Exit codes, all decided here (`main`): 0 success; 1 a `doctor` check failed, training diverged
(NaN/Inf loss), `predict` could not read some images (the rest were predicted), `export`'s ONNX
model disagreed with torch, or under torchrun another process of the job failed first; 2 bad input
(config, flags, paths, data files, checkpoints) with a one-line message; 3 the machine refused a
write (disk full, quota, read-only), however the library reported it (runtime.fileio.storage_error_of):
one line naming the file, the old file kept, a run left resumable; 130 / 143 interrupted by Ctrl-C /
SIGTERM, wherever it lands (also in the final cleanup: `main` and `seg_pet.__main__`).

Under torchrun every process runs this; `report` decides which of them prints. Commands whose
module does not set `DATA_PARALLEL = True` refuse to run in a torchrun job of several processes.
"""

from __future__ import annotations

import argparse
import gc
import sys
import unicodedata
import warnings
from collections.abc import Sequence
from typing import Optional

from seg_pet.cli import doctor, evaluate, export, predict, report, study, train, tune
from seg_pet.runtime.distributed import has_joined, launch, lost_contact
from seg_pet.runtime.errors import SegPetError, TrainingDiverged, is_input_error
from seg_pet.runtime.fileio import storage_error_of
from seg_pet.runtime.signals import Terminated, terminate_as_exception

MAX_MESSAGE = 400  # characters of a one-line message; a longer one (a 10 MB config value) is cut in the middle

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
    if len(text) > 4 * MAX_MESSAGE:  # escape only what can be shown
        text = text[: 3 * MAX_MESSAGE] + text[-MAX_MESSAGE:]
    text = "".join(repr(ch)[1:-1] if unicodedata.category(ch) == "Cc" else ch for ch in text)
    return shorten(text) or type(exc).__name__


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    """At most `limit` characters: the head and the tail of a longer text, with how much was left out between."""
    if len(text) <= limit:
        return text
    tail = limit // 4
    return f"{text[: limit - tail]} ...[cut]... {text[-tail:]}"


def quiet_libraries() -> None:
    """Library warnings that are not the user's business on the console (image files are checked by seg_pet itself)."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", module=r"PIL\.")  # EXIF / TIFF metadata chatter ("Corrupt EXIF data", ...)


def refuse_torchrun(command: str) -> None:
    """A command that is not data-parallel, started by torchrun with several processes: one line, exit 2 (rank 0 prints)."""
    job = launch()
    if job.by_torchrun and job.world_size > 1 and not getattr(COMMANDS[command], "DATA_PARALLEL", False):
        parallel = ", ".join(name for name, module in COMMANDS.items() if getattr(module, "DATA_PARALLEL", False))
        raise SegPetError(
            f"{command} does not run under torchrun with {job.world_size} processes (only {parallel} do); "
            f"run it with plain python -m seg_pet {command} ..."
        )


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
    """Run one command; every outcome becomes an exit code here, a Ctrl-C during the error handling and cleanup too."""
    try:
        try:
            return _main(argv)
        finally:
            # A DataLoader error's traceback is a reference cycle that keeps the loader's iterator (and
            # its worker processes) alive. Collect it now, so the workers are shut down in order instead
            # of being terminated at interpreter exit (which prints "Exception ignored in atexit ...").
            gc.collect()
    except KeyboardInterrupt:
        report("interrupted", shared=True)
        return 130
    except Terminated:
        report("terminated (SIGTERM)", shared=True)
        return 143


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        # SIGTERM becomes an exception like Ctrl-C's KeyboardInterrupt: `finally` blocks and atomic
        # writes clean up, and the exit code is 143 wherever it lands.
        with terminate_as_exception():
            refuse_torchrun(args.command)
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
    except Exception as exc:
        if (gist := lost_contact(exc)) is not None:
            report(f"stopped: lost contact with another process of the job ({gist}); the process that failed first says why", shared=False)
            return 1
        if (refused := storage_error_of(exc)) is not None:  # a full disk, however the library said it: exit 3
            exc = refused
        elif not is_input_error(exc):
            raise
        # Found before the processes connected: the same in all of them. After: this process's own (its shard, its device).
        report(f"error: {one_line(exc)}", shared=not has_joined())
        return getattr(exc, "exit_code", 2)
