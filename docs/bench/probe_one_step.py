"""One-step-ahead probe: how precisely does a small net read a digit's move? Teacher-forced,
no memory: frame t from the true frames before it (t = 10 .. 19), width 48, 6 blocks at
16x16, a softmax over the 81 shifts of the last frame by up to 4 pixels (per 4x4 patch or
per pixel) and a logit change; optional cost volumes (t-1 against t-2, t-2 against t-3).

    python docs/bench/probe_one_step.py STACK patch|pixel CORR STEPS   (e.g. 3 pixel 0 300)

Validation: 32 sequences of training digits (seed 99), MSE per frame summed over pixels."""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.predict.data import load_digits, sequence

torch.set_num_threads(int(os.environ.get('PROBE_THREADS', 2)))  # 1 beside a training run
stack, kernel, corr, steps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
R = 4; K = (2*R+1)**2
tr, _ = load_digits('../shared/data/mnist/mnist_5k.csv.gz')
rng = np.random.default_rng(0); torch.manual_seed(0)
def blk(a, b): return nn.Sequential(nn.Conv2d(a,b,3,padding=1), nn.GroupNorm(8,b), nn.LeakyReLU(0.2,True), nn.Conv2d(b,b,3,padding=1), nn.GroupNorm(8,b), nn.LeakyReLU(0.2,True))
W = 48
def cost(a, b, r):  # a,b (N,1,64,64) -> (N,(2r+1)^2,64,64) a(p)*b(p-s)
    n = a.shape[0]; un = F.unfold(b, 2*r+1, padding=r).view(n, (2*r+1)**2, 64, 64)
    return a * un
class Net(nn.Module):
    def __init__(s):
        super().__init__()
        s.pre = nn.Conv2d(2*81, 32, 1) if corr else None
        ci = stack*16 + (32*16 if corr else 0)
        s.enc = nn.Sequential(blk(ci, W), *[blk(W, W) for _ in range(5)])
        outc = K*16 if kernel == 'pixel' else K
        s.head = nn.Conv2d(W, outc, 1); nn.init.zeros_(s.head.weight)
        nn.init.zeros_(s.head.bias)
        s.res = nn.Conv2d(W, 16, 1); nn.init.zeros_(s.res.weight); nn.init.zeros_(s.res.bias)
    def forward(s, hist):  # hist (N, S, 64,64)
        x = F.pixel_unshuffle(hist, 4)
        last = hist[:, -1:]
        if corr:
            c = torch.cat([cost(last, hist[:, -2:-1], R), cost(hist[:, -2:-1], hist[:, -3:-2], R)], 1)
            c = F.leaky_relu(s.pre(c), 0.2)
            x = torch.cat([x, F.pixel_unshuffle(c, 4)], 1)
        f = s.enc(x)
        lg = s.head(f)
        if kernel == 'pixel':
            w = F.pixel_shuffle(lg, 4).softmax(1)  # (N,K,64,64)
        else:
            w = F.interpolate(lg, scale_factor=4, mode='nearest').softmax(1)
        un = F.unfold(last, 2*R+1, padding=R).view(-1, K, 64, 64)
        moved = (w * un).sum(1, keepdim=True).clamp(1e-3, 1-1e-3)
        return torch.sigmoid(torch.logit(moved) + F.pixel_shuffle(s.res(f), 4))
net = Net(); opt = torch.optim.Adam(net.parameters(), 1e-3)
def batch(r, n):
    seqs = torch.from_numpy(np.stack([sequence(r, tr) for _ in range(n)])).float()/255
    hs, ts = [], []
    for t in range(10, 20):
        hs.append(seqs[:, t-stack:t]); ts.append(seqs[:, t:t+1])
    return torch.cat(hs), torch.cat(ts)
vh, vt = batch(np.random.default_rng(99), 32)
t0 = time.time(); log = []
for i in range(1, steps+1):
    h, t = batch(rng, 8)
    p = net(h); loss = (p - t).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    log.append(loss.item() * 4096)
    if i % 50 == 0:
        with torch.no_grad():
            v = ((net(vh) - vt).pow(2).sum((1,2,3))).mean().item()
        print(f"{i} train {np.mean(log[-50:]):.1f} val1 {v:.1f} {time.time()-t0:.0f}s", flush=True)
