"""The console entry point, kept free of heavy imports (signals: vidseg_cli/signals.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vidseg_cli.signals import install_signal_handlers, say_interrupted


def main(argv: Sequence[str] | None = None) -> None:
    install_signal_handlers(importing=True)
    import vidseg_cli.cores  # noqa: F401 - its first look at the cores is the process's start
    try:
        from vidseg_cli.cli.app import run  # imports click, rich, numpy, torch...

        install_signal_handlers(importing=False)
        code = run(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM outside a command's own handler
        code = say_interrupted(error)
    sys.exit(code)


if __name__ == "__main__":
    main()
