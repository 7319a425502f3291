"""Probe (issue 35): what mixing the frame's own labels with the memory's could reach on a
CamVid split, streamed as `vidseg semseg --memory fifo --slots 1` does. Prints mIoU (void
ignored, over the split) of the frame alone (own), the shipped gate's mix (mixed), the
memory's moved labels alone (moved), a per-pixel oracle that takes own where it is right
and else moved (the most any per-pixel choice between the two could reach), and fixed rules:
the mean of the two (half), the surer of the two (surer) and their product (product).
CHAIN says what the memory holds for the next frame:

    mixed            the shipped gate's mix (as shipped)
    half ALPHA       own + ALPHA (moved - own), a fixed exponential average
    product ALPHA    own x moved^ALPHA, normalised
    gated-product A  own x moved^(A g), normalised, g the shipped gate (0 on a stale memory)

and "chained" is its mIoU:

    CHAIN=half ALPHA=0.65 python docs/bench/probe_semseg_gate.py semseg-camvid-train ../shared/data/camvid val
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidseg_cli.metrics.segmentation import ConfusionMatrix
from vidseg_cli.semseg.bench import _decode
from vidseg_cli.semseg.data import load_labelled, read_label
from vidseg_cli.semseg.model import create_semseg, memory_key, pack, processing_size, unpack, work_size

CLASSES = VOID = 11


def labels(probabilities: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    return F.interpolate(probabilities, size=size, mode="bilinear", align_corners=False)[0].max(0).indices.numpy()


def chained(rule: str, alpha: float, own, moved, mixed, gate) -> torch.Tensor:
    if rule == "mixed":
        return mixed
    if rule == "half":
        return own + alpha * (moved - own)
    power = alpha * F.interpolate(gate, size=own.shape[-2:], mode="bilinear", align_corners=False) if rule == "gated-product" else alpha
    product = own * moved.clamp_min(1e-3) ** power
    return product / product.sum(1, keepdim=True)


@dataclass
class Streamed:
    """One frame: the network alone (own), the memory's labels moved here, the shipped
    gate's mix, what the memory holds for the next frame, and the truth. On a sequence's
    first frame there is no memory: moved, mixed and held are own."""

    first: bool
    own: torch.Tensor
    moved: torch.Tensor
    mixed: torch.Tensor
    held: torch.Tensor
    truth: np.ndarray


@torch.inference_mode()
def stream(name: str, data: Path, split: str, hold: Callable[..., torch.Tensor]) -> Iterator[Streamed]:
    """Every frame of a split, streamed as `vidseg semseg --memory fifo --slots 1` does, the
    memory holding ``hold(own, moved, mixed, gate)``."""
    network, _ = create_semseg(name)
    size = processing_size(name)
    for sequence in load_labelled(data, split):
        memory = None
        for frame in sequence.frames:
            image, truth = _decode(frame.image), read_label(frame.label, CLASSES, VOID)
            height, width = image.shape[:2]
            work = work_size(height, width, size)
            pixels = torch.as_tensor(image).permute(2, 0, 1).float()[None]
            features = network.features(F.interpolate(pixels, size=work, mode="bilinear", align_corners=False, antialias=work[0] < height))
            own, key = network.probabilities(features), memory_key(features)
            if memory is None:
                mixed = moved = held = own
            else:
                readout, peak = network.read(key, memory[0][:, None], memory[1][:, None])
                mixed, gate = network.memory.mix(own, key, readout, peak, memory[0])
                moved = unpack(readout)
                held = hold(own, moved, mixed, gate)
            yield Streamed(memory is None, own, moved, mixed, held, truth)
            memory = (key, pack(held))


def main(name: str, data: Path, split: str, rule: str, alpha: float) -> None:
    rows = ["own", "mixed", "moved", "oracle", "half", "surer", "product", "chained"]
    confusion = {row: ConfusionMatrix(CLASSES, ignore_index=VOID) for row in rows}
    with torch.inference_mode():
        for step in stream(name, data, split, lambda *maps: chained(rule, alpha, *maps)):
            own, moved, truth = step.own, step.moved, step.truth
            height, width = truth.shape
            mine, theirs = labels(own, (height, width)), labels(moved, (height, width))
            surer = torch.where(own.amax(1, keepdim=True) >= moved.amax(1, keepdim=True), own, moved)
            predictions = {
                "own": mine, "mixed": labels(step.mixed, (height, width)), "moved": theirs,
                "oracle": np.where(mine == truth, mine, theirs), "half": labels((own + moved) / 2, (height, width)),
                "surer": labels(surer, (height, width)), "product": labels(own * moved.clamp_min(1e-3), (height, width)),
                "chained": labels(step.held, (height, width)),
            }
            for row, prediction in predictions.items():
                confusion[row].update(prediction, truth)
    for row in rows:
        print(f"{row}: mIoU {100 * confusion[row].miou():.2f}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], os.environ.get("CHAIN", "mixed"), float(os.environ.get("ALPHA", "0.5")))
