"""Probe: training MSE over the first steps, logit change vs shift kernel (same seed, data)."""
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vidseg_cli.predict.clips import MovingMnist
from vidseg_cli.predict.model import PredictorConfig
from vidseg_cli.predict.train import PredictTrainConfig, PredictTrainer

radius, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(2)
source = MovingMnist(Path("../shared/data/mnist/mnist_5k.csv.gz"))
config = PredictTrainConfig(steps=4000, batch=16, loss="mse", seed=0, val_sequences=64,
                            model=PredictorConfig(width=32, shift_radius=radius))
out = Path(f"runs/probe/r{radius}")  # the trainer's run folder; the probe saves nothing there
out.mkdir(parents=True, exist_ok=True)
trainer = PredictTrainer(source, config, out, torch.device("cpu"), None)
mses, start = [], time.time()
for i in range(steps):
    mses.append(trainer.train_step()["mse"])
    if (i + 1) % 25 == 0:
        print(f"r{radius} step {i+1} train mse (last 25) {np.mean(mses[-25:]):.1f}  {time.time()-start:.0f}s", flush=True)
print(trainer.validate(), flush=True)
