"""A memory network with SpVOS gates in its backbone: the stateless pieces a sparse session calls."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from vidseg_cli.errors import VidsegError
from vidseg_cli.memory.slot import Slot
from vidseg_cli.models.registry import load_strict
from vidseg_cli.vos.memnet import ExtendedMemoryNetwork, MemNetFrame, MemoryNetwork
from vidseg_cli.vos.models import load_addon
from vidseg_cli.vos.sparse import network


class SparseModel(ExtendedMemoryNetwork):
    """``base`` with its sparse gates; dense frames run ``base`` as it is."""

    def __init__(self, base: MemoryNetwork, gates: network.SparseGates) -> None:
        super().__init__(base)
        self.gates = gates

    # -- with the per-video layer state --

    @torch.inference_mode()
    def encode_dense(self, image: torch.Tensor, state: network.LayerState) -> MemNetFrame:
        """The full backbone, recording what the next frame's gates compare against."""
        return self._frame(network.run_backbone(self.base.backbone, image[None], network.dense_runner(self.gates, state)))

    @torch.inference_mode()
    def encode_sparse(self, image: torch.Tensor, state: network.LayerState, shares: network.Shares) -> MemNetFrame:
        """The gated backbone: each gated block computes only the tiles its gate keeps."""
        return self._frame(network.run_backbone(self.base.backbone, image[None], network.sparse_runner(self.gates, state, shares)))

    @torch.inference_mode()
    def segment_dense(self, frame: MemNetFrame, slots: Sequence[Slot], objects: int, state: network.LayerState) -> torch.Tensor:
        """``segment``, recording the decoder's gated layers."""
        return self._segment(frame, slots, objects, network.dense_runner(self.gates, state))

    @torch.inference_mode()
    def segment_sparse(
        self, frame: MemNetFrame, slots: Sequence[Slot], objects: int, state: network.LayerState, shares: network.Shares
    ) -> torch.Tensor:
        """``segment`` with the decoder's gated convolutions on the tiles their gates keep."""
        return self._segment(frame, slots, objects, network.sparse_runner(self.gates, state, shares))

    def _segment(self, frame: MemNetFrame, slots: Sequence[Slot], objects: int, run) -> torch.Tensor:
        readout = self.base.read(frame.key, slots, objects)
        return torch.sigmoid(self.base.decode(readout[None], frame.features, run)[0])

    def _frame(self, features) -> MemNetFrame:
        return MemNetFrame(self.base.keys(features)[0], features)


def create_sparse_model(model: str, gates: str, mode: str, device: torch.device | str = "cpu") -> SparseModel:
    """A learned VOS model with SpVOS gates (a weights.toml name or a file from
    ``vidseg train sparse``) trained on that very model for that mode."""
    base, state, metadata, path = load_addon(model, gates, network.SPARSE_ARCH, "sparse gates", "sparse", device)
    config = network.SparseConfig.from_dict(json.loads(metadata["config"]))
    if config.mode != mode:
        raise VidsegError(f"sparse gates {gates} are for --sparse {config.mode}, not {mode}")
    tuned = {k[len(network.TUNED_PREFIX):]: v for k, v in state.items() if k.startswith(network.TUNED_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith(network.TUNED_PREFIX)}
    if config.tuned:
        base = _with_tuned_heads(base, tuned, config.tuned, path)
    module = load_strict(network.SparseGates(config, base.backbone, base.heads.decoder), state, path)
    return SparseModel(base, module).to(device).eval()


def _with_tuned_heads(model: MemoryNetwork, state: dict[str, torch.Tensor], names: tuple[str, ...], path: Path) -> MemoryNetwork:
    """A copy of ``model`` whose named heads hold the tensors trained with the gates (the
    registry's model is shared; its own heads stay as they are)."""
    tuned = model.with_own_heads()
    for name in names:
        own = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        load_strict(getattr(tuned.heads, name), own, path)
    return tuned
