"""`vidseg train vos`: train the memory network's heads on clips, through the real memory bank.

Each clip runs like inference: the first frame's mask is written to memory, every later
frame is read from memory, decoded, scored against its mask, and written back with its
predicted mask. The bank is the engine's own, so when a clip is longer than K + 1 frames
the policy drops slots and the learned fusion cell distills them, with gradients.

Deterministic under a seed: one numpy Generator draws every clip and policy, the heads are
initialised from torch's seeded generator, and a checkpoint stores both states.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vidseg_cli.io.outputs import write_file_atomically
from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.memory.policies import make_policy
from vidseg_cli.memory.slot import Slot
from vidseg_cli.models.backbone import Features
from vidseg_cli.train.loop import (
    cosine_to_a_tenth,
    load_run_state,
    polyak_decay,
    save_run_state,
    set_learning_rate,
    take_step,
)
from vidseg_cli.train.losses import bootstrapped_nll
from vidseg_cli.vos.aggregate import aggregate
from vidseg_cli.vos.clips import Clip, ClipSampler
from vidseg_cli.vos.memnet import ARCH, MemNetConfig, MemoryNetwork

MODEL = "model.safetensors"
BEST_MODEL = "model-best.safetensors"  # the validated model with the highest J&F
TRAINED_PARTS = ("all", "fusion")  # what learns: every head, or only the fusion cell


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 12000
    clip_length: int = 6  # > slots + 1, so the memory fills and fuses
    slots: int = 3
    rules: str = "ABCD"  # stremn update rules drawn from per clip (all four: every pairing fuses)
    crop: tuple[int, int] = (256, 384)
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 300
    max_gap: tuple[int, int] = (3, 15)  # curriculum: widest frame gap at the start and the end
    still_share: tuple[float, float] = (0.6, 0.2)  # share of still-image clips, start and end
    extra_share: tuple[float, float] = (0.0, 0.0)  # share of clips with 1-2 objects pasted in, start and end
    scene_share: float = 0.0  # share of clips of pasted objects over another domain's stills
    static_share: float = 0.0  # share of still clips whose frame does not move at all
    region_share: float = 0.0  # share of still and scene clips with a patch of background as an object
    top_p: tuple[float, float] = (1.0, 0.25)  # bootstrapped CE: share of hardest pixels kept
    finetune_blocks: int = 0  # last backbone blocks trained too (at a tenth of the learning rate)
    seed: int = 0
    init: str = ""  # sha256 of the model file training started from ("": fresh heads)
    train: str = "all"  # "fusion": only the fusion cell learns (a stage after the rest)
    fusion_distill: float = 0.0  # weight of the fused-read-equals-full-read loss
    ema: float = 0.0  # Polyak averaging of what learns; validated and saved models are the average (0: off)
    model: MemNetConfig = field(default_factory=MemNetConfig)


def progress_at(step: int, config: TrainConfig, pair: tuple[float, float]) -> float:
    """Linear schedule from pair[0] to pair[1] over training."""
    share = min(1.0, step / max(1, config.steps - 1))
    return pair[0] + (pair[1] - pair[0]) * share


def clip_loss(
    model: MemoryNetwork, clip: Clip, slots: int, rule: str, top_p: float, distill: float = 0.0
) -> torch.Tensor:
    """Mean bootstrapped CE over the clip's frames after the first, plus ``distill`` times
    the fusion loss: wherever the bank holds a fused slot, its read should equal the read
    of a bank that dropped nothing. The segmentation loss alone barely reaches the fusion
    cell (a fused slot changes a few reads a little); this says directly what fusion is for.
    The clip's objects (ids 1..O of its first frame) are read, decoded and aggregated
    together, as the session does."""
    features = model.features(clip.images)
    keys = model.keys(features)
    size = clip.masks.shape[-2:]
    objects = int(clip.masks[0].max())
    first = aggregate(on_grid(object_masks(clip.masks[0], objects), features.s4.shape[-2:])[:, 0])[1:]  # as the session writes a given mask
    bank = MemoryBank(make_policy("stremn", slots, rule), model.fusion())
    bank.write(Slot(keys[0], model.values(frame_at(features, 0), first[None])[0], frame=0, permanent=True))
    everything = list(bank.slots)  # the teacher's memory: every frame written, none dropped
    losses, fusion_losses = [], []
    for t in range(1, len(clip.masks)):
        frame = frame_at(features, t)
        readout = model.read(keys[t], bank.slots, objects)
        if distill > 0 and any(slot.fused for slot in bank.slots):
            with torch.no_grad():
                target = model.read(keys[t], everything, objects)
            fusion_losses.append(read_distance(readout, target))
        probs = aggregate(torch.sigmoid(model.decode(readout[None], frame)[0]))  # (1 + O, H4, W4)
        full = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
        losses.append(bootstrapped_nll(full, clip.masks[t], top_p))
        bank.write(Slot(keys[t], model.values(frame, probs[None, 1:])[0], frame=t))
        everything.append(bank.slots[-1])
    loss = torch.stack(losses).mean()
    if fusion_losses:
        loss = loss + distill * torch.stack(fusion_losses).mean()
    return loss


def read_distance(readout: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error relative to the target's energy: independent of the values' scale."""
    return (readout - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-8)


