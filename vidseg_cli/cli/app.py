"""The `vidseg` command: one Typer app, one module per subcommand."""

from __future__ import annotations

import contextlib
import os
import sys

import typer

from vidseg_cli import __version__
from vidseg_cli.cli.bench import bench_command
from vidseg_cli.cli.common import say_error
from vidseg_cli.cli.completions import COMPLETE_VAR
from vidseg_cli.cli.segment import segment_command
from vidseg_cli.cli.train import train_app
from vidseg_cli.cli.weights import weights_app

app = typer.Typer(
    name="vidseg",
    help="Video segmentation with a streaming memory engine.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
app.command("segment")(segment_command)
app.command("bench")(bench_command)
app.add_typer(train_app, name="train")
app.add_typer(weights_app, name="weights")


def _version(value: bool) -> None:
    if value:
        print(f"vidseg {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Video segmentation with a streaming memory engine."""


def run(argv: list[str]) -> int:
    """Run the command line; returns the exit code. Usage errors become one line on stderr
    (exit 2); a command group given no arguments prints its help on stderr (exit 2)."""
    root = command()
    completing = COMPLETE_VAR in os.environ  # the shell asks for candidates: they go to stdout
    if not completing and _names_a_group(root, argv):  # `vidseg`, `vidseg train`: the help, but on stderr
        with contextlib.redirect_stdout(sys.stderr):
            root.main(args=[*argv, "--help"], prog_name="vidseg", standalone_mode=False)
        return 2
    try:
        code = root.main(args=argv, prog_name="vidseg", standalone_mode=False)
    except Exception as error:  # click's exceptions; Typer >= 0.20 vendors its own click
        kind = type(error).__name__
        if kind == "Abort":  # click's word for Ctrl-C during a prompt or parsing
            raise KeyboardInterrupt from error
        if not hasattr(error, "format_message") or not hasattr(error, "exit_code"):
            raise
        return _one_line(error)
    return code if isinstance(code, int) else 0


def command():
    """The click command tree of ``app``, with help that shows flags as flags (Typer 0.2x
    writes ``--force <bool>``) and arguments by their upper-case name (not ``{input}``)."""
    root = typer.main.get_command(app)
    _tidy_help(root)
    return root


def _names_a_group(root, argv: list[str]) -> bool:
    """Whether ``argv`` is only a path of command groups, with nothing for them to run."""
    node = root
    for word in argv:
        node = getattr(node, "commands", {}).get(word)
        if node is None:
            return False
    return hasattr(node, "commands")


def _tidy_help(node) -> None:
    for param in node.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.param_type_name == "argument" and param.metavar is None:
            param.metavar = name = param.name.upper()
            if hasattr(param, "_usage_display_name"):  # Typer's usage line wraps it in {}
                param._usage_display_name = lambda name=name: name
    made = node.get_help_option  # --help is made afresh for each context

    def help_option(ctx, made=made):
        option = made(ctx)
        if option is not None:
            option.metavar = ""
        return option

    node.get_help_option = help_option
    for child in getattr(node, "commands", {}).values():
        _tidy_help(child)


def _one_line(error: Exception) -> int:
    """``error: <message> (see: vidseg segment --help)``, as VidsegError prints."""
    message = " ".join(error.format_message().replace("Value error, ", "").split())
    context = getattr(error, "ctx", None)
    hint = f" (see: {context.command_path} --help)" if context is not None else ""
    say_error(f"{message}{hint}")
    return error.exit_code


def main() -> None:
    from vidseg_cli.cli.main import main as entry

    entry()
