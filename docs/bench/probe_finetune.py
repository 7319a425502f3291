"""Probe: the shipped predictor (predict-mmnist, 4,000 steps) trained on for a few steps with
each --commit mode, so the modes are compared on a model that already moves digits. The
trainer's own steps, no teacher forcing (the shipped run had none after step 2,000), Adam at
LR, stremn K=5 C memory, MSE loss, seed 0, one thread.

    python docs/bench/probe_finetune.py never|fed|always STEPS [BATCH] [LR] [gru] [history=N] [moves]

gru: the shipped model gains --recurrent's GRU state, zero-initialised, so it starts unchanged.
history=N: each step reads the last N frames; the older ones' weights start at zero, so it
starts unchanged too (``load_trained``, as ``vidseg train predict --init``).
moves: the shift head also reads each pixel's moves over those frames (its reader starts at zero).

Validation: 64 sequences of training digits (their own seed): MSE and SSIM per predicted
frame, MSE at +1, +5, +10, and SSIM at +10; before training and after."""
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vidseg_cli.metrics.prediction import frame_mse, ssim
from vidseg_cli.predict.clips import MovingMnist
from vidseg_cli.predict.data import FRAMES, batches
from vidseg_cli.predict.model import create_predictor
from vidseg_cli.predict.train import OBSERVED, PredictTrainConfig, PredictTrainer, load_trained

mode, steps = sys.argv[1], int(sys.argv[2])
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 8
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 3e-4
recurrent = "gru" in sys.argv[5:]
history = next((int(a.split("=")[1]) for a in sys.argv[5:] if a.startswith("history=")), 3)
moves = "moves" in sys.argv[5:]
torch.set_num_threads(1)
source = MovingMnist(Path("../shared/data/mnist/mnist_5k.csv.gz"))
shipped = create_predictor("predict-mmnist")
config = PredictTrainConfig(steps=steps, batch=batch, teacher_share=0.0, lr=lr, loss="mse", seed=0, ema=0.9,
                            model=replace(shipped.config, commit=mode, recurrent=recurrent, history=history, moves=moves))
mode += ("-gru" if recurrent else "") + (f"-history{history}" if history != 3 else "") + ("-moves" if moves else "")
out = Path(f"runs/probe-finetune/{mode}")  # the trainer's run folder; the probe saves nothing there
out.mkdir(parents=True, exist_ok=True)
trainer = PredictTrainer(source, config, out, torch.device("cpu"), None)
load_trained(trainer.model, shipped)  # the GRU and the older frames keep their own (neutral) start
trainer.average.load_state_dict(trainer.model.state_dict())


def validate(model) -> str:
    model.eval()
    per_frame, ssims = [], []
    with torch.no_grad():
        for chunk in batches(source.validation(64), 8):
            clips = trainer._frames(chunk)
            future = model.rollout(clips[:, :OBSERVED], FRAMES - OBSERVED, trainer._banks(model, len(chunk)))
            future = future[:, OBSERVED - model.first_predicted :]
            for mine, true in zip(future.flatten(2, 3), clips[:, OBSERVED:].flatten(2, 3)):
                per_frame.append(frame_mse(mine, true).numpy())
                ssims.append(ssim(mine, true).numpy())
    curve, quality = np.mean(per_frame, axis=0), np.mean(ssims, axis=0)
    return (f"mse {curve.mean():.1f} ssim {quality.mean():.3f} +1 {curve[0]:.1f} +5 {curve[4]:.1f} +10 {curve[9]:.1f} "
            f"ssim+10 {quality[9]:.3f}")


start = time.time()
print(f"{mode} before: {validate(trainer.average)}", flush=True)
mses = []
for i in range(steps):
    mses.append(trainer.train_step()["mse"])
    if (i + 1) % 25 == 0:
        print(f"{mode} step {i + 1} train mse (last 25) {np.mean(mses[-25:]):.1f}  {time.time() - start:.0f}s", flush=True)
print(f"{mode} after {steps}: {validate(trainer.average)}  {time.time() - start:.0f}s", flush=True)
