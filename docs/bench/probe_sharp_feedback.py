"""Does committing to the shift head's argmax help the shipped predictor? Inference only, on
128 validation sequences of training digits (the trainer's own, seed 1), stremn K=5 C.
FEED: what the next step sees (soft: the prediction as trained; hard: the last input moved
by each patch's most likely shift, no logit change); OUT: what is scored.

    python docs/bench/probe_sharp_feedback.py"""
import numpy as np
import torch
import torch.nn.functional as F

from vidseg_cli.engine.job import make_bank
from vidseg_cli.metrics.prediction import frame_mse, ssim
from vidseg_cli.options import MemoryOptions
from vidseg_cli.predict.clips import VAL_SEED
from vidseg_cli.predict.data import load_digits, sequences
from vidseg_cli.predict.model import STACK, create_predictor
from vidseg_cli.predict.motion import shift_patches

torch.set_num_threads(1)
model = create_predictor('predict-mmnist')
tr, _ = load_digits('../shared/data/mnist/mnist_5k.csv.gz')
clips = torch.from_numpy(np.stack(list(sequences(tr, VAL_SEED, 128)))).float().div(255)[:, :, None]
@torch.no_grad()
def run(feed, out):
    banks = [make_bank(MemoryOptions('stremn', 5, 'C'), model.fusion()) for _ in range(len(clips))]
    frames = list(clips[:, :10].unbind(1)); preds = []
    for t in range(STACK, 20):
        stack = torch.stack(frames[t-STACK:t], 1)
        soft = model.step(stack, banks, t)
        if t >= 10:
            # sharp: the last input moved by the argmax shift, no logit change
            hard = hard_move(stack, banks)
            frames.append(hard if feed == 'hard' else soft)
            preds.append(hard if out == 'hard' else soft)
    p = torch.stack(preds, 1)[:, :, 0]; tr_ = clips[:, 10:, 0]
    return frame_mse(p.flatten(0,1), tr_.flatten(0,1)).mean().item(), ssim(p.flatten(0,1), tr_.flatten(0,1)).mean().item()
def hard_move(stack, banks):
    # recompute the decoder's shift scores without writing memory again
    m = model
    folded = F.pixel_unshuffle(stack.flatten(1, 2), m.config.patch)
    features = m.encoder(folded)
    keys = F.normalize(m.key(features), dim=1)
    from vidseg_cli.memory.readout import read_values_many
    readout = read_values_many(keys, [b.slots for b in banks], 1, m.config.topk, m.log_read_scale.exp())[:, 0]
    decoded = m.decoder(torch.cat([features, readout], 1))
    scores = m.shifts(decoded)
    hard = torch.full_like(scores, -1e4).scatter(1, scores.argmax(1, keepdim=True), 0.0)
    return shift_patches(stack[:, -1], hard, m.config.shift_radius, m.config.patch)
for feed, out in [('soft', 'soft'), ('soft', 'hard'), ('hard', 'hard'), ('hard', 'soft')]:
    print(feed, out, run(feed, out), flush=True)
