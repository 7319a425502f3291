"""A memory network with Reuse-VOS heads: the stateless pieces a reusing session calls."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidseg_cli.memory.slot import Slot
from vidseg_cli.models.backbone import Features
from vidseg_cli.models.registry import load_strict
from vidseg_cli.vos.memnet import ExtendedMemoryNetwork, MemNetFrame, MemoryNetwork
from vidseg_cli.vos.models import load_addon
from vidseg_cli.vos.reuse.heads import REUSE_ARCH, ReuseConfig, ReuseHeads


@dataclass(frozen=True)
class Stride8Frame:
    """A frame encoded up to stride 8: all a reused frame ever computes of the backbone."""

    s4: torch.Tensor  # (1, C4, h4, w4)
    s8: torch.Tensor  # (1, C8, h8, w8)


class ReuseModel(ExtendedMemoryNetwork):
    """``base`` with its reuse heads. A full frame runs ``base`` in two halves around stride 8
    (the gate reads the first) and keeps the decoder's refined stride-8 maps (the translator
    starts from them)."""

    def __init__(self, base: MemoryNetwork, heads: ReuseHeads) -> None:
        super().__init__(base)
        self.heads = heads

    def encode(self, image: torch.Tensor) -> MemNetFrame:
        return self.complete(self.encode_stride8(image))

    def segment(self, frame: MemNetFrame, slots: Sequence[Slot], objects: int) -> torch.Tensor:
        return self.segment_refined(frame, slots, objects)[0]

    # -- the two halves and the reuse path --

    @torch.inference_mode()
    def encode_stride8(self, image: torch.Tensor) -> Stride8Frame:
        return Stride8Frame(*self.base.backbone.to_stride8(image[None]))

    @torch.inference_mode()
    def complete(self, partial: Stride8Frame) -> MemNetFrame:
        features = Features(partial.s4, partial.s8, self.base.backbone.stride8_to_16(partial.s8))
        return MemNetFrame(self.base.keys(features)[0], features)

    @torch.inference_mode()
    def segment_refined(self, frame: MemNetFrame, slots: Sequence[Slot], objects: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities (O, h4, w4), refined maps R8 (O, C, h8, w8)) read from memory."""
        readout = self.base.read(frame.key, slots, objects)  # (O, Cv, h, w)
        f = frame.features
        repeated = Features(*(t.expand(objects, -1, -1, -1) for t in (f.s4, f.s8, f.s16)))
        decoder = self.base.heads.decoder
        refined8 = decoder.refined8(readout, repeated)
        return torch.sigmoid(decoder.finish(refined8, repeated.s4)), refined8

    @torch.inference_mode()
    def template(self, partial: Stride8Frame, probs: torch.Tensor) -> torch.Tensor:
        """(O, 2, c_f) from a frame's features and its object probabilities (O, h4, w4)."""
        return self.heads.matching.template(partial.s8, self.to_stride8_grid(probs, partial))

    @torch.inference_mode()
    def gate(self, partial: Stride8Frame, score8: torch.Tensor, template: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P_gate (O,), Delta_t (O, 1, h8, w8)) against the last fully computed frame."""
        return self.heads.gate_and_delta(partial.s8, score8, template)

    @torch.inference_mode()
    def translate(self, partial: Stride8Frame, refined8: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The reused frame's probabilities (O, h4, w4) from the last full frame's R8."""
        translated = self.heads.translator(refined8, delta)
        s4 = partial.s4.expand(refined8.shape[0], -1, -1, -1)
        return torch.sigmoid(self.base.heads.decoder.finish(translated, s4))

    @staticmethod
    def to_stride8_grid(probs: torch.Tensor, partial: Stride8Frame) -> torch.Tensor:
        """(O, h4, w4) -> (O, 1, h8, w8): the score map S as the heads see it."""
        return F.interpolate(probs[:, None], size=partial.s8.shape[-2:], mode="area")


def create_reuse_model(model: str, heads: str, device: torch.device | str = "cpu") -> ReuseModel:
    """A learned VOS model with Reuse-VOS heads (a weights.toml name or a file from
    ``vidseg train reuse``), which must have been trained on that very model."""
    base, state, metadata, path = load_addon(model, heads, REUSE_ARCH, "reuse heads", "reuse", device)
    module = load_strict(ReuseHeads(ReuseConfig(**json.loads(metadata["config"]))), state, path)
    return ReuseModel(base, module).to(device).eval()
