"""How far moving the last frame's patches can go, with the moves learnt as a classifier.

The moves run (docs/training.md) learns its move reader inside a 20-frame rollout, 3 s a
step. But the reader is a 20-in, 81-out MLP, and what it has to learn, the next integer
move of a 4x4 patch from the moves it made before, needs no frames rendered through the
network: block matching gives both the inputs (``motion.move_history``, as the predictor
computes them) and the target (where the patch of I_{t-1} went in I_t). So this trains the
reader alone, on move histories of thousands of sequences in minutes, and measures:

- accuracy: the next move of the patches with ink, against repeating the last move;
- +1 MSE: the last true frame with every patch splatted by the reader's most likely move
  (hard) or by its distribution (soft), against copy-last and the moves block matching
  finds in the true next frame (the best any per-patch move can do);
- a tracker, 10 frames from 10 with no network: each patch of frame 9 is moved by the
  sum of the moves the reader predicts, each appended to the patch's own history, so the
  frames are the last true frame's pixels, moved, never re-blurred. Per frame ahead.

Validation: sequences of training digits, seed 99 (the test set is never read).

    python docs/bench/probe_move_tracker.py TRAIN_SEQUENCES STEPS [position] [axes] [conv]

position: the reader also reads the patch's place on the canvas (bounces happen at walls).
conv: the reader is 3x3 convolutions over the grid of patches (neighbours vote).
axes: one reader per axis, shared by both: the 9 scores of a patch's next move along an
axis from its 9 moves along it (and its place on it); the 81 scores are their outer sum.
The generator moves the axes independently and alike, so the reader sees twice the data
for a function of 9 inputs instead of 18.
"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.metrics.prediction import frame_mse
from vidseg_cli.predict.data import load_digits, sequences
from vidseg_cli.predict.motion import move_history, moves_into, offsets, splat_patches

torch.set_num_threads(int(os.environ.get("PROBE_THREADS", 1)))
TRAIN, STEPS, POSITION, AXES, CONV = (int(sys.argv[1]), int(sys.argv[2]), *(flag in sys.argv[3:] for flag in ("position", "axes", "conv")))
R, P, HISTORY, OBSERVED = 4, 4, 10, 10
SHIFTS, TABLE = (2 * R + 1) ** 2, offsets(R)
train_digits, _ = load_digits("../shared/data/mnist/mnist_5k.csv.gz")
torch.manual_seed(0)


def clips(count: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.stack(list(sequences(train_digits, seed, count)))).float().div(255)[:, :, None]


def fields_of(video: torch.Tensor) -> torch.Tensor:
    """(N, T-1, 2, h, w): field t-1 holds each patch of frame t's move from frame t-1."""
    n, t = video.shape[:2]
    now, before = video[:, 1:].flatten(0, 1), video[:, :-1].flatten(0, 1)
    return torch.cat([moves_into(a, b, R, P) for a, b in zip(now.split(512), before.split(512))]).view(n, t - 1, 2, 16, 16)


def classes(moves: torch.Tensor) -> torch.Tensor:
    """(N, 2, h, w) integer moves -> (N, h, w) shift indices in unfold's order."""
    return ((moves[:, 0] + R) * (2 * R + 1) + moves[:, 1] + R).long()


