"""The interface a VOS model offers the session; the learned model implements it too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from vidseg_cli.memory.bank import Slot


class VOSModel(Protocol):
    """Stateless: a session passes in everything a call needs."""

    stride: int

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) RGB in [0, 255] -> the frame's key on the stride grid."""
        ...

    def segment(self, key: torch.Tensor, slots: Sequence[Slot], objects: int) -> torch.Tensor:
        """Per-object probabilities (objects, h, w) read from memory."""
        ...

    def upsample(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Grid probabilities -> probabilities at the processed image's size."""
        ...

    def memorize(self, key: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (key, value) a frame writes into memory."""
        ...
