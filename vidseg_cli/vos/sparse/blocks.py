"""Network blocks evaluated at selected output positions (inference; eval-mode BatchNorm)."""

from __future__ import annotations

import torch
from torch import nn

from vidseg_cli.models.backbone import MBConv, bn_affine
from vidseg_cli.vos.sparse.gather import (
    conv_at,
    depthwise_at,
    needed_inputs,
    output_size,
    same_padding,
)


def block_geometry(block: MBConv, in_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The block's output size and its depthwise padding (top, bottom, left, right)."""
    conv = block._depthwise_conv
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    top, bottom = same_padding(in_size[0], kernel, stride)
    left, right = same_padding(in_size[1], kernel, stride)
    out = (output_size(in_size[0], kernel, stride, top, bottom), output_size(in_size[1], kernel, stride, left, right))
    return out, (top, bottom, left, right)


def _bn_act(rows: torch.Tensor, bn: nn.BatchNorm2d, relu6: bool) -> torch.Tensor:
    scale, shift = bn_affine(bn)
    rows = rows * scale + shift
    return rows.clamp(0.0, 6.0) if relu6 else rows


def mbconv_at(block: MBConv, x: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """``block(x)`` at the ``selected`` outputs (bool (H_out, W_out)) -> (N, C_out), rows in
    ``selected.flatten().nonzero()`` order. x: (C_in, H, W).

    The 1x1 expansion runs only on the pixels the depthwise kernel reads around the selected
    outputs; every other pixel of the expanded map stays zero, which no selected output reads."""
    conv = block._depthwise_conv
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    height, width = x.shape[-2:]
    out_size, padding = block_geometry(block, (height, width))
    positions = selected.flatten().nonzero()[:, 0]
    if block.expand:
        need = needed_inputs(selected, (height, width), kernel, stride, (padding[0], padding[2]))
        need = need.flatten().nonzero()[:, 0]
        rows = _bn_act(conv_at(x, block._expand_conv.weight, None, need, width), block._bn0, relu6=True)
        mid = x.new_zeros(rows.shape[1], height * width)
        mid[:, need] = rows.T
        mid = mid.view(-1, height, width)
    else:
        mid = x
    rows = _bn_act(depthwise_at(mid, conv.weight, positions, out_size[1], stride, padding), block._bn1, relu6=True)
    projection = block._project_conv.weight
    rows = _bn_act(rows @ projection.view(projection.shape[0], -1).T, block._bn2, relu6=False)
    if block.residual:
        rows = rows + x.flatten(1)[:, positions].T
    return rows
