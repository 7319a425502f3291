"""Probe (issue 37): `vidseg train vos` with the video clips of chosen training sequences
drawn REPEAT times as often as the others: sequences that look like val-dev's failures.
LIKE=name,name,... names DAVIS train sequences; the rest of the command is `vidseg train vos`'s:

    LIKE=breakdance-flare,dance-jump,paragliding,kite-walk,motocross-bumps,scooter-gray REPEAT=4 \
      python docs/bench/probe_failure_clips.py train vos --data ../shared/data/davis16/train-288p ...
"""

from __future__ import annotations

import os
import sys

import vidseg_cli.vos.clips as clips


def drawing_more_often(like: list[str], repeat: int):
    original = clips.ClipSampler.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        missing = sorted(set(like) - {v.name for v in self._long_enough})
        if missing:
            raise SystemExit(f"not in the training set: {missing}")
        self._long_enough = self._long_enough + [v for v in self._long_enough if v.name in like] * (repeat - 1)
        print(f"video clips drawn from {len(self._long_enough)} entries: {like} x{repeat}", file=sys.stderr)

    return init


if __name__ == "__main__":
    like = [name for name in os.environ.get("LIKE", "").split(",") if name]
    clips.ClipSampler.__init__ = drawing_more_often(like, int(os.environ.get("REPEAT", "4")))
    from vidseg_cli.cli.main import main

    sys.argv = ["vidseg", *sys.argv[1:]]
    main()
