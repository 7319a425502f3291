"""mIoU and prediction metrics on hand-made inputs."""

import math

import numpy as np
import pytest
import torch

from vidseg_cli.metrics.prediction import frame_mae, frame_mse, psnr, ssim, summary
from vidseg_cli.metrics.segmentation import ConfusionMatrix


def test_miou_accumulates_over_the_dataset_and_skips_void():
    matrix = ConfusionMatrix(classes=3, ignore_index=11)
    truth = np.array([[0, 0, 1, 1], [2, 2, 11, 11]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    matrix.update(pred, truth)
    # void pixels count for nothing, predictions on them included:
    # class 0: hit 1, truth 2, pred 2 -> 1/3; class 1: hit 2, truth 2, pred 3 -> 2/3; class 2: 1/2
    assert matrix.iou() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    matrix.update(truth.clip(0, 2) * 0, np.zeros((2, 4), int))  # perfect class-0 image
    assert matrix.iou()[0] == pytest.approx((1 + 8) / (3 + 8))  # dataset-level, not per image
    assert matrix.miou() == pytest.approx(np.mean(matrix.iou()))


def test_miou_ignores_classes_never_seen():
    matrix = ConfusionMatrix(classes=4, ignore_index=None)
    matrix.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    assert math.isnan(matrix.iou()[3]) and matrix.miou() == 1.0
    with pytest.raises(ValueError):
        matrix.update(np.full((1, 1), 7), np.zeros((1, 1), int))


def test_frame_errors_are_sums_over_pixels():
    truth = torch.zeros(2, 4, 4)
    prediction = truth.clone()
    prediction[0, 0, :2] = 0.5  # two pixels off by 0.5
    assert frame_mse(prediction, truth).tolist() == [0.5, 0.0]
    assert frame_mae(prediction, truth).tolist() == [1.0, 0.0]
    assert psnr(prediction, truth)[0].item() == pytest.approx(10 * math.log10(1 / (0.5 / 16)))


def test_ssim_is_one_for_identical_frames_and_lower_for_noise():
    rng = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 32, 32, generator=rng)
    assert ssim(frame, frame).item() == pytest.approx(1.0, abs=1e-6)
    noisy = (frame + 0.3 * torch.randn(1, 32, 32, generator=rng)).clamp(0, 1)
    assert ssim(noisy, frame).item() < 0.8
    constant = torch.full((1, 32, 32), 0.5)
    # a constant pair: luminance term only, (2*0.25 + c1) / (0.5 + c1) == 1
    assert ssim(constant, constant).item() == pytest.approx(1.0)
    assert set(summary(noisy, frame)) == {"MSE", "MAE", "PSNR", "SSIM"}
