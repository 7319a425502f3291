"""The console entry point, kept free of heavy imports.

Signals are handled from the first instant: Ctrl-C while torch is still importing, or a
SIGTERM from ``kill``, systemd, Docker or a batch scheduler, gets one line on stderr and
the usual exit code (130, 143), never a traceback. Usage errors get one line too, in the
same ``error: ...`` form as every other error, which is what scripts grep for.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python runs next; a KeyboardInterrupt so that every handler
    of Ctrl-C (staged outputs removed, training checkpoints saved) handles it as well."""

    exit_code = 143


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def install_signal_handlers() -> None:
    """SIGTERM as an exception, so ``finally`` blocks and atomic outputs clean up."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def interrupted_code(error: BaseException) -> int:
    return error.exit_code if isinstance(error, Terminated) else 130


def say_interrupted(error: BaseException, what: str = "nothing was written") -> int:
    """One line on stderr for Ctrl-C or SIGTERM; returns the exit code."""
    name = "terminated" if isinstance(error, Terminated) else "interrupted"
    sys.stderr.write(f"{name}; {what}\n")
    return interrupted_code(error)


def main(argv: Sequence[str] | None = None) -> None:
    install_signal_handlers()
    try:
        from vidseg_cli.cli.app import run  # imports click, rich, numpy...

        code = run(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM outside a command's own handler
        code = say_interrupted(error)
    sys.exit(code)


if __name__ == "__main__":
    main()
