"""Shell completion scripts generated from the app: ``python -m vidseg_cli.cli.completions``.

The scripts call back into ``vidseg`` for candidates, so they stay valid as options
change; tests fail when the files in completions/ differ from what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer._completion_shared import get_completion_script

SHELLS = {"bash": "vidseg.bash", "zsh": "_vidseg", "fish": "vidseg.fish"}
COMPLETE_VAR = "_VIDSEG_COMPLETE"


def completion_script(shell: str) -> str:
    return get_completion_script(prog_name="vidseg", complete_var=COMPLETE_VAR, shell=shell)


def write_all(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for shell, name in SHELLS.items():
        (folder / name).write_text(completion_script(shell))


if __name__ == "__main__":
    write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("completions"))
