"""Rollout probe: where do the shift head's candidates come from? Full rollouts (frames 3..19
from the three before each, own predictions fed back after frame 9, no teacher, no memory),
width 32, 4 blocks, a per-pixel softmax over the 81 shifts by up to 4 pixels plus a logit
change, MSE loss, Adam 1e-3, batch 8, seed 0.

- last: candidates are shifts of the last input frame (the shipped design, per pixel): a
  blurred prediction is moved again, so blur compounds.
- sharp: candidates are shifts of a sharp source frame S: the last true frame while
  observing; after it, S moved by each pixel's most likely shift (no gradient). The blur of
  one step is not carried into the next one's candidates.

    python docs/bench/probe_sharp_source.py last|sharp STEPS

Validation: 32 sequences of training digits (seed 99), MSE per predicted frame (10 to 19)."""
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.predict.data import load_digits, sequence

torch.set_num_threads(1)
source, steps = sys.argv[1], int(sys.argv[2])
R, W = 4, 32
K = (2 * R + 1) ** 2
digits, _ = load_digits("../shared/data/mnist/mnist_5k.csv.gz")
rng = np.random.default_rng(0)
torch.manual_seed(0)


def block(a, b):
    return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.GroupNorm(8, b), nn.LeakyReLU(0.2, True),
                         nn.Conv2d(b, b, 3, padding=1), nn.GroupNorm(8, b), nn.LeakyReLU(0.2, True))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(block(48, W), *[block(W, W) for _ in range(3)])
        self.head = nn.Conv2d(W, K * 16, 1)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():  # the centre starts heavy: an untrained net copies
            self.head.bias.zero_()
            self.head.bias.view(K, 16)[K // 2] = np.log(9 * K)
        self.res = nn.Conv2d(W, 16, 1)
        nn.init.zeros_(self.res.weight)
        nn.init.zeros_(self.res.bias)

    def step(self, stack, sharp):
        f = self.body(F.pixel_unshuffle(stack.flatten(1, 2), 4))
        scores = F.pixel_shuffle(self.head(f), 4)  # (B, K, 64, 64)
        candidates = F.unfold(sharp, 2 * R + 1, padding=R).view(-1, K, 64, 64)
        moved = (scores.softmax(1) * candidates).sum(1, keepdim=True).clamp(1e-3, 1 - 1e-3)
        out = torch.sigmoid(torch.logit(moved) + F.pixel_shuffle(self.res(f), 4))
        best = candidates.gather(1, scores.argmax(1, keepdim=True)).detach()
        return out, best


def rollout(net, clips):
    frames, sharp, preds = list(clips[:, :10].unbind(1)), None, []
    for t in range(3, 20):
        stack = torch.stack(frames[t - 3 : t], 1)
        base = frames[t - 1] if (t <= 10 or source == "last") else sharp
        out, best = net.step(stack, base)
        sharp = best
        if t >= 10:
            frames.append(out)
        preds.append(out)
    return torch.stack(preds, 1)


def clips(r, n):
    return torch.from_numpy(np.stack([sequence(r, digits) for _ in range(n)])).float().div(255)[:, :, None]


net = Net()
opt = torch.optim.Adam(net.parameters(), 1e-3)
val = clips(np.random.default_rng(99), 32)
started, log = time.time(), []
for i in range(1, steps + 1):
    c = clips(rng, 8)
    p = rollout(net, c)
    loss = (p - c[:, 3:]).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    log.append(loss.item())
    if i % 25 == 0:
        with torch.no_grad():
            v = (rollout(net, val)[:, 7:] - val[:, 10:]).pow(2).sum((2, 3, 4)).mean(0)
        print(f"{i} val {v.mean():.1f} +1 {v[0]:.1f} +5 {v[4]:.1f} +10 {v[9]:.1f} {time.time() - started:.0f}s", flush=True)
