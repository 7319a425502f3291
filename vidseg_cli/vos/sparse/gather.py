"""Convolutions evaluated at selected output positions only: gather, matrix product, scatter.

On a CPU a dense convolution costs the same however many of its outputs a gate throws
away afterwards, so SpVOS's skip and reuse policies only save time if the skipped and
reused positions are never convolved. Each function here gathers what the selected
positions read, runs the convolution as one matrix product over those rows (so
``FlopCounterMode`` counts exactly the work done) and returns one row per position.

Conventions: one image at a time, maps ``(C, H, W)``; ``positions`` are flat indices
``y * W_out + x`` into the output map; padding is given as ``(top, left)`` and matches
the dense layer's (TensorFlow "same" for the backbone, symmetric for the decoder).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) along one axis: the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def output_size(size: int, kernel: int, stride: int, before: int, after: int) -> int:
    return (size + before + after - kernel) // stride + 1


def _patch_index(
    positions: torch.Tensor, out_width: int, padded_width: int, kernel: int, stride: int
) -> torch.Tensor:
    """(N, k*k) flat indices into the padded input that each output position reads."""
    oy, ox = positions // out_width, positions % out_width
    corner = oy * stride * padded_width + ox * stride
    dy, dx = torch.meshgrid(torch.arange(kernel), torch.arange(kernel), indexing="ij")
    offsets = (dy * padded_width + dx).flatten().to(positions.device)
    return corner[:, None] + offsets[None, :]


def _padded_patches(
    x: torch.Tensor, positions: torch.Tensor, out_width: int, kernel: int, stride: int, padding: tuple[int, int, int, int]
) -> torch.Tensor:
    """(C, N, k*k): the input values under the kernel at each selected output position.

    padding = (top, bottom, left, right) with zeros, as the dense layer pads."""
    top, bottom, left, right = padding
    padded = F.pad(x, (left, right, top, bottom)) if any(padding) else x
    index = _patch_index(positions, out_width, padded.shape[-1], kernel, stride)
    return padded.flatten(1)[:, index]


def conv_at(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    positions: torch.Tensor,
    out_width: int,
    stride: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> torch.Tensor:
    """A dense (groups=1) k x k convolution at ``positions`` -> (N, C_out)."""
    cout, cin, kernel, _ = weight.shape
    if kernel == 1 and stride == 1 and not any(padding):
        rows = x.flatten(1)[:, positions].T  # (N, C_in): a 1x1 conv is a product of pixel rows
        out = rows @ weight.view(cout, cin).T
    else:
        patches = _padded_patches(x, positions, out_width, kernel, stride, padding)  # (C, N, kk)
        out = patches.permute(1, 0, 2).reshape(len(positions), cin * kernel * kernel) @ weight.view(cout, -1).T
    return out + bias if bias is not None else out


def depthwise_at(
    x: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    out_width: int,
    stride: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> torch.Tensor:
    """A depthwise k x k convolution (weight (C, 1, k, k)) at ``positions`` -> (N, C).

    One batched product per channel (bmm), so the FLOP counter sees it, unlike an
    elementwise multiply-and-sum."""
    channels, _, kernel, _ = weight.shape
    patches = _padded_patches(x, positions, out_width, kernel, stride, padding)  # (C, N, kk)
    return torch.bmm(patches, weight.view(channels, kernel * kernel, 1))[..., 0].T


def needed_inputs(selected: torch.Tensor, in_size: tuple[int, int], kernel: int, stride: int, top_left: tuple[int, int]) -> torch.Tensor:
    """The input pixels (bool map of ``in_size``) that a k x k, stride-s convolution reads to
    produce the ``selected`` outputs (bool (H_out, W_out)), given its (top, left) padding."""
    ones = torch.ones(1, 1, kernel, kernel, dtype=torch.float32, device=selected.device)
    spread = F.conv_transpose2d(selected[None, None].float(), ones, stride=stride)[0, 0]
    top, left = top_left
    spread = spread[top : top + in_size[0], left : left + in_size[1]]
    if spread.shape != in_size:  # the output grid can stop short of the input's last rows
        spread = F.pad(spread, (0, in_size[1] - spread.shape[1], 0, in_size[0] - spread.shape[0]))
    return spread > 0
