"""One-step-ahead probe with each pixel's move history given explicitly.

The setting of probe_one_step.py (teacher-forced, no memory, frame t from the true frames
before it, t = 10 .. 19, per-pixel softmax over the 81 shifts of the last frame by up to 4
pixels, width 48, 6 blocks at 16x16) with one addition: for every pixel of I_{t-1}, the
integer moves that brought it there over the last K steps, found by block matching (5x5
windows, the least squared difference over the 81 moves, each frame against the one before)
and chained backwards along the path (the move into t-1, then the move into where it was at
t-2, ...). A per-pixel MLP reads those 2K numbers and adds its scores over the 81 shifts to
the network's: a digit moving 3.6 pixels a step shows the 3,4,4,3,4,... pattern that pins
its next move, which no three frames show (docs/bench/probe_oracle_motion.py).

    python docs/bench/probe_move_history.py K STEPS [forward]     (K = 0: the network alone)

forward: the scores belong to the pixels of I_{t-1}, each a distribution over where it goes,
and the frame is built by moving every pixel there (splatting), instead of each pixel of
I_t choosing where it comes from. A pixel's own history then scores its own move; a pixel
that a digit is about to cover has no history of that digit to read.

Validation: 32 sequences of training digits (seed 99), MSE per frame summed over pixels,
the same as probe_one_step.py's."""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.predict.data import load_digits, sequence

torch.set_num_threads(int(os.environ.get("PROBE_THREADS", 2)))
K, steps, forward = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["forward"]
R, WIDTH, STACK = 4, 48, 3
SHIFTS = (2 * R + 1) ** 2
OFFSETS = torch.tensor([(dy, dx) for dy in range(-R, R + 1) for dx in range(-R, R + 1)])  # unfold's order
train_digits, _ = load_digits("../shared/data/mnist/mnist_5k.csv.gz")
rng = np.random.default_rng(0)
torch.manual_seed(0)


def moves_into(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) integer move (dy, dx) of each pixel of ``now`` from ``before``: the shift s
    minimising the 5x5 windowed squared difference of now(x) and before(x - s); ties (blank
    canvas) go to the smallest move."""
    n, _, h, w = now.shape
    candidates = F.unfold(before, 2 * R + 1, padding=R).view(n, SHIFTS, h, w)  # before(x + o) for offset o
    cost = F.avg_pool2d((candidates - now) ** 2, 5, 1, 2) + 1e-6 * OFFSETS.abs().sum(1).view(1, -1, 1, 1)
    best = cost.argmin(1)  # (N, H, W): offset o = -s
    return -OFFSETS[best].permute(0, 3, 1, 2).float()


def move_fields(clips: torch.Tensor) -> torch.Tensor:
    """clips (N, T, H, W); (N, T, 2, H, W): field t holds each pixel's move from frame t-1
    into frame t (field 0 is zero)."""
    n, t, h, w = clips.shape
    fields = moves_into(clips[:, 1:].reshape(-1, 1, h, w), clips[:, :-1].reshape(-1, 1, h, w)).view(n, t - 1, 2, h, w)
    return torch.cat([torch.zeros_like(fields[:, :1]), fields], 1)


def move_history(fields: torch.Tensor, t: int, k: int) -> torch.Tensor:
    """(N, 2k, H, W): for each pixel of frame t-1, its moves into frames t-1, t-2, ..., t-k,
    following it back along its path through ``move_fields``."""
    n, _, _, h, w = fields.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    y, x = ys.expand(n, h, w).clone(), xs.expand(n, h, w).clone()
    batch = torch.arange(n).view(n, 1, 1)
    history = []
    for back in range(1, k + 1):
        move = fields[:, t - back][batch, :, y, x].permute(0, 3, 1, 2)  # (N, 2, H, W) where the pixel is then
        history.append(move)
        y = (y - move[:, 0].long()).clamp(0, h - 1)
        x = (x - move[:, 1].long()).clamp(0, w - 1)
    return torch.cat(history, 1) / R


def splat(moving: torch.Tensor) -> torch.Tensor:
    """moving (N, 81, H, W): channel j holds what each pixel sends by shift j (OFFSETS[j]);
    (N, 1, H, W), the sum of what arrives at each pixel. This is fold, unfold's adjoint."""
    h, w = moving.shape[-2:]
    return F.fold(moving.flatten(2), (h, w), 2 * R + 1, padding=R)


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.LeakyReLU(0.2, True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.LeakyReLU(0.2, True))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(block(STACK * 16, WIDTH), *[block(WIDTH, WIDTH) for _ in range(5)])
        self.head = nn.Conv2d(WIDTH, SHIFTS * 16, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.change = nn.Conv2d(WIDTH, 16, 1)
        nn.init.zeros_(self.change.weight)
        nn.init.zeros_(self.change.bias)
        self.history = nn.Sequential(nn.Conv2d(2 * K, 64, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(64, 64, 1),
                                     nn.LeakyReLU(0.2, True), nn.Conv2d(64, SHIFTS, 1)) if K else None

    def forward(self, frames: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """frames (N, STACK, 64, 64): the true frames before t; history (N, 2K, 64, 64)."""
        features = self.encoder(F.pixel_unshuffle(frames, 4))
        scores = F.pixel_shuffle(self.head(features), 4)  # (N, 81, 64, 64)
        if self.history is not None:
            scores = scores + self.history(history)
        last = frames[:, -1:]
        if forward:
            moved = splat(scores.softmax(1) * last).clamp(1e-3, 1 - 1e-3)
        else:
            candidates = F.unfold(last, 2 * R + 1, padding=R).view(-1, SHIFTS, 64, 64)
            moved = (scores.softmax(1) * candidates).sum(1, keepdim=True).clamp(1e-3, 1 - 1e-3)
        return torch.sigmoid(torch.logit(moved) + F.pixel_shuffle(self.change(features), 4))


def batch(generator: np.random.Generator, count: int):
    clips = torch.from_numpy(np.stack([sequence(generator, train_digits) for _ in range(count)])).float() / 255
    fields = move_fields(clips) if K else None
    inputs, histories, targets = [], [], []
    for t in range(10, 20):
        inputs.append(clips[:, t - STACK : t])
        histories.append(move_history(fields, t, K) if K else None)
        targets.append(clips[:, t : t + 1])
    return torch.cat(inputs), torch.cat(histories) if K else None, torch.cat(targets)


net = Net()
optimizer = torch.optim.Adam(net.parameters(), 1e-3)
val = batch(np.random.default_rng(99), 32)
start, losses = time.time(), []
for i in range(1, steps + 1):
    inputs, histories, targets = batch(rng, 8)
    loss = (net(inputs, histories) - targets).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item() * 4096)
    if i % 50 == 0:
        with torch.no_grad():
            error = (net(val[0], val[1]) - val[2]).pow(2).sum((1, 2, 3)).mean().item()
        print(f"K={K}{' forward' if forward else ''} step {i} train {np.mean(losses[-50:]):.1f} val +1 {error:.1f} {time.time() - start:.0f}s", flush=True)
