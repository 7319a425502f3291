"""The DAVIS / PASCAL VOC palette: index = object id, so label PNGs read back exactly."""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def davis_palette() -> np.ndarray:
    """(256, 3) uint8: the bit-interleaved VOC colour map (0 black, 1 red, 2 green, ...)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette
