"""The `vidseg` command: one Typer app, one module per subcommand."""

from __future__ import annotations

import typer

from vidseg_cli import __version__
from vidseg_cli.cli.bench import bench_command
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


def main() -> None:
    app(prog_name="vidseg")
