"""User-facing errors: the CLI prints the message on one line and exits with its code."""

from __future__ import annotations

import os


class VidsegError(Exception):
    """Bad input; the message is shown to the user (exit code 2)."""

    exit_code = 2


class OutputError(VidsegError):
    """An output that could not be written (disk full, file too large, permissions):
    the run fails and publishes nothing (exit code 1)."""

    exit_code = 1


def os_error_text(error: OSError) -> str:
    """``cannot write /x/y: No space left on device``: the reason, and where."""
    reason = error.strerror or (os.strerror(error.errno) if error.errno else str(error))
    where = error.filename
    return f"{reason}: {where}" if where else reason
