"""ConvLSTM (Shi et al. 2015), as PredRNN and OpenSTL run it on Moving MNIST.

Frames are folded into 4x4 patches (64x64x1 -> 16x16x16); a stack of ConvLSTM layers reads
frame t and predicts frame t+1, one step at a time, from frame 0 on. After the observed
frames its own predictions are fed back (or, in training, the true frame where ``teacher``
says so: PredRNN's scheduled sampling). No peepholes, and the output as
OpenSTL has: a linear output, clipped to [0, 1] outside training (a sigmoid cannot
reach an exact-zero background under a squared loss, which costs it MAE and SSIM).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.models.config import JsonConfig

ARCH = "predict-convlstm"


@dataclass(frozen=True)
class ConvLstmConfig(JsonConfig):
    channels: int = 1
    frame_height: int = 64
    frame_width: int = 64
    patch: int = 4
    hidden: int = 64  # channels of every layer's state
    layers: int = 3
    kernel: int = 3


class _Cell(nn.Module):
    def __init__(self, cin: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.gates = nn.Conv2d(cin + hidden, 4 * hidden, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLstm(nn.Module):
    arch = ARCH
    first_predicted = 1  # frame t+1 from frame t, from the first frame on

    def __init__(self, config: ConvLstmConfig = ConvLstmConfig()) -> None:
        super().__init__()
        self.config = config
        folded = config.channels * config.patch**2
        widths = [folded] + [config.hidden] * config.layers
        self.cells = nn.ModuleList(_Cell(a, config.hidden, config.kernel) for a in widths[:-1])
        self.out = nn.Conv2d(config.hidden, folded, 1)

    def rollout(
        self,
        observed: torch.Tensor,
        future: int,
        banks: None = None,
        truth: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """observed (B, M, C, H, W) -> the predictions of frames 1 .. M+N-1 (B, M+N-1, C, H, W)."""
        if banks is not None:
            raise ValueError("ConvLSTM keeps its state in its cells: it reads no memory bank")
        b, m = observed.shape[:2]
        p = self.config.patch
        h, w = observed.shape[-2] // p, observed.shape[-1] // p
        state = [(observed.new_zeros(b, self.config.hidden, h, w),) * 2 for _ in self.cells]
        frame, predictions = observed[:, 0], []
        for t in range(1, m + future):
            x = F.pixel_unshuffle(frame, p)
            for index, cell in enumerate(self.cells):
                state[index] = cell(x, *state[index])
                x = state[index][0]
            predicted = F.pixel_shuffle(self.out(x), p)
            if not self.training:
                predicted = predicted.clamp(0, 1)
            predictions.append(predicted)
            frame = observed[:, t] if t < m else predicted
            if t >= m and teacher is not None:
                frame = torch.where(teacher[:, t - m].view(-1, 1, 1, 1), truth[:, t - m], predicted)
        return torch.stack(predictions, dim=1)
