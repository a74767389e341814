"""Ctrl-C and SIGTERM: who handles them, and how a stop becomes an exit code.

    terminate_as_exception  the CLI: SIGTERM raises `Terminated`, like Ctrl-C raises KeyboardInterrupt,
                            so `finally` blocks and atomic writes clean up and the exit code is 143
    DeferredStop            training: the first signal asks to stop after the current step; a second
                            Ctrl-C stops at once
    signals_raise           a short phase with nothing to save: a signal raises at once
    worker_signals          in a DataLoader worker: the main process alone decides how to stop

Under torchrun the processes agree on a stop (runtime.distributed.agreed_signal), so they all stop
at the same step, and rank 0 alone prints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Optional

from seg_pet.runtime.distributed import is_main

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM arrived; what was saved, and how to continue, is in the message.

    A BaseException, like KeyboardInterrupt: raised from a signal handler, it must not be swallowed
    by an `except Exception` in library code.
    """

    def __init__(self, signum: int, message: str):
        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name} received {message}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as shells report them


class Terminated(BaseException):
    """SIGTERM outside the phases that handle it themselves (training saves and raises Interrupted)."""


@contextlib.contextmanager
def terminate_as_exception():
    """While inside (main thread only), SIGTERM raises Terminated in the main process.

    A DataLoader worker forked meanwhile inherits the handler: there it exits as SIGTERM's default would.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class DeferredStop:
    """While active, the first SIGINT/SIGTERM only records the signal (`signum`); the loop polls
    `requested` and stops at a safe point. A second Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict = {}
        self._pid = os.getpid()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker forked with this handler, before worker_signals ran
            return
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if is_main():  # under torchrun every process gets the signal: one says so
            print(f"\n{signal.Signals(signum).name} received: stopping after this step...", file=sys.stderr)

    def __enter__(self) -> DeferredStop:
        self._pid = os.getpid()
        self._previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_raise(message: str):
    """While inside, SIGINT / SIGTERM raise `Interrupted(signum, message)` at once (short phases with nothing to save)."""

    def handler(signum, frame):
        raise Interrupted(signum, message)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def worker_signals(worker_id: int) -> None:
    """In a DataLoader worker: leave Ctrl-C to the main process, die plainly on SIGTERM.

    Workers are forked with the main process's Python signal handlers (training's "stop after this
    step", the CLI's SIGTERM -> exit 143). Ctrl-C in a terminal reaches every process of the group;
    the main process alone decides how to stop and then shuts its workers down. SIGTERM keeps its
    default action: torch's DataLoader stops workers that do not exit by themselves with it, so a
    worker that ignored it would hang the shutdown after an error (training treats a worker killed
    while a stop was requested as part of that stop).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
