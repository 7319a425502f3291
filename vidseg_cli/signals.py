"""Ctrl-C and SIGTERM, for the entry point and for worker processes alike.

Signals are handled from the first instant: Ctrl-C while torch is still importing, or a
SIGTERM from ``kill``, systemd, Docker or a batch scheduler, gets one line on stderr and
the usual exit code (130, 143), never a traceback. Usage errors get one line too, in the
same ``error: ...`` form as every other error, which is what scripts grep for.

Two phases. While the command's modules import, nothing has been written, so a signal
ends the process at once (``os._exit``): an exception raised inside an import can be
swallowed by a library's own ``except`` and leave a half-imported numpy behind, which
then fails with a traceback. Once a command runs, SIGTERM raises ``Terminated`` (a
KeyboardInterrupt) so that staged outputs are removed and training saves a checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python runs next; a KeyboardInterrupt so that every handler
    of Ctrl-C (staged outputs removed, training checkpoints saved) handles it as well."""

    exit_code = 143


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _exit_now(signum: int, frame: object) -> None:
    word, code = ("terminated", 143) if signum == signal.SIGTERM else ("interrupted", 130)
    os.write(2, f"{word}; nothing was written\n".encode())
    os._exit(code)


def install_signal_handlers(importing: bool) -> None:
    """While importing: exit at once. While running: SIGTERM as an exception, so
    ``finally`` blocks and atomic outputs clean up, and Ctrl-C as Python's own."""
    sigint_ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # e.g. `nohup`, `cmd &`
    signal.signal(signal.SIGTERM, _exit_now if importing else _raise_terminated)
    if not sigint_ignored:
        signal.signal(signal.SIGINT, _exit_now if importing else signal.default_int_handler)


def interrupted_code(error: BaseException) -> int:
    return error.exit_code if isinstance(error, Terminated) else 130


def say_interrupted(error: BaseException, what: str = "nothing was written") -> int:
    """One line on stderr for Ctrl-C or SIGTERM (``error.note`` says what was kept, if
    anything); returns the exit code."""
    name = "terminated" if isinstance(error, Terminated) else "interrupted"
    sys.stderr.write(f"{name}; {getattr(error, 'note', what)}\n")
    return interrupted_code(error)
