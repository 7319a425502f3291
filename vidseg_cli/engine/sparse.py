"""SpVOS in a session: which frames run sparse, and the per-video layer state their gates read.

Mixed sparse processing: frames written to memory (and frames with a user mask) run the
dense backbone, every other frame runs the gated one. A gated block compares its input with
the previous frame's, sparse or dense, and reuses the previous frame's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidseg_cli.errors import VidsegError
from vidseg_cli.models.memnet import MemNetFrame
from vidseg_cli.sparse.gates import SPARSE_MODES
from vidseg_cli.sparse.model import SparseModel
from vidseg_cli.sparse.network import LayerState, Shares

SPARSE_WRITE_EVERY = 5  # SpVOS's DAVIS schedule: a memory frame every five frames


@dataclass(frozen=True)
class SparseOptions:
    mode: str = "none"

    def __post_init__(self) -> None:
        if self.mode not in SPARSE_MODES:
            raise VidsegError(f"unknown --sparse {self.mode!r}; choose from {', '.join(SPARSE_MODES)}")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


class SparseTracker:
    def __init__(self, model: SparseModel) -> None:
        self.model = model
        self.state = LayerState()
        self.costs: dict[int, float] | None = None  # per gated block, its dense work on this video's frames

    def encode(self, image: torch.Tensor, dense: bool) -> tuple[MemNetFrame, float]:
        """The frame, and the share of the gated blocks' work it computed (1 when dense)."""
        if dense or not self.state.ready():
            frame = self.model.encode_dense(image, self.state)
            if self.costs is None:
                self.costs = self.model.gates.costs(self.state.outputs)
            return frame, 1.0
        shares = Shares()
        frame = self.model.encode_sparse(image, self.state, shares)
        spent = sum(self.costs[i] * float(shares.computed[i]) for i in self.costs)
        return frame, spent / sum(self.costs.values())
