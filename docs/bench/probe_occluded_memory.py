"""Probe (not shipped): LMANet step 2 on the train-only single-frame model, where half the
samples have the current frame partly hidden (grey rectangles over 15-40% of it) while the
memory frames stay whole, so that reading the memory pays. Same recipe as
runs/semseg-memory-gated otherwise; validation on CamVid val (clean frames)."""
import sys
import time
from pathlib import Path

import torch

from vidseg_cli.engine.threads import use_all_cores
from vidseg_cli.semseg import samples
from vidseg_cli.semseg.data import class_list, load_labelled
from vidseg_cli.semseg.model import SemsegConfig, load_semseg
from vidseg_cli.semseg.train import SemsegTrainConfig, SemsegTrainer

share = float(sys.argv[1]); out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
original = samples.SemsegSampler.sample
def sample(self):
    s = original(self)
    if self.rng.random() < share:
        img = s.image.clone(); _, h, w = img.shape
        target = self.rng.uniform(0.15, 0.4) * h * w; covered = 0
        while covered < target:
            rh, rw = int(self.rng.integers(h // 8, h // 2)), int(self.rng.integers(w // 8, w // 2))
            y, x = int(self.rng.integers(0, h - rh + 1)), int(self.rng.integers(0, w - rw + 1))
            img[:, y:y + rh, x:x + rw] = 128.0; covered += rh * rw
        s = samples.Sample(img, s.memory, s.label)
    return s
samples.SemsegSampler.sample = sample
config = SemsegTrainConfig(stage="memory", steps=1000, batch=8, crop=(256, 256), lr=1e-3, class_weights="enet", seed=0,
                           model=SemsegConfig(aggregation="gated"))
network, _ = load_semseg(Path("runs/semseg-single6k/model.safetensors"), new_memory=config.model)
root = Path("../shared/data/camvid")
use_all_cores()
trainer = SemsegTrainer(network, load_labelled(root, "train"), load_labelled(root, "val"), config, out, torch.device("cpu"))
start = time.time()
log = lambda m: print(f"{time.time() - start:6.0f}s {m}", file=sys.stderr, flush=True)
print(trainer.run(log, class_list(None), val_every=500, checkpoint_every=100))