def forward_moves(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(N, 2, h, w): where each patch of ``before`` went in ``after`` (matching backwards)."""
    return -moves_into(before, after, R, P)


PLACE = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij"))


def features(history: torch.Tensor, moved: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 2(H-1) [+2], h, w): a patch's chained moves, and its place if ``position``
    (its grid place, plus ``moved`` pixels where the tracker has moved it)."""
    if not POSITION:
        return history
    place = PLACE.expand(len(history), -1, -1, -1)
    return torch.cat([history, place if moved is None else place + moved / P * 2 / 15], 1)


def examples(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each (sequence, t) with t the frame predicted, t = HISTORY .. T-1, from true frames:
    features (M, C, h, w), forward targets (M, h, w), ink masks (M, h, w)."""
    fields = fields_of(video)
    xs, ys, inks = [], [], []
    for t in range(HISTORY, video.shape[1]):
        xs.append(features(move_history(fields[:, t - HISTORY : t - 1], R, P)))
        ys.append(classes(forward_moves(video[:, t - 1], video[:, t])))
        inks.append(F.max_pool2d(video[:, t - 1, 0], P) > 0.2)
    return torch.cat(xs), torch.cat(ys), torch.cat(inks)


start = time.time()
train_video, val_video = clips(TRAIN, 0), clips(300, 99)
x, y, ink = examples(train_video)
if not CONV:
    x, y = x.permute(0, 2, 3, 1)[ink], y[ink]  # patches with ink only: blank ones do not move
print(f"{len(x)} training patches from {TRAIN} sequences, {time.time() - start:.0f} s", flush=True)



class AxisReader(nn.Module):
    """One MLP for both axes: (..., 2(H-1) [+2]) -> (..., 81), the outer sum of each axis's 9 scores."""

    def __init__(self) -> None:
        super().__init__()
        inputs = HISTORY - 1 + POSITION
        self.axis = nn.Sequential(nn.Linear(inputs, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2), nn.Linear(64, 2 * R + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moves = 2 * (HISTORY - 1)
        along_y, along_x = x[..., 0:moves:2], x[..., 1:moves:2]  # move_history interleaves (dy, dx)
        if POSITION:
            along_y, along_x = torch.cat([along_y, x[..., moves : moves + 1]], -1), torch.cat([along_x, x[..., moves + 1 :]], -1)
        return (self.axis(along_y)[..., :, None] + self.axis(along_x)[..., None, :]).flatten(-2)  # unfold's order: dy, then dx


class ConvReader(nn.Module):
    """The reader over the whole 16x16 grid of patches: 3x3 convolutions let a patch read its
    neighbours' histories, so the patches of one digit, which move alike, vote (block
    matching's mistakes on a partly inked or overlapped patch are outvoted)."""

    def __init__(self, inputs: int) -> None:
        super().__init__()
        layers, width = [], inputs
        for _ in range(3):
            layers += [nn.Conv2d(width, 64, 3, padding=1), nn.LeakyReLU(0.2)]
            width = 64
        self.net = nn.Sequential(*layers, nn.Conv2d(64, SHIFTS, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, h, w, C) -> (N, h, w, 81), as the MLPs
        return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


inputs = x.shape[1]
if CONV:
    reader = ConvReader(inputs)
elif AXES:
    reader = AxisReader()
else:
    reader = nn.Sequential(nn.Linear(inputs, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2), nn.Linear(64, SHIFTS))
optimiser = torch.optim.Adam(reader.parameters(), 3e-3)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=STEPS)
for step in range(STEPS):
    if CONV:  # 64 maps of 256 patches, the loss on the inked ones
        pick = torch.randint(len(x), (64,))
        logits = reader(x[pick].permute(0, 2, 3, 1))
        loss = F.cross_entropy(logits[ink[pick]], y[pick][ink[pick]])
    else:
        pick = torch.randint(len(x), (4096,))
        loss = F.cross_entropy(reader(x[pick]), y[pick])
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    schedule.step()
    if (step + 1) % max(1, STEPS // 5) == 0:
        print(f"step {step + 1} loss {loss.item():.3f}", flush=True)


def read(feats: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, SHIFTS, h, w) scores."""
    with torch.no_grad():
        return reader(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


vx, vy, vink = examples(val_video)
scores = read(vx)
last_move = classes((vx[:, :2] * R).round())  # the patch's move into I_{t-1}, repeated
accuracy = lambda guess: (guess == vy)[vink].float().mean().item()  # noqa: E731
print(f"next move of inked patches: reader {accuracy(scores.argmax(1)):.3f}, repeat the last {accuracy(last_move):.3f}")

one_hot = lambda c: F.one_hot(c, SHIFTS).permute(0, 3, 1, 2).float() * 1e4  # noqa: E731
last = val_video[:, HISTORY - 1 : -1].transpose(0, 1).flatten(0, 1)  # (M, 1, 64, 64) in examples' order
truth = val_video[:, HISTORY:].transpose(0, 1).flatten(0, 1)
rows = {
    "copy-last": last,
    "true per-patch moves (hard)": splat_patches(last, one_hot(vy), R, P),
    "reader, hard": splat_patches(last, scores, R, P, hard=True),
    "reader, soft": splat_patches(last, scores, R, P),
    "repeat the last move (hard)": splat_patches(last, one_hot(last_move), R, P),
}
for name, predicted in rows.items():
    print(f"+1 MSE per frame, {name}: {frame_mse(predicted[:, 0], truth[:, 0]).mean().item():.1f}")


def place(frame: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """frame (N, 1, 64, 64), shift (N, 2, h, w) integer, any size: each patch moved by its
    shift, overlapping pixels combined by maximum (as the generator draws), off-canvas dropped."""
    n = len(frame)
    ys, xs = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    full = shift.long().repeat_interleave(P, 2).repeat_interleave(P, 3)  # (N, 2, 64, 64)
    ty, tx = ys + full[:, 0], xs + full[:, 1]
    inside = (ty >= 0) & (ty < 64) & (tx >= 0) & (tx < 64)
    index = (torch.arange(n).view(n, 1, 1) * 4096 + ty * 64 + tx)[inside]
    out = torch.zeros(n * 4096).scatter_reduce(0, index, frame[:, 0][inside], "amax")
    return out.view(n, 1, 64, 64)


fields = fields_of(val_video[:, :OBSERVED])
history = move_history(fields[:, OBSERVED - HISTORY :], R, P)  # (N, 18, h, w), newest first, in units of R
total = torch.zeros(len(val_video), 2, 16, 16)
errors = []
for ahead in range(val_video.shape[1] - OBSERVED):
    move = TABLE[read(features(history, total)).argmax(1)].permute(0, 3, 1, 2).float()  # (N, 2, h, w)
    total += move
    history = torch.cat([move / R, history[:, :-2]], 1)
    predicted = place(val_video[:, OBSERVED - 1], total)
    errors.append(frame_mse(predicted[:, 0], val_video[:, OBSERVED + ahead, 0]).mean().item())
print("tracker, 10 from 10, MSE by frame ahead: " + " ".join(f"{e:.1f}" for e in errors) + f"; mean {np.mean(errors):.1f}")
copy = [frame_mse(val_video[:, OBSERVED - 1, 0], val_video[:, OBSERVED + k, 0]).mean().item() for k in range(10)]
print(f"copy-last, 10 from 10: mean {np.mean(copy):.1f}; {time.time() - start:.0f} s in all")