def frame_at(features: Features, t: int) -> Features:
    """Frame t of a batch of features, as a batch of one."""
    return Features(features.s4[t : t + 1], features.s8[t : t + 1], features.s16[t : t + 1])


def object_masks(labels: torch.Tensor, objects: int) -> torch.Tensor:
    """(H, W) ids -> (O, H, W) 0/1 masks of objects 1..O."""
    return (labels[None] == torch.arange(1, objects + 1, device=labels.device)[:, None, None]).long()


def on_grid(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(T, H, W) labels -> (T, 1, h, w) coverage of the object per cell of a feature grid."""
    return F.interpolate(masks[:, None].float(), size=grid, mode="area")


class Trainer:
    def __init__(
        self,
        model: MemoryNetwork,
        sampler: ClipSampler,
        config: TrainConfig,
        run_dir: Path,
        device: torch.device,
    ) -> None:
        self.model, self.sampler, self.config, self.run_dir, self.device = model, sampler, config, run_dir, device
        opened = model.unfreeze_top(config.finetune_blocks)
        learning = model.heads
        if config.train == "fusion":
            model.heads.requires_grad_(False)
            learning = model.heads.fusion.requires_grad_(True)
        groups = [{"params": list(learning.parameters()), "scale": 1.0}]
        if opened:
            groups.append({"params": opened, "scale": 0.1})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.history: list[dict] = []
        self.average = {name: t.detach().clone() for name, t in self._learned().items()} if config.ema else None

    def _learned(self) -> dict[str, torch.Tensor]:
        """Every tensor of the model that training may change (heads, tuned backbone blocks)."""
        return {f"heads.{n}": t for n, t in self.model.heads.state_dict().items()} | self.model.finetuned_state()

    def _update_average(self) -> None:
        decay = polyak_decay(self.config.ema, self.step)
        for name, current in self._learned().items():
            if current.is_floating_point():
                self.average[name].lerp_(current.detach(), 1 - decay)
            else:
                self.average[name].copy_(current)

    @contextlib.contextmanager
    def averaged(self):
        """The model with the averaged weights in place (with --ema; else as it is)."""
        if self.average is None:
            yield self.model
            return
        learned = self._learned()
        kept = {name: t.detach().clone() for name, t in learned.items()}
        with torch.no_grad():
            for name, t in learned.items():
                t.copy_(self.average[name])
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for name, t in learned.items():
                    t.copy_(kept[name])

    def learning_rate(self) -> float:
        """Linear warm-up, then cosine decay to a tenth."""
        c = self.config
        if self.step < c.warmup:
            return c.lr * (self.step + 1) / c.warmup
        return cosine_to_a_tenth(c.lr, self.step - c.warmup, c.steps - c.warmup)

    def train_step(self) -> float:
        c, rng = self.config, self.sampler.rng
        max_gap = round(progress_at(self.step, c, c.max_gap))
        still = rng.random() < progress_at(self.step, c, c.still_share)
        rule = c.rules[rng.integers(len(c.rules))]
        extra, scene, static, region = 0, False, False, False
        if c.extra_share != (0.0, 0.0) or c.scene_share or c.static_share:  # else no draws: older recorded runs replay exactly
            scene = bool(rng.random() < c.scene_share)
            extra = int(rng.integers(1, 3)) if scene or rng.random() < progress_at(self.step, c, c.extra_share) else 0
            static = bool(still and rng.random() < c.static_share)
        if c.region_share:
            region = bool((still or scene) and rng.random() < c.region_share)
        clip = self.sampler.sample(max_gap, still, extra, scene, static, region).to(self.device)
        set_learning_rate(self.optimizer, self.learning_rate())
        self.model.heads.train()
        loss = clip_loss(self.model, clip, c.slots, rule, progress_at(self.step, c, c.top_p), c.fusion_distill)
        if not loss.requires_grad:  # only the fusion cell learns, and this clip fused nothing
            self.step += 1
            return loss.item()
        take_step(self.optimizer, loss)
        self.step += 1
        if self.average is not None:
            self._update_average()
        return loss.item()

    def save_checkpoint(self) -> None:
        own = {
            "heads": self.model.heads.state_dict(),
            "backbone": self.model.finetuned_state(),
            "config": json.dumps(asdict(self.config)),
        }
        if self.average is not None:
            own["average"] = self.average
        save_run_state(self.run_dir, self.optimizer, self.step, self.sampler.rng, self.history, own)

    def load_checkpoint(self) -> None:
        state = load_run_state(self.run_dir, self.device, self.optimizer, self.sampler.rng)
        self.model.heads.load_state_dict(state["heads"])
        self.model.load_state_dict(state["backbone"], strict=False)
        self.step, self.history = state["step"], state["history"]
        if self.average is not None:
            self.average = state["average"]

    def save_model(self, name: str = MODEL) -> Path:
        path = self.run_dir / name
        with self.averaged() as model:
            save_model(model, path, {"steps": str(self.step), "seed": str(self.config.seed)})
        return path


def save_model(model: MemoryNetwork, path: Path, extra: dict[str, str] | None = None) -> None:
    """The heads as safetensors; the metadata carries what is needed to rebuild them."""
    metadata = {
        "arch": ARCH, "config": model.config.to_json(), "backbone": "efficientnet-lite0",
        "tuned_blocks": ",".join(str(b) for b in sorted(model.tuned_blocks)), **(extra or {}),
    }
    state = {f"heads.{name}": t for name, t in model.heads.state_dict().items()} | model.finetuned_state()
    tensors = {name: t.detach().cpu().contiguous() for name, t in state.items()}
    write_file_atomically(path, lambda staging: save_file(tensors, str(staging), metadata=metadata), force=True)


def run_training(
    trainer: Trainer,
    log: Callable[[str], None],
    validate: Callable[[], dict] | None = None,
    every: int = 50,
    checkpoint_every: int = 500,
    validate_every: int = 2000,
) -> Path:
    """The loop: steps, logs, checkpoints and validations, then the final model."""
    start, losses = time.perf_counter(), []
    first = trainer.step
    while trainer.step < trainer.config.steps:
        losses.append(trainer.train_step())
        step = trainer.step
        if step % every == 0 or step == trainer.config.steps:
            rate = (step - first) / (time.perf_counter() - start)
            eta = (trainer.config.steps - step) / rate
            log(f"step {step}/{trainer.config.steps} loss {np.mean(losses):.4f} lr {trainer.learning_rate():.2e} "
                f"{rate:.2f} clips/s, {eta / 60:.0f} min left")
            trainer.history.append({"step": step, "loss": round(float(np.mean(losses)), 5)})
            losses = []
        if validate is not None and (step % validate_every == 0 or step == trainer.config.steps):
            with trainer.averaged():
                scores = validate()
            best = max((h["J&F"] for h in trainer.history if "J&F" in h), default=-1.0)
            trainer.history.append({"step": step, **scores})
            log(f"step {step} validation: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            # every validated model is kept: later steps are not always better
            trainer.save_model(f"model-step{step}.safetensors")
            if scores.get("J&F", -1.0) > best:
                trainer.save_model(BEST_MODEL)
        if step % checkpoint_every == 0 or step == trainer.config.steps:
            trainer.save_checkpoint()
    return trainer.save_model()


def make_generator(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
