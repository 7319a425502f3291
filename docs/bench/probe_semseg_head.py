"""Probe (issue 35): how much a label memory can add with the best training data there is.
A small head (two 3x3 convolutions, a residual over the frame's own log-probabilities) is
fitted on the first half of CamVid val's 15 Hz frames, whose labelled neighbours are 66 ms
apart, and scored on the second half, against a control head that sees only the frame's own
probabilities (what the fit gains from knowing the sequence, not from memory). The memory is
streamed as shipped (fifo 1, the shipped gate's mix carried forward).

    python docs/bench/probe_semseg_head.py semseg-camvid-train ../shared/data/camvid
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from probe_semseg_gate import CLASSES, VOID, labels, stream  # beside this file: the same streaming

from vidseg_cli.metrics.segmentation import ConfusionMatrix

SEEDS = (0, 1, 2)


def record(name: str, data: Path) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]]:
    """(own, moved, shipped mix, truth) for every val frame after the first."""
    frames = stream(name, data, "val", lambda own, moved, mixed, gate: mixed)
    return [(step.own.clone(), step.moved.clone(), step.mixed.clone(), step.truth) for step in frames if not step.first]


def head_inputs(own: torch.Tensor, moved: torch.Tensor | None) -> torch.Tensor:
    parts = [own.clamp_min(1e-4).log(), own]
    if moved is not None:
        parts += [moved.clamp_min(1e-4).log(), moved]
    return torch.cat(parts, 1)


def fit_head(frames, with_memory: bool, seed: int, steps: int = 400) -> nn.Module:
    torch.manual_seed(seed)
    inputs = [head_inputs(own, moved if with_memory else None) for own, moved, _, _ in frames]
    targets = [F.interpolate(torch.from_numpy(t.astype(np.float32))[None, None], size=own.shape[-2:], mode="nearest")[0].long()
               for own, _, _, t in frames]
    head = nn.Sequential(nn.Conv2d(inputs[0].shape[1], 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, CLASSES, 3, padding=1))
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for step in range(steps):
        picked = np.random.default_rng([seed, step]).integers(len(inputs), size=4)
        x, y = torch.cat([inputs[i] for i in picked]), torch.cat([targets[i] for i in picked])
        loss = F.cross_entropy(head(x) + x[:, :CLASSES], y, ignore_index=VOID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head


def main(name: str, data: Path) -> None:
    frames = record(name, data)
    fit, scored = frames[: len(frames) // 2], frames[len(frames) // 2:]
    heads = {(f"head {kind}, seed {seed}", kind == "own and memory"): fit_head(fit, kind == "own and memory", seed)
             for seed in SEEDS for kind in ("own only", "own and memory")}
    rows = ["own (none)", "shipped mix", *(row for row, _ in heads)]
    confusion = {row: ConfusionMatrix(CLASSES, ignore_index=VOID) for row in rows}
    with torch.no_grad():
        for own, moved, mixed, truth in scored:
            confusion["own (none)"].update(labels(own, truth.shape), truth)
            confusion["shipped mix"].update(labels(mixed, truth.shape), truth)
            inputs = {False: head_inputs(own, None), True: head_inputs(own, moved)}
            for (row, with_memory), head in heads.items():
                x = inputs[with_memory]
                confusion[row].update(labels(head(x) + x[:, :CLASSES], truth.shape), truth)
    print(f"val frames {len(fit) + 2}-{len(frames) + 1} ({len(scored)}), fitted on the {len(fit)} before:")
    for row in rows:
        print(f"{row}: mIoU {100 * confusion[row].miou():.2f}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
