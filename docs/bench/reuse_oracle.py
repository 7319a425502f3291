"""How much frame reuse DAVIS allows at a given J&F cost, with a gate that knows the answer.

An oracle reuse gate: frame t reuses (copies) the mask of the last computed frame (the
anchor) whenever the true masks of the two overlap with IoU >= threshold; otherwise t is
computed, exactly, and becomes the anchor. Scored with the official J&F against the true
masks, so the no-reuse baseline is 1.0 and the printed loss is what copy-reuse alone costs.
No learned gate can choose its frames better from the masks; a translator that moves the
mask (Reuse-VOS's refine mode) can lose less than a copy.

    python docs/bench/reuse_oracle.py ../shared/data/davis16/val-dev
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vidseg_cli.metrics.davis import evaluate_sequence, j_and_f, region_similarity

THRESHOLDS = (1.0, 0.97, 0.95, 0.93, 0.9, 0.85, 0.8)


def load_masks(sequence: Path) -> list[np.ndarray]:
    return [(np.array(Image.open(p).convert("L")) > 127).astype(np.uint8) for p in sorted(sequence.glob("*.png"))]


def copy_reuse(masks: list[np.ndarray], threshold: float) -> tuple[list[np.ndarray], int]:
    """Predictions of the oracle gate, and how many frames it reused (frame 0 is given)."""
    predictions, anchor, reused = [masks[0]], masks[0], 0
    for mask in masks[1:]:
        if threshold < 1.0 and region_similarity(mask > 0, anchor > 0) >= threshold:
            predictions.append(anchor)
            reused += 1
        else:
            predictions.append(mask)
            anchor = mask
    return predictions, reused


def main(root: Path) -> None:
    sequences = [load_masks(s) for s in sorted((root / "Annotations").iterdir()) if s.is_dir()]
    frames = sum(len(masks) - 1 for masks in sequences)
    print("| IoU threshold | frames reused | J&F | J | F | J&F loss (points) | speed-up if a reused frame were free |")
    print("|---|---|---|---|---|---|---|")
    for threshold in THRESHOLDS:
        scores, reused = [], 0
        for masks in sequences:
            predictions, count = copy_reuse(masks, threshold)
            reused += count
            scores.extend(evaluate_sequence(predictions, masks, objects=[1]).values())
        summary = j_and_f(scores)
        rate = reused / frames
        print(
            f"| {threshold:.2f} | {rate:.3f} | {summary['J&F']:.3f} | {summary['J']:.3f} | {summary['F']:.3f} "
            f"| {100 * (1 - summary['J&F']):.1f} | {1 / (1 - rate):.2f}x |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
