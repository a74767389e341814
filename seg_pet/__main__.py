"""`python -m seg_pet ...` entry point.

Once `main` has decided the exit code, a Ctrl-C during the interpreter's own shutdown (thread-pool
joins, DataLoader workers, atexit) would print a traceback; from then on it is recorded instead, and
the process exits with 130 without one.
"""

import atexit
import os
import signal
import sys

from seg_pet.cli import main

_late = []


def _record(signum, frame):
    _late.append(signum)


def _exit_if_interrupted():  # registered first, so it runs last, after the other atexit handlers
    if _late:
        sys.stdout.flush()
        print("interrupted", file=sys.stderr, flush=True)
        os._exit(128 + _late[0])


atexit.register(_exit_if_interrupted)
code = main()
signal.signal(signal.SIGINT, _record)
signal.signal(signal.SIGTERM, _record)
sys.exit(code)
