"""The oracle reuse gate's table over a dataset in DAVIS layout (vidseg_cli/vos/oracle.py):
at each IoU threshold, the share of frames it reuses, its J&F against the truth, and the
speed-up bound. `vidseg bench --reuse` prints the row that loses at most 1 point.

    python docs/bench/reuse_oracle.py ../shared/data/davis16/val-dev
"""

from __future__ import annotations

import sys
from pathlib import Path

from vidseg_cli.vos.davis import load_davis
from vidseg_cli.vos.oracle import THRESHOLDS, oracle_at


def main(root: Path) -> None:
    sequences = load_davis(root)
    print("| IoU threshold | frames reused | J&F loss (points) | speed-up if a reused frame were free |")
    print("|---|---|---|---|")
    for threshold in THRESHOLDS:
        bound = oracle_at(sequences, threshold)
        print(f"| {threshold:.2f} | {bound.reused:.3f} | {bound.loss:.1f} | {bound.speedup:.2f}x |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
