"""Each pixel's recent moves, found by block matching, and the moves that act on a frame.

Why explicit moves: a digit moving 3.6 pixels a step moves 3 or 4 pixels by a phase that
only a long history shows (the 3,4,4,3,4,... pattern), and a network given ten frames does
not learn to read it from pixels ten patches apart in thousands of sequences
(docs/training.md). Block matching reads it exactly, with dense kernels, and a small
per-pixel reader learns what comes next.

Shifts are indexed as ``F.unfold`` orders a (2R+1)^2 window: index j is the offset
``offsets(R)[j]`` = (dy, dx), row-major from (-R, -R).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW = 5  # pixels a side of the block compared by matching


def offsets(radius: int) -> torch.Tensor:
    """((2R+1)^2, 2) integer offsets (dy, dx) in unfold's order."""
    steps = torch.arange(-radius, radius + 1)
    return torch.stack(torch.meshgrid(steps, steps, indexing="ij"), -1).flatten(0, 1)


def moves_into(now: torch.Tensor, before: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 2, H, W): each pixel's integer move (dy, dx) into ``now`` from ``before`` (both
    (B, C, H, W)), the one of up to ``radius`` pixels whose WINDOW x WINDOW blocks differ
    least. Ties, e.g. on a blank canvas, go to the smallest move."""
    b, c, h, w = now.shape
    shifts = (2 * radius + 1) ** 2
    grey_now, grey_before = now.mean(1, keepdim=True), before.mean(1, keepdim=True)
    candidates = F.unfold(grey_before, 2 * radius + 1, padding=radius).view(b, shifts, h, w)  # before(x + o)
    cost = F.avg_pool2d((candidates - grey_now) ** 2, WINDOW, 1, WINDOW // 2, count_include_pad=False)
    table = offsets(radius).to(now.device)
    cost = cost + 1e-6 * table.abs().sum(1).view(1, -1, 1, 1).to(cost.dtype)
    return -table[cost.argmin(1)].permute(0, 3, 1, 2).to(now.dtype)  # came from x + o: moved by -o


def move_history(fields: torch.Tensor, radius: int) -> torch.Tensor:
    """fields (B, K, 2, H, W), oldest first, field k holding each pixel's move into frame k+1
    from frame k of a stack; (B, 2K, H, W): for each pixel of the stack's last frame, its moves
    into that frame, the one before, ..., following it back along its path, in units of
    ``radius``."""
    b, k, _, h, w = fields.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=fields.device), torch.arange(w, device=fields.device), indexing="ij")
    y, x = ys.expand(b, h, w), xs.expand(b, h, w)
    video = torch.arange(b, device=fields.device).view(b, 1, 1)
    history = []
    for back in range(k - 1, -1, -1):
        move = fields[:, back][video, :, y, x].permute(0, 3, 1, 2)  # (B, 2, H, W), where the pixel was then
        history.append(move)
        y = (y - move[:, 0].long()).clamp(0, h - 1)
        x = (x - move[:, 1].long()).clamp(0, w - 1)
    return torch.cat(history, 1) / radius


def splat(moving: torch.Tensor, radius: int) -> torch.Tensor:
    """moving (B, C, (2R+1)^2, H, W): what each pixel sends by each shift; (B, C, H, W), the
    sum of what arrives at each pixel. This is ``F.fold``, the adjoint of the unfold that
    gathers: a pixel's move belongs to the pixel that moves, so a pixel a digit is about to
    cover needs no knowledge of that digit."""
    b, c, shifts, h, w = moving.shape
    arrived = F.fold(moving.reshape(b, c * shifts, h * w), (h, w), 2 * radius + 1, padding=radius)
    return arrived
