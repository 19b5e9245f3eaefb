"""Ctrl-C while the `resnext` command starts: one line and exit status 130, at any moment.

Importing torch takes seconds; a KeyboardInterrupt raised inside it prints a long traceback
(once a RecursionError, from a half-imported module). While the command imports, SIGINT ends
the process at once with one line instead: nothing has been written yet, so there is nothing
to save. `cli.main` hands SIGINT back to Python's KeyboardInterrupt (and the trainer to its
graceful stop) once the command runs. A program that imports resnext as a library keeps
Python's own behaviour: only the console script and `python -m resnext[.cli]` get this.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _end(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"resnext: interrupted\n")
    os._exit(128 + signum)  # no interpreter shutdown: half-imported modules stay untouched


def is_command() -> bool:
    """Whether this process is the `resnext` command (console script or `python -m`)."""
    if os.path.basename(sys.argv[0] if sys.argv else "") == "resnext":
        return True
    argv = list(getattr(sys, "orig_argv", []))
    return any(a == "-m" and b in ("resnext", "resnext.cli") for a, b in zip(argv, argv[1:]))


def end_quietly_on_interrupt() -> None:
    """For the command's imports: SIGINT prints one line and exits 130."""
    try:
        signal.signal(signal.SIGINT, _end)
    except ValueError:  # not the main thread: leave signals alone
        pass


def interrupt_raises() -> None:
    """Back to KeyboardInterrupt once the command runs (main catches it: one line, 130)."""
    if signal.getsignal(signal.SIGINT) is _end:
        signal.signal(signal.SIGINT, signal.default_int_handler)
