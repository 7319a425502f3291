"""Video prediction metrics on frames in [0, 1] (Moving MNIST conventions, STReMN Table 6).

MSE and MAE are summed over the pixels of a frame, then averaged over frames; PSNR is
from the per-pixel MSE; SSIM uses the standard 11x11 Gaussian window (sigma 1.5,
K1 = 0.01, K2 = 0.03, data range 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def frame_mse(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(T, H, W) -> (T,): squared error summed over each frame's pixels."""
    return ((prediction - truth) ** 2).flatten(1).sum(1)


def frame_mae(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (prediction - truth).abs().flatten(1).sum(1)


def psnr(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(T,) PSNR in dB per frame; infinite for identical frames."""
    mse = ((prediction - truth) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def frame_ssim(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(T, C, H, W) -> (T,): ``ssim`` of each channel, averaged over channels."""
    t, c = prediction.shape[:2]
    return ssim(prediction.flatten(0, 1), truth.flatten(0, 1)).view(t, c).mean(1)


def ssim(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(T, H, W) -> (T,) mean SSIM per frame (valid windows only, as skimage with
    gaussian_weights=True, use_sample_covariance=False)."""
    c1, c2 = 0.01**2, 0.03**2
    g = _gaussian()
    kernel_x = g.view(1, 1, 1, -1)
    kernel_y = g.view(1, 1, -1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kernel_x), kernel_y)

    x = prediction.double().unsqueeze(1)
    y = truth.double().unsqueeze(1)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).flatten(1).mean(1).float()


def summary(prediction: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Means over frames of MSE, MAE (per frame sums), PSNR and SSIM."""
    p = psnr(prediction, truth)
    return {
        "MSE": float(frame_mse(prediction, truth).mean()),
        "MAE": float(frame_mae(prediction, truth).mean()),
        "PSNR": float(p[torch.isfinite(p)].mean()) if torch.isfinite(p).any() else math.inf,
        "SSIM": float(ssim(prediction, truth).mean()),
    }
