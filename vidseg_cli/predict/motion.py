"""Each pixel's recent moves, found by block matching, and the moves that act on a frame.

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
    table = offsets(radius).to(now.device)
    if not before.any():  # a blank frame before the video's first: nothing moved
        return torch.zeros(b, 2, h // patch, w // patch, dtype=now.dtype, device=now.device)
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
