"""The fastest the sparse path can run at a given share of computed tiles, layout aside.

Overrides every gate's decision with one centred rectangle of COMPUTE tiles (the given share
of the layer's tile grid; REUSE elsewhere), the layout the crop path runs best: one dense crop,
no scattered tiles. The gates still score every layer, the composition still runs, and memory
frames (every 5th) still run dense, as in `vidseg bench --sparse triple`. Speed only: the
rectangle ignores the objects, so J&F is not reported. Dense and each share run interleaved
per sequence, in one process.

    python docs/bench/sparse_layout_probe.py ../shared/data/davis16/val-dev GATES 0.59,0.3,0
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from vidseg_cli.engine.threads import use_all_cores
from vidseg_cli.io.frames import FolderSource
from vidseg_cli.options import MemoryOptions
from vidseg_cli.vos.bench import Config, Result, _run_one
from vidseg_cli.vos.davis import load_davis
from vidseg_cli.vos.models import create_vos_model
from vidseg_cli.vos.sparse.gates import COMPUTE, REUSE, TripleGate
from vidseg_cli.vos.sparse.model import create_sparse_model
from vidseg_cli.vos.sparse.state import SparseOptions

SIZE, WRITE_EVERY = 360, 5


def centred_rectangle(share: float):
    """A TripleGate.decide that computes a centred rectangle of `share` of the tiles."""

    def decide(self, scores: torch.Tensor) -> torch.Tensor:
        batch, _, rows, cols = scores.shape
        side = math.sqrt(share)
        height, width = round(rows * side), round(cols * side)
        top, left = (rows - height) // 2, (cols - width) // 2
        codes = torch.full((batch, rows, cols), REUSE, dtype=torch.long, device=scores.device)
        codes[:, top:top + height, left:left + width] = COMPUTE
        return codes

    return decide


def main(root: Path, gates: str, shares: list[float]) -> None:
    use_all_cores()
    sequences = load_davis(root)
    runs = [("dense", None, create_vos_model("vos-effl0"))]
    sparse = create_sparse_model("vos-effl0", gates, "triple")
    runs += [(f"rectangle {share:g}", share, sparse) for share in shares]
    results = {
        name: Result(Config(name, SIZE, MemoryOptions(write_every=WRITE_EVERY), sparse=SparseOptions("none" if share is None else "triple")))
        for name, share, _ in runs
    }
    for sequence in sequences:
        images = [frame.image for frame in FolderSource(sequence.frames)]
        for name, share, model in runs:
            if share is not None:
                TripleGate.decide = centred_rectangle(share)
            _run_one(results[name], model, sequence, images, 0.0, torch.device("cpu"))
    dense_fps = results["dense"].frames / results["dense"].total_seconds
    print("| configuration | gated work computed | GFLOPs / frame | FPS | vs dense |")
    print("|---|---|---|---|---|")
    for name, result in results.items():
        fps = result.frames / result.total_seconds
        print(f"| {name} | {np.mean(result.computed):.3f} | {np.mean(result.flops) / 1e9:.2f} | {fps:.2f} | {fps / dense_fps:.2f}x |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], [float(s) for s in sys.argv[3].split(",")])
