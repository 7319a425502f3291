"""How much frame reuse a dataset allows at a given J&F cost, with a gate that knows the answer.

An oracle reuse gate: frame t keeps (copies) the true mask of the last computed frame (the
anchor) whenever the two true masks overlap with IoU >= a threshold for every object;
otherwise t is computed, exactly, and becomes the anchor. Scored with the official J&F
against the true masks, so the no-reuse score is 1.0 and the loss is what copying alone
costs. No gate can choose its frames better from the masks, so the share it reuses bounds
what ``--reuse`` may reuse at that loss, and 1 / (1 - share) bounds its speed-up even if a
reused frame cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence as Sequences
from dataclasses import dataclass

import numpy as np

from vidseg_cli.metrics.davis import evaluate_sequence, j_and_f, region_similarity
from vidseg_cli.vos.davis import Sequence

THRESHOLDS = (0.99, 0.97, 0.95, 0.93, 0.9, 0.85, 0.8, 0.7)


@dataclass(frozen=True)
class OracleBound:
    threshold: float  # the IoU the oracle asks of a copied mask
    reused: float  # the share of frames (after each sequence's first) it reuses
    loss: float  # J&F points lost against the truth

    @property
    def speedup(self) -> float:
        return 1 / (1 - self.reused)


def copy_reuse(truths: Sequences[np.ndarray], objects: Sequences[int], threshold: float) -> tuple[list[np.ndarray], int]:
    """The oracle gate's predictions, and how many frames it reused (the first is given)."""
    predictions, anchor, reused = [truths[0]], truths[0], 0
    for truth in truths[1:]:
        if all(region_similarity(truth == i, anchor == i) >= threshold for i in objects):
            predictions.append(anchor)
            reused += 1
        else:
            predictions.append(truth)
            anchor = truth
    return predictions, reused


def oracle_at(sequences: Sequences[Sequence], threshold: float) -> OracleBound:
    scores, reused, frames = [], 0, 0
    for sequence in sequences:
        predictions, count = copy_reuse(sequence.truths, sequence.objects, threshold)
        reused += count
        frames += len(sequence.truths) - 1
        scores.extend(evaluate_sequence(predictions, sequence.truths, sequence.objects).values())
    return OracleBound(threshold, reused / max(1, frames), 100 * (1 - j_and_f(scores)["J&F"]))


def oracle_bound(sequences: Sequences[Sequence], max_loss: float = 1.0) -> OracleBound:
    """The oracle that reuses most while losing at most ``max_loss`` J&F points."""
    best = OracleBound(1.0, 0.0, 0.0)
    for threshold in THRESHOLDS:
        bound = oracle_at(sequences, threshold)
        if bound.loss <= max_loss and bound.reused > best.reused:
            best = bound
    return best
