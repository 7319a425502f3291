"""Training-free label propagation: ImageNet features as keys, masks as values.

Every frame is matched against the memory (see memory/readout.py) and inherits the
labels of the pixels it resembles most. No learned head: this is the floor the learned
VOS model must beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.memory.fusion import TrainingFreeFusion
from vidseg_cli.memory.readout import ReadConfig, read_memory
from vidseg_cli.memory.slot import Slot
from vidseg_cli.models.backbone import EfficientNetLite
from vidseg_cli.vos.refine import refine_upsample


@dataclass(frozen=True)
class PropagateConfig:
    read: ReadConfig = ReadConfig()
    stride: int = 8  # resolution of keys, values and the memory
    key_layers: tuple[str, ...] = ("s8", "s16")  # backbone taps joined into the key
    refine_radius: int = 4  # guided-filter upsampling; 0 = plain bilinear
    refine_eps: float = 1e-3


@dataclass(frozen=True)
class KeyFrame:
    key: torch.Tensor  # (C, h, w) on the stride-8 grid

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.key.shape[-2:])


class PropagationModel(nn.Module):
    """Stateless: all per-video state lives in the session's memory bank."""

    def __init__(self, backbone: EfficientNetLite, config: PropagateConfig = PropagateConfig()) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config

    @torch.inference_mode()
    def encode(self, image: torch.Tensor) -> KeyFrame:
        """image: (3, H, W) float RGB in [0, 255] -> key (C, H/8, W/8), unit norm along C.

        The key joins stride-8 features (texture, precise location) with upsampled
        stride-16 features (object parts), each normalised so neither dominates.
        """
        feats = self.backbone(image[None])
        grid = feats.s8.shape[-2:]
        parts = []
        for name in self.config.key_layers:
            layer = getattr(feats, name)
            if layer.shape[-2:] != grid:
                layer = F.interpolate(layer, size=grid, mode="bilinear", align_corners=False)
            parts.append(F.normalize(layer[0], dim=0))
        return KeyFrame(F.normalize(torch.cat(parts), dim=0))

    @torch.inference_mode()
    def segment(self, frame: KeyFrame, slots: Sequence[Slot], objects: int) -> torch.Tensor:
        """Per-object probabilities (objects, h, w) read from memory."""
        return read_memory(frame.key, slots, objects, self.config.read)

    @torch.inference_mode()
    def upsample(self, probs: torch.Tensor, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Grid probabilities (C, h, w) -> (C, *size); the guided filter refines them at the
        processed image's size first."""
        if self.config.refine_radius > 0:
            probs = refine_upsample(probs, image, self.config.refine_radius, self.config.refine_eps)
        if tuple(probs.shape[-2:]) == tuple(size):
            return probs
        return F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]

    def memorize(self, frame: KeyFrame, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (key, value) a frame writes into memory: values are the probabilities."""
        return frame.key, probs

    def fusion(self) -> TrainingFreeFusion:
        return TrainingFreeFusion()
