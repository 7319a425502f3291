"""SimVP (Gao et al. 2022): all-convolutional, no recurrence, all future frames at once.

A spatial encoder runs on every observed frame (3x3 convolutions, GroupNorm, LeakyReLU;
strides 1, 2, 1, 2: 64x64 -> 16x16); the translator sees the M frames' codes stacked as
channels and maps them to the N future frames' codes; a decoder mirrors the encoder
(upsampling by pixel shuffle, as OpenSTL does) with the first encoder layer's features
added back. The translator is ConvMixer's (Trockman and Kolter 2022; OpenSTL's
ConvMixer-SimVP): depthwise 7x7 convolutions with a residual, then pointwise ones. Longer
horizons roll forward a block of N frames at a time from the last M. A linear output, as
in SimVP, clipped to [0, 1] outside training (a sigmoid cannot reach an exact-zero
background under a squared loss, which costs it MAE and SSIM).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidseg_cli.models.config import JsonConfig

ARCH = "predict-simvp"


@dataclass(frozen=True)
class SimVPConfig(JsonConfig):
    channels: int = 1
    frame_height: int = 64
    frame_width: int = 64
    frames_in: int = 10
    frames_out: int = 10
    spatial: int = 32  # hid_S: the encoder's and decoder's channels
    temporal: int = 128  # hid_T: the translator's channels
    mixer_blocks: int = 6  # N_T
    mixer_kernel: int = 7

    def __post_init__(self) -> None:
        if self.frames_in != self.frames_out:
            raise ValueError("SimVP adds input frame i's encoder features to output frame i: frames_in must equal frames_out")


def _conv(cin: int, cout: int, stride: int = 1, up: bool = False) -> nn.Sequential:
    """SimVP's ConvSC: 3x3 conv, GroupNorm(2), LeakyReLU; ``up`` doubles the size by pixel shuffle."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout * 4 if up else cout, 3, stride=stride, padding=1)]
    if up:
        layers.append(nn.PixelShuffle(2))
    return nn.Sequential(*layers, nn.GroupNorm(2, cout), nn.LeakyReLU(0.2, inplace=True))


class _Mixer(nn.Module):
    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.spatial = nn.Sequential(nn.Conv2d(dim, dim, kernel, groups=dim, padding=kernel // 2), nn.GELU(), nn.BatchNorm2d(dim))
        self.pointwise = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(x + self.spatial(x))


class SimVP(nn.Module):
    arch = ARCH

    def __init__(self, config: SimVPConfig = SimVPConfig()) -> None:
        super().__init__()
        self.config = config
        c, s, t = config.channels, config.spatial, config.temporal
        self.first_predicted = config.frames_in
        self.encoder = nn.ModuleList([_conv(c, s), _conv(s, s, 2), _conv(s, s), _conv(s, s, 2)])
        self.translator = nn.Sequential(
            nn.Conv2d(config.frames_in * s, t, 1),
            *(_Mixer(t, config.mixer_kernel) for _ in range(config.mixer_blocks)),
            nn.Conv2d(t, config.frames_out * s, 1),
        )
        self.decoder = nn.ModuleList([_conv(s, s, up=True), _conv(s, s), _conv(s, s, up=True), _conv(s, s)])
        self.out = nn.Conv2d(s, c, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, frames_in, C, H, W) -> the next frames_out (B, frames_out, C, H, W)."""
        b, m = frames.shape[:2]
        x = frames.flatten(0, 1)
        skip = x = self.encoder[0](x)
        for layer in self.encoder[1:]:
            x = layer(x)
        codes = self.translator(x.unflatten(0, (b, m)).flatten(1, 2))  # (B, N s, h, w)
        x = codes.unflatten(1, (self.config.frames_out, self.config.spatial)).flatten(0, 1)
        for layer in self.decoder[:-1]:
            x = layer(x)
        x = self.decoder[-1](x + skip)  # frame i's code meets input frame i's edges (frames_in == frames_out)
        frames = self.out(x).unflatten(0, (b, self.config.frames_out))
        return frames if self.training else frames.clamp(0, 1)

    def rollout(
        self,
        observed: torch.Tensor,
        future: int,
        banks: None = None,
        truth: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """observed (B, M >= frames_in, C, H, W) -> the predictions of frames M .. M+N-1
        (``first_predicted`` assumes M = frames_in, as training and the bench give it).
        ``truth`` and ``teacher`` are accepted for the trainer's sake; SimVP never feeds
        frames back within a block, so it needs no scheduled sampling."""
        if banks is not None:
            raise ValueError("SimVP holds no memory bank: its input is the last frames_in frames")
        m = self.config.frames_in
        if observed.shape[1] < m:
            raise ValueError(f"SimVP reads the last {m} frames; {observed.shape[1]} given")
        frames, made = observed[:, -m:], []
        while sum(block.shape[1] for block in made) < future:
            block = self(frames)
            made.append(block)
            frames = torch.cat([frames, block], dim=1)[:, -m:]
        return torch.cat(made, dim=1)[:, :future]
