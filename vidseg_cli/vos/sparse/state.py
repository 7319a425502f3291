"""SpVOS in a session: which frames run sparse, and the per-video layer state their gates read.

Mixed sparse processing: frames written to memory (and frames with a user mask) run the
dense backbone, every other frame runs the gated one. A gated block compares its input with
the previous frame's, sparse or dense, and reuses the previous frame's output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vidseg_cli.memory.slot import Slot
from vidseg_cli.options import SPARSE_WRITE_EVERY, SparseOptions  # noqa: F401 - re-exported
from vidseg_cli.vos.memnet import MemNetFrame
from vidseg_cli.vos.sparse.model import SparseModel
from vidseg_cli.vos.sparse.network import LayerState, Shares, observe_objects


class SparseTracker:
    """Per video: the layer state the gates compare against, and what the current frame spent."""

    def __init__(self, model: SparseModel) -> None:
        self.model = model
        self.state = LayerState()
        self._dense = True
        self._shares = Shares()

    def encode(self, image: torch.Tensor, dense: bool) -> MemNetFrame:
        self._dense = dense or not self.state.ready()
        self._shares = Shares()
        if self._dense:
            return self.model.encode_dense(image, self.state)
        return self.model.encode_sparse(image, self.state, self._shares)

    def segment(self, frame: MemNetFrame, slots: Sequence[Slot], objects: int) -> torch.Tensor:
        if self._dense:
            return self.model.segment_dense(frame, slots, objects, self.state)
        return self.model.segment_sparse(frame, slots, objects, self.state, self._shares)

    def observe(self, probs: torch.Tensor) -> None:
        """This frame's final object probabilities (O, h4, w4): the next frame's object cue."""
        observe_objects(self.model.gates.config, self.state, probs)

    def computed(self) -> float:
        """The FLOP-weighted share of the gated layers' work this frame computed (1 when dense)."""
        if self._dense:
            return 1.0
        costs = self.model.gates.costs(self.state.outputs)
        spent = sum(cost * float(self._shares.computed.get(k, 1.0)) for k, cost in costs.items())
        return spent / sum(costs.values())
