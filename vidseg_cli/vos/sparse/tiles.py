"""MBConv blocks and convolutions evaluated on selected output tiles, or on one rectangle of
them: the fast paths for sparse inference.

Per-position gathering (gather.py, blocks.py) counts exactly the work of SpVOS's
per-pixel policies, but on a CPU it is slower than the dense block at any useful share:
the depthwise kernels and the expansion become memory-bound index gathers. Tiles keep the
convolutions dense and batched. The output map is cut into T x T tiles; a computed tile
reads its receptive field, ((T - 1) * stride + k) pixels a side, as one crop of the padded
input, and every computed tile goes through the block's own layers as one batch: expand
(1x1), depthwise (valid, stride s), project (1x1), with BatchNorm folded in. The halo is
the price: for T = 8, k = 3 a stride-2 tile expands 1.13x the pixels it needs, a stride-1
tile 1.56x.

The expanded map must be zero where the dense block pads it (the depthwise kernel reads
zeros there), not relu6(bn(0)): a validity mask of the padded input takes care of that.

A region (``mbconv_region``, ``conv_region``) is the other fast path: when the computed
tiles lie together (object-aware gates in the decoder compute a block around each object),
the rectangle that bounds them runs as one dense crop, with a single halo. It computes the tiles between them
too, but mkldnn's dense kernels on one large crop beat batches of small tiles by ~3x per
pixel (measured: block 0 at 99% of its tiles took 28 ms tiled against 8 ms dense).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.models.backbone import MBConv, conv_bn, folded
from vidseg_cli.vos.sparse.blocks import block_geometry


def tile_grid(out_size: tuple[int, int], tile: int) -> tuple[int, int]:
    """Tiles per column and per row covering an output map (the last ones may overhang)."""
    return math.ceil(out_size[0] / tile), math.ceil(out_size[1] / tile)


def _batched(selected: torch.Tensor) -> torch.Tensor:
    """Tile selections are (rows, cols) for one image or (B, rows, cols) for a batch."""
    return selected[None] if selected.dim() == 2 else selected


def _crops(x: torch.Tensor, selected: torch.Tensor, tile: int, stride: int, span: int, before: tuple[int, int]) -> torch.Tensor:
    """(N, C, span, span): the zero-padded input each selected tile reads, in
    ``selected.nonzero()`` order. x (B, C, H, W); ``before`` = padding (top, left)."""
    selected = _batched(selected)
    rows, cols = selected.shape[-2:]
    step = tile * stride
    top, left = before
    bottom = max(0, (rows - 1) * step + span - x.shape[-2] - top)
    right = max(0, (cols - 1) * step + span - x.shape[-1] - left)
    padded = F.pad(x, (left, right, top, bottom))
    windows = padded.unfold(2, span, step).unfold(3, span, step)  # (B, C, rows, cols, span, span), a view
    return windows.permute(0, 2, 3, 1, 4, 5)[selected]  # copies only the selected tiles


def mbconv_tiles(block: MBConv, x: torch.Tensor, selected: torch.Tensor, tile: int) -> torch.Tensor:
    """``block(x)`` on the ``selected`` output tiles (bool (rows, cols) of ``tile_grid``, or
    (B, rows, cols)) -> (N, C_out, tile, tile). x: (B, C_in, H, W), eval-mode BatchNorm."""
    conv = block._depthwise_conv
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    _, (top, _, left, _) = block_geometry(block, tuple(x.shape[-2:]))
    span = (tile - 1) * stride + kernel
    crops = _crops(x, selected, tile, stride, span, (top, left))
    if block.expand:
        mid = F.conv2d(crops, *folded(block._expand_conv, block._bn0)).clamp_(0.0, 6.0)
        inside = _crops(torch.ones_like(x[:, :1]), selected, tile, stride, span, (top, left))
        mid = mid * inside  # the dense block's padding is zero after the expansion too
    else:
        mid = crops
    y = F.conv2d(mid, *folded(conv, block._bn1), stride, groups=conv.groups).clamp_(0.0, 6.0)
    y = F.conv2d(y, *folded(block._project_conv, block._bn2))
    if block.residual:  # stride 1, same channels: the input under each output pixel
        y = y + crops[:, :, top : top + tile, left : left + tile]
    return y


def conv_tiles(conv: nn.Conv2d, x: torch.Tensor, selected: torch.Tensor, tile: int) -> torch.Tensor:
    """A stride-1 convolution with symmetric zero padding (k // 2, as the decoder's) on the
    ``selected`` output tiles -> (N, C_out, tile, tile). x: (B, C_in, H, W)."""
    kernel = conv.kernel_size[0]
    pad = kernel // 2
    crops = _crops(x, selected, tile, 1, tile + kernel - 1, (pad, pad))
    return F.conv2d(crops, conv.weight, conv.bias)


def scatter_tiles(
    base: torch.Tensor, rows: torch.Tensor, selected: torch.Tensor, tile: int, inplace: bool = False
) -> torch.Tensor:
    """``base`` (B, C, H, W) with the selected tiles replaced by ``rows`` (N, C, tile, tile).
    ``inplace`` writes into ``base`` when the tiles cover it exactly (a full-size copy less)."""
    selected = _batched(selected)
    batch, grid_rows, grid_cols = selected.shape
    channels, (height, width) = base.shape[1], base.shape[-2:]
    if inplace and base.is_contiguous() and (height, width) == (grid_rows * tile, grid_cols * tile):
        canvas = base
    else:
        canvas = base.new_empty(batch, channels, grid_rows * tile, grid_cols * tile)
        canvas[..., :height, :width] = base
    tiles = canvas.view(batch, channels, grid_rows, tile, grid_cols, tile).permute(0, 2, 4, 1, 3, 5)
    tiles[selected] = rows
    return canvas[..., :height, :width]


def _span(out_start: int, out_stop: int, stride: int, kernel: int, before: int, size: int) -> tuple[int, int, int, int]:
    """The input rows [start, stop) that outputs [out_start, out_stop) read, clipped to the map,
    and the zero rows (before, after) that stand for the padding outside it."""
    start = out_start * stride - before
    stop = (out_stop - 1) * stride - before + kernel
    return max(start, 0), min(stop, size), max(-start, 0), max(stop - size, 0)


def mbconv_region(block: MBConv, x: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """``block(x)[..., rows, cols]``, computed on that output rectangle only (eval-mode BatchNorm).

    The expansion runs on the input pixels the rectangle reads and the zero padding is added
    after it, as the dense block pads its expanded map."""
    conv = block._depthwise_conv
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    _, (top, _, left, _) = block_geometry(block, tuple(x.shape[-2:]))
    r0, r1, pad_top, pad_bottom = _span(rows.start, rows.stop, stride, kernel, top, x.shape[-2])
    c0, c1, pad_left, pad_right = _span(cols.start, cols.stop, stride, kernel, left, x.shape[-1])
    crop = x[..., r0:r1, c0:c1]
    mid = F.relu6(conv_bn(block._expand_conv, block._bn0, crop)) if block.expand else crop
    mid = F.pad(mid, (pad_left, pad_right, pad_top, pad_bottom))
    y = F.relu6(F.conv2d(mid, *folded(conv, block._bn1), stride, groups=conv.groups))
    y = conv_bn(block._project_conv, block._bn2, y)
    return y + x[..., rows, cols] if block.residual else y


def conv_region(conv: nn.Conv2d, x: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """``conv(x)[..., rows, cols]`` for a stride-1 convolution with symmetric padding k // 2."""
    kernel = conv.kernel_size[0]
    r0, r1, pad_top, pad_bottom = _span(rows.start, rows.stop, 1, kernel, kernel // 2, x.shape[-2])
    c0, c1, pad_left, pad_right = _span(cols.start, cols.stop, 1, kernel, kernel // 2, x.shape[-1])
    crop = F.pad(x[..., r0:r1, c0:c1], (pad_left, pad_right, pad_top, pad_bottom))
    return F.conv2d(crop, conv.weight, conv.bias)
