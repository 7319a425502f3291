"""The interface a VOS model offers the session: training-free and learned models alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from vidseg_cli.memory.slot import Slot


class EncodedFrame(Protocol):
    """What a model computes once per frame and reuses for reading and writing memory."""

    key: torch.Tensor  # (C, h, w): what memory matches against

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the probability maps ``segment`` returns and ``memorize`` takes."""
        ...


class VOSModel(Protocol):
    """Stateless: a session passes in everything a call needs."""

    def encode(self, image: torch.Tensor) -> EncodedFrame:
        """(3, H, W) RGB in [0, 255] -> the frame's features."""
        ...

    def segment(self, frame: EncodedFrame, slots: Sequence[Slot], objects: int) -> torch.Tensor:
        """Per-object probabilities (objects, *frame.grid) read from memory."""
        ...

    def upsample(self, probs: torch.Tensor, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Grid probabilities -> probabilities at ``size`` (the input's resolution), with the
        processed image at hand for models whose upsampling follows its edges."""
        ...

    def memorize(self, frame: EncodedFrame, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (key, value) a frame writes into memory; probs: (objects, *frame.grid)."""
        ...

    def fusion(self):
        """The STReMN fusion cell that distills dropped slots (None: drop without fusing)."""
        ...
