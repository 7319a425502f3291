"""The low-resolution change test: how much each stride-16 cell differs from its reference.

A fixed camera never gives two equal frames: sensor noise, compression and a slow drift of
exposure change every pixel a little. So the test compares 4x4 averages (the noise's
sigma / 4), takes out one gain for the whole frame (a drift of brightness scales every
pixel alike) and keeps, per cell, its largest remaining difference (a small object moving
changes few pixels, but by much).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

POOL = 4  # the thumbnail's stride: one value per 4x4 pixels
MIN_LEVEL = 16.0  # grey levels: darker thumbnail pixels say little about the frame's gain


def thumbnail(frame: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A decoded frame (H, W, 3) uint8 -> (3, h/4, w/4) float for the processing size (h, w),
    rounded up like the backbone's grids: box averages straight from the frame (PIL's, on
    bytes: 1 ms at 480p against 2 ms for torch's on floats), so a frame that runs nothing is
    never resized whole."""
    height, width = -(-size[0] // POOL), -(-size[1] // POOL)
    small = np.array(Image.fromarray(np.ascontiguousarray(frame)).resize((width, height), Image.BOX))
    return torch.from_numpy(small).permute(2, 0, 1).float()


def frame_gain(current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The one factor that best turns ``reference`` into ``current`` (a median of ratios:
    objects that moved are a minority of the pixels and do not move it)."""
    current, reference = current[:, ::2, ::2], reference[:, ::2, ::2]  # a quarter is plenty for a median
    lit = reference > MIN_LEVEL
    if not bool(lit.any()):
        return current.new_tensor(1.0)
    return (current[lit] / reference[lit]).median()


def residual(current: torch.Tensor, reference: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Thumbnails (3, h4, w4) -> (h4, w4): the difference once the frame's ``gain`` is taken
    out, in grey levels (mean over the three colours).

    Pitfall: a reference pieced together from cells computed on different frames holds as
    many exposures; so it is kept divided by each frame's gain (``RegionTracker``), or the
    drift since a cell was last computed would read as change."""
    return (current - gain * reference).abs().mean(0)


def change_map(current: torch.Tensor, reference: torch.Tensor, gain: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Thumbnails (3, h4, w4) -> (h16, w16): each cell's largest ``residual``."""
    return per_cell(residual(current, reference, gain), "max", grid)


def per_cell(values: torch.Tensor, how: str, grid: tuple[int, int]) -> torch.Tensor:
    """A thumbnail-grid map (h4, w4) -> (h16, w16) by max, min or mean over each cell."""
    x, side = values[None, None].float(), 16 // POOL
    if how == "max":
        pooled = F.max_pool2d(x, side, ceil_mode=True)
    elif how == "min":
        pooled = -F.max_pool2d(-x, side, ceil_mode=True)
    else:
        pooled = F.avg_pool2d(x, side, ceil_mode=True)
    return pooled[0, 0, : grid[0], : grid[1]]
