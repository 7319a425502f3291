"""`vidseg train semseg`: the semseg network in LMANet's steps (III-E).

- ``single``: the single-frame network (trunk and decoder; the trunk's top blocks are
  fine-tuned from ImageNet, the rest stays frozen), no memory.
- ``memory``: the memory layers and fusion alone, trunk and decoder frozen.
- ``joint``: memory layers and decoder together (and the trunk's top blocks).

Each step is a batch of labelled frames, each with T memory frames (``semseg/samples.py``:
previous labelled frames or a pseudo-clip of the frame itself); cross-entropy on the
labelled frame with void ignored; AdamW with a poly decay. Validation streams every
``--val`` sequence through the network in frame order with a fifo memory of T frames, as
inference does, and reports the dataset-level mIoU (one confusion matrix, void ignored).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vidseg_cli.io.outputs import write_file_atomically
from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.memory.policies import FIFO
from vidseg_cli.metrics.segmentation import ConfusionMatrix
from vidseg_cli.semseg.data import LabelledSequence, read_label
from vidseg_cli.semseg.job import label_frame
from vidseg_cli.semseg.model import ARCH, SemsegConfig, SemsegNetwork
from vidseg_cli.semseg.samples import SemsegSampler, _rgb, batch
from vidseg_cli.train.loop import load_run_state, run_steps, save_run_state, take_step

MODEL = "model.safetensors"
STAGES = ("single", "memory", "joint")
CLASS_WEIGHTS = ("none", "enet")


@dataclass(frozen=True)
class SemsegTrainConfig:
    stage: str = "single"
    steps: int = 2000
    batch: int = 4
    crop: tuple[int, int] = (256, 256)
    lr: float = 1e-3
    trunk_lr: float = 2e-4  # the fine-tuned trunk blocks move slower than the new layers
    finetune_blocks: int = 4
    memory_frames: int = 3  # T, the fifo memory of the papers
    pseudo_share: float = 0.5
    class_weights: str = "none"  # none | enet: 1 / ln(1.02 + class share), ENet's weighting
    seed: int = 0
    classes: int = 11
    void: int = 11
    model: SemsegConfig = SemsegConfig()


def _class_weights(kind: str, labels: list[list[torch.Tensor]], classes: int, void: int) -> torch.Tensor | None:
    """ENet's weights, 1 / ln(1.02 + share of the class among labelled pixels): thin, rare
    classes (pole, sign, pedestrian, bicyclist) count ~10x road, which plain cross-entropy
    leaves at a few percent IoU."""
    if kind == "none":
        return None
    if kind not in CLASS_WEIGHTS:
        raise ValueError(f"unknown class weighting {kind!r}; choose from {', '.join(CLASS_WEIGHTS)}")
    counts = torch.zeros(classes, dtype=torch.float64)
    for sequence in labels:
        for label in sequence:
            counts += torch.bincount(label[label != void].flatten(), minlength=classes)[:classes].double()
    share = counts / counts.sum().clamp(min=1)
    return (1 / torch.log(1.02 + share)).float()


def poly(peak: float, step: int, steps: int, power: float = 0.9) -> float:
    return peak * (1 - step / max(1, steps)) ** power


class SemsegTrainer:
    def __init__(
        self, network: SemsegNetwork, train: list[LabelledSequence], val: list[LabelledSequence] | None,
        config: SemsegTrainConfig, run_dir: Path, device: torch.device,
    ) -> None:
        if config.stage not in STAGES:
            raise ValueError(f"unknown stage {config.stage!r}; choose from {', '.join(STAGES)}")
        self.config, self.run_dir, self.device = config, run_dir, device
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.network = network.to(device)
        frames = 0 if config.stage == "single" else config.memory_frames
        self.sampler = SemsegSampler(train, config.crop, frames, config.pseudo_share, config.classes, config.void, self.rng)
        self.val = val
        self.class_weights = _class_weights(config.class_weights, self.sampler.labels, config.classes, config.void)
        if self.class_weights is not None:
            self.class_weights = self.class_weights.to(device)
        self.groups = self._trainable()
        self.optimizer = torch.optim.AdamW(self.groups, weight_decay=1e-4)
        self.step = 0
        self.history: list[dict] = []

    def _trainable(self) -> list[dict]:
        """The parameter groups of the stage; everything else is frozen."""
        net, stage = self.network, self.config.stage
        net.requires_grad_(False)
        trunk = []
        if stage != "memory" and self.config.finetune_blocks:
            for block in net.backbone._blocks[-self.config.finetune_blocks :]:
                block.requires_grad_(True)
                trunk.extend(block.parameters())
        heads = []
        if stage != "memory":
            heads.extend(net.decoder.parameters())
        if stage != "single":
            heads.extend(net.memory.parameters())
        for p in heads:
            p.requires_grad_(True)
        groups = [{"params": heads, "lr": self.config.lr, "peak": self.config.lr}]
        if trunk:
            groups.append({"params": trunk, "lr": self.config.trunk_lr, "peak": self.config.trunk_lr})
        return groups

    def train_step(self) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = poly(group["peak"], self.step, self.config.steps)
        images, memory, labels = (t.to(self.device) for t in batch([self.sampler.sample() for _ in range(self.config.batch)]))
        self._train_mode()
        logits = self.network(images, memory if memory.shape[1] else None)
        loss = F.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=self.config.void)
        take_step(self.optimizer, loss, max_norm=None)
        self.step += 1
        return {"loss": loss.item()}

    def _train_mode(self) -> None:
        """BatchNorm statistics stay frozen in the trunk (batches of 4 cannot estimate them);
        the new layers learn theirs."""
        self.network.train()
        self.network.backbone.eval()
        if self.config.stage == "memory":
            self.network.decoder.eval()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """mIoU over the --val sequences, streamed in order with a fifo memory of T frames and
        labelled as `vidseg semseg` labels them (engine.semseg.label_frame), at the frames'
        own size."""
        if not self.val:
            return {}
        self.network.eval()
        confusion = ConfusionMatrix(self.config.classes, ignore_index=self.config.void)
        for sequence in self.val:
            bank = MemoryBank(policy=FIFO(slots=self.config.memory_frames)) if self.config.stage != "single" else None
            for number, frame in enumerate(sequence.frames):
                image = _rgb(frame.image).permute(1, 2, 0).numpy()
                labels = label_frame(self.network, bank, image, number, min(image.shape[:2]), self.device)
                confusion.update(labels, read_label(frame.label, self.config.classes, self.config.void))
        iou = confusion.iou()
        return {"miou": round(float(np.nanmean(iou)), 4), "pixel_accuracy": round(confusion.pixel_accuracy(), 4)}

    def save_checkpoint(self) -> None:
        own = {"network": self.network.state_dict(), "config": json.dumps(asdict(self.config))}
        save_run_state(self.run_dir, self.optimizer, self.step, self.rng, self.history, own)

    def load_checkpoint(self) -> None:
        state = load_run_state(self.run_dir, self.device, self.optimizer, self.rng)
        self.network.load_state_dict(state["network"])
        self.step, self.history = state["step"], state["history"]

    def save_model(self, classes: list[dict]) -> Path:
        """The whole network (trunk included) as safetensors; the metadata rebuilds it."""
        path = self.run_dir / MODEL
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.network.state_dict().items()}
        metadata = {
            "arch": ARCH, "config": self.network.config.to_json(), "backbone": self.network.backbone.variant, "classes": json.dumps(classes),
            "void": str(self.config.void), "stage": self.config.stage, "steps": str(self.step), "seed": str(self.config.seed),
        }
        write_file_atomically(path, lambda staging: save_file(tensors, str(staging), metadata=metadata), force=True)
        return path

    def run(self, log, classes: list[dict], val_every: int, checkpoint_every: int) -> Path:
        while self.step < self.config.steps:
            target = min(self.config.steps, (self.step // val_every + 1) * val_every)
            run_steps(self, target, log, every=min(25, val_every), checkpoint_every=checkpoint_every)
            scores = self.validate()
            if scores:
                self.history.append({"step": self.step, "val": scores})
                log(f"validation at step {self.step}: " + ", ".join(f"{k} {v}" for k, v in scores.items()))
        self.save_checkpoint()
        return self.save_model(classes)
