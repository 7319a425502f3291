"""A memory slot: one frame's key and value, whatever the task. Its own module, below both
the bank that keeps slots and the policies that plan which to drop."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch


@dataclass
class Slot:
    """One memory template: a frame's key and value, whatever the task.

    key: (C, H, W), unit norm along C. value: (O, ...), one entry per object the slot
    knows: for segment the probability (O, H, W) or features (O, D, H, W) of each object,
    and an object that joined after the frame was written is unknown to it (fewer
    entries); for predict one "object", the scene (1, D, H, W).
    """

    key: torch.Tensor
    value: torch.Tensor
    frame: int
    permanent: bool = False
    fused: int = 0  # how many dropped slots were distilled into this one
    # A fresh serial for every Slot object (replace() gives a new one), keying the
    # similarity cache: a fused slot must not reuse the similarities of its old self.
    uid: int = field(init=False, default_factory=itertools.count().__next__)

    @property
    def nbytes(self) -> int:
        return self.key.numel() * self.key.element_size() + self.value.numel() * self.value.element_size()
