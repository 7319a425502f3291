"""DAVIS region similarity J (official davis2017-evaluation rules for J).

J is the IoU of one object's predicted and true masks, 1 when both are empty. The first
and last frames are excluded (the first is given; the reference drops the last too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def region_similarity(prediction: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two boolean masks; 1.0 when both are empty (official convention)."""
    union = np.logical_or(prediction, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(prediction, truth).sum() / union)


def sequence_j(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], objects: Sequence[int]) -> dict[int, float]:
    """Mean J per object over frames 1 .. n-2 of one sequence."""
    frames = range(1, len(truths) - 1)
    return {
        obj: float(np.mean([region_similarity(predictions[t] == obj, truths[t] == obj) for t in frames]))
        for obj in objects
    }
