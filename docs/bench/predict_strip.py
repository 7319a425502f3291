"""The README's strip of truth against prediction, from a `vidseg predict` output folder.

    python docs/bench/predict_strip.py TRUTH_FOLDER PREDICTION_FOLDER [PREDICTION_FOLDER ...] OUT.png

Row 1: the true frames that the PNGs of the first PREDICTION_FOLDER predict (same names);
then one row per PREDICTION_FOLDER (ours, then a peer's): scaled up 3x (nearest), with
2-pixel gaps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCALE, GAP = 3, 2


def strip(truth: Path, *predicted: Path) -> Image.Image:
    names = sorted(p.name for p in predicted[0].glob("[0-9]*.png"))
    if not names:
        raise SystemExit(f"no predicted frames in {predicted[0]}")
    rows = []
    for folder in (truth, *predicted):
        tiles = [np.asarray(Image.open(folder / name).convert("L")) for name in names]
        tiles = [np.kron(t, np.ones((SCALE, SCALE), np.uint8)) for t in tiles]
        gap = np.full((tiles[0].shape[0], GAP), 255, np.uint8)
        rows.append(np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1))
    between = np.full((GAP, rows[0].shape[1]), 255, np.uint8)
    return Image.fromarray(np.concatenate([x for row in rows for x in (row, between)][:-1], axis=0))


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    strip(*map(Path, sys.argv[1:-1])).save(sys.argv[-1])
    print(sys.argv[-1])
