"""Probe: does committing to one shift keep rollouts sharp? The trainer's own steps on a
short full schedule (teacher forcing gone by half of it, the cosine decay over all of it),
width 32, shift radius 4, stremn K=5 C memory, MSE loss, seed 0; one thread.

    python docs/bench/probe_commit.py patch|pixel never|fed|always STEPS [BATCH] [gru]

Prints training MSE every 25 steps, then validation on 32 sequences of training digits
(their own seed): MSE, SSIM per predicted frame, and MSE at +1, +5 and +10."""
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vidseg_cli.predict.clips import MovingMnist
from vidseg_cli.predict.data import FRAMES, batches
from vidseg_cli.predict.model import PredictorConfig
from vidseg_cli.predict.train import OBSERVED, PredictTrainConfig, PredictTrainer
from vidseg_cli.metrics.prediction import frame_mse, ssim

kernel, mode, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 8
recurrent = sys.argv[5:] == ["gru"]
torch.set_num_threads(1)
source = MovingMnist(Path("../shared/data/mnist/mnist_5k.csv.gz"))
model = PredictorConfig(width=32, shift_radius=4, shift_kernel=kernel, commit=mode, recurrent=recurrent)
kernel += "-gru" if recurrent else ""
config = PredictTrainConfig(steps=steps, batch=batch, loss="mse", seed=0, val_sequences=32, model=model)
out = Path(f"runs/probe-commit/{kernel}-{mode}")  # the trainer's run folder; the probe saves nothing there
out.mkdir(parents=True, exist_ok=True)
trainer = PredictTrainer(source, config, out, torch.device("cpu"), None)
mses, start = [], time.time()
for i in range(steps):
    mses.append(trainer.train_step()["mse"])
    if (i + 1) % 25 == 0:
        print(f"{kernel}-{mode} step {i + 1} train mse (last 25) {np.mean(mses[-25:]):.1f}  {time.time() - start:.0f}s", flush=True)

model = trainer.average.eval()
per_frame, ssims = [], []
with torch.no_grad():
    for chunk in batches(source.validation(32), 8):
        clips = trainer._frames(chunk)
        future = model.rollout(clips[:, :OBSERVED], FRAMES - OBSERVED, trainer._banks(model, len(chunk)))[:, OBSERVED - model.first_predicted :]
        for mine, true in zip(future.flatten(2, 3), clips[:, OBSERVED:].flatten(2, 3)):
            per_frame.append(frame_mse(mine, true).numpy())
            ssims.append(ssim(mine, true).mean().item())
curve = np.mean(per_frame, axis=0)
print(f"{kernel}-{mode} val mse {curve.mean():.1f} ssim {np.mean(ssims):.3f} "
      f"+1 {curve[0]:.1f} +5 {curve[4]:.1f} +10 {curve[9]:.1f}  {time.time() - start:.0f}s", flush=True)
