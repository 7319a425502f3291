"""The `vidseg` command: one Typer app, one module per subcommand.

Start-up is kept short (help and shell completion run on every Tab): the segment and
bench modules import only Typer, Rich and the option names, and their jobs import torch
when they run; `train` and `weights` are groups whose modules load when one of their
commands is named.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
from collections.abc import MutableMapping

import typer

from vidseg_cli import __version__
from vidseg_cli.cli.batch import batch_command
from vidseg_cli.cli.bench import bench_command
from vidseg_cli.cli.common import say_error
from vidseg_cli.cli.completions import COMPLETE_VAR
from vidseg_cli.cli.predict import predict_command
from vidseg_cli.cli.segment import segment_command
from vidseg_cli.cli.semseg import semseg_command

# group name -> (module:attribute of its Typer app, its one-line help)
LAZY_GROUPS = {
    "train": ("vidseg_cli.cli.train:train_app", "Train the learned parts of vidseg."),
    "weights": ("vidseg_cli.cli.weights:weights_app", "Named checkpoints: list, path, pull, verify."),
}

app = typer.Typer(
    name="vidseg",
    help="Video segmentation with a streaming memory engine.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
app.command("segment")(segment_command)
app.command("semseg")(semseg_command)
app.command("predict")(predict_command)
app.command("bench")(bench_command)
app.command("batch")(batch_command)


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
    for name, (target, help_text) in LAZY_GROUPS.items():
        group = type(root)(name=name, help=help_text, no_args_is_help=True)
        group.commands = _LazyCommands(target)
        _tidy_help(group)
        root.commands[name] = group
    return root


def eager_app() -> typer.Typer:
    """The app with every group imported up front, for typer's CliRunner in the tests
    (it takes a Typer app, not a click command)."""
    full = copy.copy(app)
    full.registered_groups = list(app.registered_groups)
    for name, (target, _) in LAZY_GROUPS.items():
        module, attribute = target.split(":")
        full.add_typer(getattr(importlib.import_module(module), attribute), name=name)
    return full


class _LazyCommands(MutableMapping):
    """A group's commands, imported on first use (``vidseg train vos``), not at start-up."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._commands: dict | None = None

    def _loaded(self) -> dict:
        if self._commands is None:
            module, attribute = self.target.split(":")
            group = typer.main.get_command(getattr(importlib.import_module(module), attribute))
            _tidy_help(group)
            self._commands = dict(group.commands)
        return self._commands

    def __getitem__(self, name: str):
        return self._loaded()[name]

    def __setitem__(self, name: str, command) -> None:
        self._loaded()[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded()[name]

    def __iter__(self):
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())


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
    children = getattr(node, "commands", {})
    if not isinstance(children, _LazyCommands):  # those are tidied when they load
        for child in children.values():
            _tidy_help(child)


def _one_line(error: Exception) -> int:
    """``error: <message> (see: vidseg segment --help)``, as VidsegError prints."""
    message = " ".join(error.format_message().replace("Value error, ", "").split())
    context = getattr(error, "ctx", None)
    hint = f" (see: {context.command_path} --help)" if context is not None else ""
    say_error(f"{message}{hint}")
    return error.exit_code
