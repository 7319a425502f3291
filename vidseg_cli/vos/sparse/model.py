"""A memory network with SpVOS gates in its backbone: the stateless pieces a sparse session calls."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vidseg_cli.memory.slot import Slot
from vidseg_cli.vos.memnet import ExtendedMemoryNetwork, MemNetFrame, MemoryNetwork
from vidseg_cli.vos.sparse.network import (
    LayerState,
    Shares,
    SparseGates,
    dense_runner,
    run_backbone,
    sparse_runner,
)


class SparseModel(ExtendedMemoryNetwork):
    """``base`` with its sparse gates; dense frames run ``base`` as it is."""

    def __init__(self, base: MemoryNetwork, gates: SparseGates) -> None:
        super().__init__(base)
        self.gates = gates

    # -- with the per-video layer state --

    @torch.inference_mode()
    def encode_dense(self, image: torch.Tensor, state: LayerState) -> MemNetFrame:
        """The full backbone, recording what the next frame's gates compare against."""
        return self._frame(run_backbone(self.base.backbone, image[None], dense_runner(self.gates, state)))

    @torch.inference_mode()
    def encode_sparse(self, image: torch.Tensor, state: LayerState, shares: Shares) -> MemNetFrame:
        """The gated backbone: each gated block computes only the tiles its gate keeps."""
        return self._frame(run_backbone(self.base.backbone, image[None], sparse_runner(self.gates, state, shares)))

    @torch.inference_mode()
    def segment_dense(self, frame: MemNetFrame, slots: Sequence[Slot], objects: int, state: LayerState) -> torch.Tensor:
        """``segment``, recording the decoder's gated layers."""
        return self._segment(frame, slots, objects, dense_runner(self.gates, state))

    @torch.inference_mode()
    def segment_sparse(
        self, frame: MemNetFrame, slots: Sequence[Slot], objects: int, state: LayerState, shares: Shares
    ) -> torch.Tensor:
        """``segment`` with the decoder's gated convolutions on the tiles their gates keep."""
        return self._segment(frame, slots, objects, sparse_runner(self.gates, state, shares))

    def _segment(self, frame: MemNetFrame, slots: Sequence[Slot], objects: int, run) -> torch.Tensor:
        readout = self.base.read(frame.key, slots, objects)
        return torch.sigmoid(self.base.decode(readout[None], frame.features, run)[0])

    def _frame(self, features) -> MemNetFrame:
        return MemNetFrame(self.base.keys(features)[0], features)
