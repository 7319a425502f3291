"""Block matching, move histories and splatting (vidseg_cli/predict/motion.py)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vidseg_cli.predict.data import _draw, blob_digits
from vidseg_cli.predict.motion import move_history, moves_into, offsets, splat, splat_average

MOVES = [(0, 3), (1, 4), (0, 4), (-1, 3), (0, 4)]  # (dy, dx) a step, as a 3.6-pixel motion gives them


def _moving_clip() -> torch.Tensor:
    """(1, 6, 1, 64, 64): a textured 28x28 blob moved by MOVES, one step a frame."""
    rng = np.random.default_rng(0)
    digit = (blob_digits(1)[0] > 0) * rng.integers(60, 256, (28, 28)).astype(np.uint8)
    path = np.cumsum([(10, 5), *MOVES], axis=0)
    canvas = np.zeros((6, 64, 64), np.uint8)
    _draw(canvas, digit, path)
    return torch.from_numpy(canvas).float()[None, :, None] / 255


def test_matching_finds_each_step_move_and_the_history_follows_the_patch_back():
    clip = _moving_clip()
    fields = torch.stack([moves_into(clip[:, t], clip[:, t - 1], 4, 4) for t in range(1, 6)], 1)  # (1, 5, 2, 16, 16)
    inside = F.avg_pool2d(clip[0, -1], 4)[0] > 0.2  # patches the blob covers
    assert (fields[0, -1, :, inside] == torch.tensor(MOVES[-1]).view(2, 1)).float().mean() > 0.9
    history = move_history(fields, 4, 4) * 4  # newest first
    y, x = (int(v.float().mean()) for v in torch.nonzero(inside, as_tuple=True))
    assert [tuple(history[0, 2 * k : 2 * k + 2, y, x].int().tolist()) for k in range(5)] == MOVES[::-1]
    assert not history[0, :, 0, 0].any()  # the blank corner: no move
    blank = torch.zeros_like(clip[:, 0])
    assert not moves_into(clip[:, 0], blank, 4, 4).any()  # before the first frame: nothing moved


def test_splat_sends_each_pixel_by_its_shift_and_adds_what_arrives():
    table = offsets(2).tolist()
    frame = torch.zeros(1, 1, 8, 8)
    frame[0, 0, 3, 4], frame[0, 0, 5, 4] = 0.5, 0.25
    weights = torch.zeros(1, 1, 25, 8, 8)
    weights[0, 0, table.index([1, -2]), 3, 4] = 1.0  # (3, 4) goes to (4, 2)
    weights[0, 0, table.index([-1, -2]), 5, 4] = 1.0  # (5, 4) to (4, 2) as well
    arrived = splat(weights * frame[:, :, None], 2)
    assert torch.nonzero(arrived[0, 0]).tolist() == [[4, 2]] and arrived[0, 0, 4, 2] == 0.75
    soft = torch.rand(2, 3, 25, 8, 8).softmax(2) * torch.rand(2, 3, 1, 8, 8)
    inside = splat(soft, 2)[:, :, 2:-2, 2:-2].sum()  # nothing is lost but what leaves the frame
    assert inside <= soft.sum() + 1e-4


def test_splat_average_keeps_a_scene_opaque_where_patches_crowd_or_spread():
    table = offsets(2).tolist()
    frame = torch.rand(1, 3, 16, 16)
    scores = torch.full((1, 25, 4, 4), -1e4)
    scores[:, table.index([0, 0])] = 0.0  # every patch stays ...
    assert torch.allclose(splat_average(frame, scores, 2, 4), frame, atol=1e-5)
    scores[:, table.index([0, 0]), :, 1] = -1e4
    scores[:, table.index([0, 2]), :, 1] = 0.0  # ... but column 1 moves 2 pixels right
    moved = splat_average(frame, scores, 2, 4)
    assert torch.allclose(moved[..., 4:6], frame[..., 4:6], atol=1e-5)  # the hole it leaves: what was there
    crowded = (frame[..., 8:10] + frame[..., 6:8]) / 2  # where it lands on column 2: the mean, not the sum
    assert torch.allclose(moved[..., 8:10], crowded, atol=1e-5)
    assert moved.max() <= frame.max() + 1e-6
