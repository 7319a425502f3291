"""Motion for the predictor: each patch's recent moves, found by block matching, and the
shift kernels that move a frame by the shift head's scores (``SHIFT_KERNELS``).

Why explicit moves: a digit moving 3.6 pixels a step moves 3 or 4 pixels by a phase that
only a long history shows (the 3,4,4,3,4,... pattern), and a network given ten frames does
not learn to read it from pixels ten patches apart in thousands of sequences
(docs/training.md). Block matching reads it exactly, with dense kernels, and a small
per-patch reader learns what comes next.

Shifts are indexed as ``F.unfold`` orders a (2R+1)^2 window: index j is the offset
``offsets(R)[j]`` = (dy, dx), row-major from (-R, -R).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def offsets(radius: int) -> torch.Tensor:
    """((2R+1)^2, 2) integer offsets (dy, dx) in unfold's order."""
    steps = torch.arange(-radius, radius + 1)
    return torch.stack(torch.meshgrid(steps, steps, indexing="ij"), -1).flatten(0, 1)


def moves_into(now: torch.Tensor, before: torch.Tensor, radius: int, patch: int) -> torch.Tensor:
    """(B, 2, H/p, W/p): the integer move (dy, dx) of each p x p patch of ``now`` from
    ``before`` (both (B, C, H, W)), the one of up to ``radius`` pixels whose 2p x 2p blocks
    around the patch differ least. Ties, e.g. on a blank canvas, go to the smallest move.
    Per patch, not per pixel: the argmin over 16 times fewer places is what makes it cheap."""
    b, _, h, w = now.shape
    shifts = (2 * radius + 1) ** 2
    if not before.any():  # a blank frame before the video's first: nothing moved
        return torch.zeros(b, 2, h // patch, w // patch, dtype=now.dtype, device=now.device)
    table = offsets(radius).to(now.device)
    with torch.no_grad():  # an argmin: nothing to learn through
        grey_now, grey_before = now.mean(1, keepdim=True), before.mean(1, keepdim=True)
        candidates = F.unfold(grey_before, 2 * radius + 1, padding=radius).view(b, shifts, h, w)  # before(x + o)
        cost = F.avg_pool2d((candidates - grey_now).square_(), 2 * patch, patch, patch // 2)  # (B, shifts, h/p, w/p)
        cost += 1e-6 * table.abs().sum(1).view(1, -1, 1, 1).to(cost.dtype)
        return -table[cost.argmin(1)].permute(0, 3, 1, 2).to(now.dtype)  # came from x + o: moved by -o


def move_history(fields: torch.Tensor, radius: int, patch: int) -> torch.Tensor:
    """fields (B, K, 2, h, w), oldest first, field k holding each patch's move into frame k+1
    from frame k of a stack (``moves_into``); (B, 2K, h, w): for each patch of the stack's
    last frame, the moves of its centre into that frame, the one before, ..., followed back
    along its path pixel by pixel, in units of ``radius``."""
    b, k, _, h, w = fields.shape
    device = fields.device
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    y, x = (ys * patch + patch // 2).expand(b, h, w), (xs * patch + patch // 2).expand(b, h, w)  # pixels
    video = torch.arange(b, device=device).view(b, 1, 1)
    history = []
    for back in range(k - 1, -1, -1):
        move = fields[:, back][video, :, y // patch, x // patch].permute(0, 3, 1, 2)  # (B, 2, h, w)
        history.append(move)
        y = (y - move[:, 0].long()).clamp(0, h * patch - 1)
        x = (x - move[:, 1].long()).clamp(0, w * patch - 1)
    return torch.cat(history, 1) / radius


def splat(moving: torch.Tensor, radius: int) -> torch.Tensor:
    """moving (B, C, (2R+1)^2, H, W): what each pixel sends by each shift; (B, C, H, W), the
    sum of what arrives at each pixel. This is ``F.fold``, the adjoint of the unfold that
    gathers: a pixel's move belongs to the pixel that moves, so a pixel a digit is about to
    cover needs no knowledge of that digit."""
    b, c, shifts, h, w = moving.shape
    return F.fold(moving.reshape(b, c * shifts, h * w), (h, w), 2 * radius + 1, padding=radius)


def shift_weights(scores: torch.Tensor, hard: bool) -> torch.Tensor:
    """The softmax over shifts (dim 1), or, ``hard``, its one-hot argmax: the output is then
    a moved copy of the frame, exactly as sharp, and training reaches the scores through the
    softmax (straight-through, Bengio et al. 2013)."""
    weights = scores.softmax(1)
    if not hard:
        return weights
    one_hot = F.one_hot(weights.argmax(1), weights.shape[1]).movedim(-1, 1).to(weights.dtype)
    return one_hot + (weights - weights.detach())


def shift_patches(frame: torch.Tensor, scores: torch.Tensor, radius: int, patch: int, hard: bool = False) -> torch.Tensor:
    """frame (B, C, H, W) moved by each p x p patch's shift: the sum over the (2R+1)^2
    shifted copies, weighted by ``shift_weights`` of ``scores`` (B, (2R+1)^2, H/p, W/p).

    Each output patch reads only the window of its p + 2R pixels a side, so the sum is one
    depthwise convolution of every patch's window with that patch's kernel (3x faster forward
    and backward than weighting (2R+1)^2 full-frame copies, which the test checks it equals).
    Zero padding: what enters from outside the frame is blank, as on Moving MNIST's canvas."""
    b, c, height, width = frame.shape
    h, w, k, side = height // patch, width // patch, 2 * radius + 1, patch + 2 * radius
    windows = F.unfold(frame, side, padding=radius, stride=patch).view(b, c, side, side, h * w)
    windows = windows.permute(0, 4, 1, 2, 3).reshape(1, b * h * w * c, side, side)
    kernels = shift_weights(scores, hard).view(b, k, k, h * w).permute(0, 3, 1, 2)  # (B, hw, k, k)
    kernels = kernels[:, :, None].expand(b, h * w, c, k, k).reshape(b * h * w * c, 1, k, k)
    moved = F.conv2d(windows, kernels, groups=b * h * w * c)  # (1, B hw C, p, p)
    return moved.view(b, h, w, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def shift_pixels(frame: torch.Tensor, scores: torch.Tensor, radius: int, patch: int, hard: bool = False) -> torch.Tensor:
    """frame (B, C, H, W) moved per pixel: each pixel is the sum of its (2R+1)^2 shifted
    values weighted by its own distribution, ``scores`` (B, (2R+1)^2 p^2, H/p, W/p) unfolded
    to full resolution. Zero padding, as ``shift_patches``."""
    b, c, height, width = frame.shape
    weights = shift_weights(F.pixel_shuffle(scores, patch), hard)  # (B, K, H, W)
    candidates = F.unfold(frame, 2 * radius + 1, padding=radius).view(b, c, weights.shape[1], height, width)
    return (candidates * weights[:, None]).sum(2)


def _per_pixel(weights: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, K, h, w) weights of each patch -> (B, K, H, W): every pixel of a patch moves with it."""
    return weights.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def splat_patches(frame: torch.Tensor, scores: torch.Tensor, radius: int, patch: int, hard: bool = False) -> torch.Tensor:
    """frame (B, C, H, W) with every p x p patch sent by its own distribution over shifts,
    ``scores`` (B, (2R+1)^2, H/p, W/p): what arrives at a pixel is summed (``splat``). Where
    digits cross, both arrive, clamped to 1 as the generator's maximum would; the
    predictor's change then corrects what the sum got wrong."""
    weights = _per_pixel(shift_weights(scores, hard), patch)
    return splat(weights[:, None] * frame[:, :, None], radius).clamp(max=1.0)


def splat_average(frame: torch.Tensor, scores: torch.Tensor, radius: int, patch: int, hard: bool = False) -> torch.Tensor:
    """``splat_patches`` for natural images, where a scene is opaque and has no blank canvas:
    where more than one patch's weight arrives, the mean of what arrives (the sum would
    brighten it); where less than one arrives (a hole that spreading patches leave, as a
    camera moving forward does everywhere), the last frame's own pixel fills the missing
    share, so an uncovered place shows what was there, not black."""
    weights = _per_pixel(shift_weights(scores, hard), patch)
    arrived = splat(weights[:, None] * frame[:, :, None], radius)
    mass = splat(weights[:, None], radius)  # (B, 1, H, W): how much weight landed on each pixel
    return (arrived + (1 - mass).clamp(min=0) * frame) / mass.clamp(min=1)


# the predictor's --shift-kernel: how a frame is moved by the shift head's scores
SHIFT_KERNELS = {"patch": shift_patches, "pixel": shift_pixels, "splat": splat_patches, "splat-average": splat_average}
