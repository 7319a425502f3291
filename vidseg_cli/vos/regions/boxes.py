"""Boxes on the stride-16 grid: which part of a frame a region step computes.

A crop of the frame runs the same network as the whole frame only when its grids line up
with the frame's. Along an axis whose size is a multiple of 16 they do for any box of whole
stride-16 cells. Along another (360 rows: 45 stride-8 rows, 23 stride-16 rows) they cannot:
the decoder resizes stride-16 maps to the stride-8 grid by the ratio of the two sizes
(23/45, not 1/2), so a crop would map its cells to other positions than the frame does,
and the backbone's TensorFlow "same" padding of an odd size differs from an even one's.
There a box spans the whole axis (``Box.aligned``): crops are full-height strips at 360p.

Pitfall, measured: resizing by exactly 2 instead (and cutting to the finer grid) would let
boxes go anywhere, but the network learned its features' registration at sizes that are
multiples of 16, and at 360p the exact 2x lost 0.035 J&F on val-dev (0.820 -> 0.785): the
23/45 stretch happens to undo part of the half-cell shift of the odd size's padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

STRIDE = 16


@dataclass(frozen=True)
class Box:
    """Stride-16 cells [top, bottom) x [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def cells(self) -> int:
        return max(0, self.bottom - self.top) * max(0, self.right - self.left)

    def grown(self, cells: int, grid: tuple[int, int]) -> Box:
        """``cells`` more on every side, within the grid."""
        return Box(
            max(0, self.top - cells), max(0, self.left - cells), min(grid[0], self.bottom + cells), min(grid[1], self.right + cells)
        )

    def aligned(self, size: tuple[int, int]) -> Box:
        """The whole axis where the frame's ``size`` (pixels) is not a multiple of 16."""
        grid = cells_of(size)
        rows, cols = size[0] % STRIDE != 0, size[1] % STRIDE != 0
        return Box(
            0 if rows else self.top, 0 if cols else self.left, grid[0] if rows else self.bottom, grid[1] if cols else self.right
        )

    def inside(self, outer: Box) -> Box:
        """This box in ``outer``'s coordinates."""
        return Box(self.top - outer.top, self.left - outer.left, self.bottom - outer.top, self.right - outer.left)

    def size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Pixels this box covers of a frame of ``size`` (the last cell may be short)."""
        rows, cols = self.pixels(1, size)
        return rows.stop - rows.start, cols.stop - cols.start

    def pixels(self, stride: int, size: tuple[int, int]) -> tuple[slice, slice]:
        """Rows and columns of a map at ``stride`` (of a frame of ``size`` pixels) this box covers."""
        scale = STRIDE // stride
        height, width = (-(-n // stride) for n in size)
        return (
            slice(self.top * scale, min(height, self.bottom * scale)),
            slice(self.left * scale, min(width, self.right * scale)),
        )


def cells_of(size: tuple[int, int]) -> tuple[int, int]:
    """The stride-16 grid of a frame of ``size`` pixels (the backbone rounds up)."""
    return -(-size[0] // STRIDE), -(-size[1] // STRIDE)


def bounding_box(cells: torch.Tensor) -> Box | None:
    """The box around the true cells of a (h16, w16) bool map; None when there are none."""
    rows, cols = cells.any(1).nonzero(), cells.any(0).nonzero()
    if rows.numel() == 0:
        return None
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def dilate(cells: torch.Tensor, radius: int) -> torch.Tensor:
    """A (h, w) bool map grown by ``radius`` cells (a square neighbourhood)."""
    if radius <= 0:
        return cells
    grown = F.max_pool2d(cells[None, None].float(), 2 * radius + 1, stride=1, padding=radius)
    return grown[0, 0] > 0
