"""Training samples for the single-frame network (training step ``single``): a labelled
frame under random scale (0.5-2), crop, left-right flip and colour jitter. ``moved`` makes
the pseudo-clips of step ``memory`` (``semseg/memory_train.py``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vidseg_cli.semseg.data import LabelledSequence, read_label


@dataclass
class Sample:
    image: torch.Tensor  # (3, H, W) float in [0, 255]
    label: torch.Tensor  # (H, W) int64 class ids, void included


class SemsegSampler:
    def __init__(
        self,
        sequences: list[LabelledSequence],
        crop: tuple[int, int],
        classes: int,
        void: int,
        rng: np.random.Generator,
    ) -> None:
        self.crop, self.rng = crop, rng
        self.void = void
        # decoded once: CamVid's 367 training frames are ~190 MB as uint8
        self.images = [[rgb(f.image) for f in s.frames] for s in sequences]
        self.labels = [[torch.from_numpy(read_label(f.label, classes, void).astype(np.int64)) for f in s.frames] for s in sequences]
        self.index = [(s, f) for s, seq in enumerate(sequences) for f in range(len(seq.frames))]

    def sample(self) -> Sample:
        s, f = self.index[self.rng.integers(len(self.index))]
        image, label = self._augment(self.images[s][f].float()[None], self.labels[s][f])
        return Sample(image[0], label)

    def _augment(self, frames: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = self.crop
        scale = self.rng.uniform(0.5, 2.0)
        size = (max(height, round(frames.shape[-2] * scale)), max(width, round(frames.shape[-1] * scale)))
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        top, left = self.rng.integers(0, size[0] - height + 1), self.rng.integers(0, size[1] - width + 1)
        frames = frames[..., top : top + height, left : left + width]
        label = label[top : top + height, left : left + width]
        if self.rng.random() < 0.5:
            frames, label = frames.flip(-1), label.flip(-1)
        return _jitter(frames, self.rng), label


def _jitter(frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One brightness, contrast and saturation change for the whole sample."""
    grey = frames.mean(1, keepdim=True)
    frames = grey + (frames - grey) * rng.uniform(0.8, 1.2)
    mean = frames.mean(dim=(1, 2, 3), keepdim=True)
    return ((frames - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-20, 20)).clamp(0, 255)


def moved(image: torch.Tensor, steps: int, rng: np.random.Generator) -> torch.Tensor:
    """The frame (3, H, W) as it might have looked ``steps`` frames earlier: a small drift
    (shift, zoom, turn) growing with ``steps``, and a slight change of light."""
    shift = rng.normal(0, 0.01, size=2) * steps
    zoom = 1 + rng.normal(0, 0.01) * steps
    turn = math.radians(rng.normal(0, 0.3) * steps)
    cos, sin = math.cos(turn) / zoom, math.sin(turn) / zoom
    theta = torch.tensor([[cos, -sin, shift[0]], [sin, cos, shift[1]]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
    drifted = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return (drifted * rng.uniform(0.95, 1.05) + rng.uniform(-8, 8)).clamp(0, 255)


def rgb(path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()  # uint8


def batch(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 3, H, W), labels (B, H, W))."""
    return torch.stack([s.image for s in samples]), torch.stack([s.label for s in samples])
