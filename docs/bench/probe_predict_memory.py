"""Validation MSE of a predictor with its stremn memory and without (training digits' val sequences)."""
import sys
from pathlib import Path

import numpy as np
import torch

from vidseg_cli.engine.job import make_bank
from vidseg_cli.metrics.prediction import frame_mse
from vidseg_cli.options import MemoryOptions
from vidseg_cli.predict.clips import MovingMnist
from vidseg_cli.predict.data import batches
from vidseg_cli.predict.model import load_predictor

torch.set_num_threads(1)
model = load_predictor(Path(sys.argv[1]))
source = MovingMnist(Path("../shared/data/mnist/mnist_5k.csv.gz"))
scores = {"stremn": [], "none": []}
with torch.no_grad():
    for chunk in batches(source.validation(int(sys.argv[2])), 16):
        clips = torch.from_numpy(np.stack(chunk)).float().div(255)
        for name in scores:
            banks = [make_bank(MemoryOptions("stremn", 5, "C"), model.fusion()) for _ in chunk] if name == "stremn" else None
            future = model.rollout(clips[:, :10], 10, banks)[:, 7:]
            scores[name] += [frame_mse(f, t).mean().item() for f, t in zip(future.flatten(2, 3), clips[:, 10:].flatten(2, 3))]
print({k: round(float(np.mean(v)), 1) for k, v in scores.items()})
