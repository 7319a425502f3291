"""Semantic segmentation: mIoU from a dataset-level confusion histogram.

IoU per class is accumulated over the whole dataset (not averaged per image), as the
CamVid / Cityscapes protocols do; pixels labelled ``ignore_index`` (void) are skipped.
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    def __init__(self, classes: int, ignore_index: int | None = 255) -> None:
        self.classes = classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((classes, classes), dtype=np.int64)  # [truth, prediction]

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        valid = truth != self.ignore_index if self.ignore_index is not None else np.ones(truth.shape, bool)
        truth, prediction = truth[valid].astype(np.int64), prediction[valid].astype(np.int64)
        if truth.size and (truth.max() >= self.classes or prediction.max() >= self.classes):
            raise ValueError(f"labels must lie in 0..{self.classes - 1} (or be the ignore index)")
        self.counts += np.bincount(truth * self.classes + prediction, minlength=self.classes**2).reshape(
            self.classes, self.classes
        )

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both truth and prediction."""
        hits = np.diag(self.counts).astype(np.float64)
        union = self.counts.sum(0) + self.counts.sum(1) - hits
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, hits / union, np.nan)

    def miou(self) -> float:
        return float(np.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        """Share of non-void pixels whose class is right."""
        total = self.counts.sum()
        return float(np.diag(self.counts).sum() / total) if total else float("nan")
