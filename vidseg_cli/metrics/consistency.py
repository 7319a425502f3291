"""Temporal consistency of per-frame labels: the share of pixels whose class agrees with the
previous frame's labels carried to this frame by optical flow.

Flow is OpenCV's DIS (Kroeger et al. 2016; ``pip install "vidseg[flow]"``), from frame t to
frame t-1, so every pixel of t looks up where it was. Pixels whose source falls outside
frame t-1 (what entered the view) are left out of the share. A static clip scores 100; a
segmenter that flickers scores lower however right it is on average.
"""

from __future__ import annotations

import numpy as np

from vidseg_cli.errors import VidsegError


def opencv():
    try:
        import cv2
    except ImportError:
        raise VidsegError('temporal consistency needs OpenCV for optical flow: pip install "vidseg[flow]"') from None
    return cv2


class TemporalConsistency:
    """Feed frames and their labels in order (``add``); ``score`` is the mean agreement over
    consecutive pairs, in percent. ``reset`` starts a new video."""

    def __init__(self) -> None:
        self.cv2 = opencv()
        # DIS's medium preset: sub-pixel flow at a few ms a frame on a CPU, where Farneback
        # took ~10x longer for the same agreement on street video
        self.flow = self.cv2.DISOpticalFlow_create(self.cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.shares: list[float] = []
        self.reset()

    def reset(self) -> None:
        self.previous: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, image: np.ndarray, labels: np.ndarray) -> None:
        """image (H, W, 3) uint8 RGB; labels (H, W) class ids."""
        grey = self.cv2.cvtColor(np.ascontiguousarray(image), self.cv2.COLOR_RGB2GRAY)
        if self.previous is not None:
            previous_grey, previous_labels = self.previous
            warped, valid = self.warp(previous_labels, previous_grey, grey)
            self.shares.append(agreement(labels, warped, valid))
        self.previous = (grey, labels)

    def warp(self, labels: np.ndarray, previous_grey: np.ndarray, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame t-1's labels at frame t's pixels (nearest: labels stay labels), and where
        that lookup lands inside frame t-1."""
        flow = self.flow.calc(grey, previous_grey, None)
        h, w = grey.shape
        x = np.arange(w, dtype=np.float32)[None, :] + flow[..., 0]
        y = np.arange(h, dtype=np.float32)[:, None] + flow[..., 1]
        valid = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
        warped = self.cv2.remap(labels, x, y, self.cv2.INTER_NEAREST, borderMode=self.cv2.BORDER_REPLICATE)
        return warped, valid

    def score(self) -> float | None:
        return 100 * float(np.mean(self.shares)) if self.shares else None


def agreement(labels: np.ndarray, warped: np.ndarray, valid: np.ndarray) -> float:
    """Share of the valid pixels where the two label maps agree."""
    count = int(valid.sum())
    return float((labels == warped)[valid].sum() / count) if count else 1.0
