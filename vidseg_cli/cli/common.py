"""Shared CLI plumbing: the stderr console, error handling, JSON output."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from vidseg_cli.cores import THREADS_VARIABLE
from vidseg_cli.errors import VidsegError, os_error_text
from vidseg_cli.io.outputs import AlreadyComplete
from vidseg_cli.signals import say_interrupted

# Data goes to stdout; messages, progress and tables go to stderr (as the `hf` CLI does).
stderr = Console(stderr=True)
stdout = Console(soft_wrap=True)  # for data tables; plain print() for single values
for _console in (stderr, stdout):
    if not _console.is_terminal and "COLUMNS" not in os.environ:
        _console.width = 200  # logs and pipes: Rich's 80-column default would fold tables

F = TypeVar("F", bound=Callable[..., Any])


def fix_threads(threads: int | None) -> None:
    """``--threads N``: the same as ``VIDSEG_NUM_THREADS=N`` (vidseg_cli/cores.py), which
    the job reads when it starts."""
    if threads is not None:
        os.environ[THREADS_VARIABLE] = str(threads)


@contextlib.contextmanager
def progress_bar(verb: str):
    """A Rich progress bar on stderr, only when stderr is a terminal; yields advance(done, total)."""
    if not stderr.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(verb), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task("frames", total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def user_errors(command: F) -> F:
    """Turn VidsegError into one line on stderr and its exit code (2: bad input, 1: an
    output that could not be written), Ctrl-C and SIGTERM into one line and 130 or 143;
    never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except AlreadyComplete as done:  # --resume of finished work: the output, as a run prints it
            stderr.print(f"already complete: {escape(str(done.target))} (same input and options); left as it is", highlight=False)
            if kwargs.get("json"):
                print_json({"output": str(done.target), "already_complete": True})
            else:
                print(done.target)
            return None
        except VidsegError as error:
            say_error(str(error))
            raise typer.Exit(error.exit_code) from None
        except OSError as error:  # a safety net: outputs turn their own errors into VidsegError
            say_error(os_error_text(error))
            raise typer.Exit(1) from None
        except KeyboardInterrupt as error:
            raise typer.Exit(say_interrupted(error)) from None

    return wrapper  # type: ignore[return-value]


def say_error(message: str) -> None:
    text = escape(" ".join(message.split()))  # one line; a path's [brackets] are not markup
    stderr.print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)


def comma_list(text: str, cast: Callable = str, option: str | None = None) -> list:
    """``"1,0.5"`` -> ``[1.0, 0.5]`` with ``cast=float``; a clear error for a bad entry."""
    try:
        return [cast(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise VidsegError(f"{option + ': ' if option else ''}cannot read {text!r} as a comma list") from None


def json_text(data: Any) -> str:
    """Strict JSON: NaN and infinities (which ``json`` would write as the non-JSON
    ``NaN``) become null."""
    if is_dataclass(data):
        data = asdict(data)
    return json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def print_json_line(record: dict) -> None:
    """One record of a stream on stdout (events, per-frame errors), flushed as it comes."""
    print(json.dumps(record), flush=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data))
    sys.stdout.flush()
