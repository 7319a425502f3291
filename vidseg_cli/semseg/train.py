"""`vidseg train semseg`: the semseg network in two steps, as LMANet trains (III-E).

- ``single`` (here): the single-frame network, trunk and decoder (the trunk's top blocks
  fine-tuned from ImageNet, the rest frozen), on batches of augmented labelled frames
  (``semseg/samples.py``); cross-entropy with void ignored; AdamW with a poly decay.
- ``memory`` (``semseg/memory_train.py``): the label memory alone, the network frozen.

Validation (``stream_miou``) streams every ``--val`` sequence through the network in frame
order, with a fifo memory of ``slots`` frames when the network has a trained memory,
labelling frames exactly as `vidseg semseg` does, and reports the dataset-level mIoU (one
confusion matrix, void ignored).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.outputs import write_file_atomically
from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.memory.policies import FIFO
from vidseg_cli.metrics.segmentation import ConfusionMatrix
from vidseg_cli.semseg.data import LabelledSequence, read_label
from vidseg_cli.semseg.job import label_frame
from vidseg_cli.semseg.model import ARCH, MEMORY_PREFIX, SemsegConfig, SemsegNetwork
from vidseg_cli.semseg.samples import SemsegSampler, batch, rgb
from vidseg_cli.train.loop import load_run_state, run_steps, save_run_state, take_step

MODEL = "model.safetensors"
STAGES = ("single", "memory")
CLASS_WEIGHTS = ("none", "enet")


@dataclass(frozen=True)
class SemsegTrainConfig:
    steps: int = 2000
    batch: int = 4
    crop: tuple[int, int] = (256, 256)
    lr: float = 1e-3
    trunk_lr: float = 2e-4  # the fine-tuned trunk blocks move slower than the new layers
    finetune_blocks: int = 4
    class_weights: str = "none"  # none | enet: 1 / ln(1.02 + class share), ENet's weighting
    seed: int = 0
    classes: int = 11
    void: int = 11
    model: SemsegConfig = SemsegConfig()


def class_weights_of(kind: str, sequences: list[LabelledSequence], classes: int, void: int) -> torch.Tensor | None:
    """ENet's weights, 1 / ln(1.02 + share of the class among labelled pixels): thin, rare
    classes (pole, sign, pedestrian, bicyclist) count ~10x road, which plain cross-entropy
    leaves at a few percent IoU."""
    if kind == "none":
        return None
    if kind not in CLASS_WEIGHTS:
        raise ValueError(f"unknown class weighting {kind!r}; choose from {', '.join(CLASS_WEIGHTS)}")
    counts = np.zeros(classes, dtype=np.float64)
    for sequence in sequences:
        for frame in sequence.frames:
            label = read_label(frame.label, classes, void)
            counts += np.bincount(label[label != void].ravel(), minlength=classes)[:classes]
    share = counts / max(counts.sum(), 1)
    return torch.from_numpy(1 / np.log(1.02 + share)).float()


def poly(peak: float, step: int, steps: int, power: float = 0.9) -> float:
    return peak * (1 - step / max(1, steps)) ** power


class SemsegTrainer:
    def __init__(
        self, network: SemsegNetwork, train: list[LabelledSequence], val: list[LabelledSequence] | None,
        config: SemsegTrainConfig, run_dir: Path, device: torch.device,
    ) -> None:
        self.config, self.run_dir, self.device = config, run_dir, device
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.network = network.to(device)
        self.sampler = SemsegSampler(train, config.crop, config.classes, config.void, self.rng)
        self.val = val
        self.class_weights = class_weights_of(config.class_weights, train, config.classes, config.void)
        if self.class_weights is not None:
            self.class_weights = self.class_weights.to(device)
        self.groups = self._trainable()
        self.optimizer = torch.optim.AdamW(self.groups, weight_decay=1e-4)
        self.step = 0
        self.history: list[dict] = []

    def _trainable(self) -> list[dict]:
        """The decoder and the trunk's top blocks; everything else is frozen."""
        net = self.network
        net.requires_grad_(False)
        trunk = []
        if self.config.finetune_blocks:
            for block in net.backbone._blocks[-self.config.finetune_blocks :]:
                block.requires_grad_(True)
                trunk.extend(block.parameters())
        heads = list(net.decoder.parameters())
        for p in heads:
            p.requires_grad_(True)
        groups = [{"params": heads, "lr": self.config.lr, "peak": self.config.lr}]
        if trunk:
            groups.append({"params": trunk, "lr": self.config.trunk_lr, "peak": self.config.trunk_lr})
        return groups

    def train_step(self) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = poly(group["peak"], self.step, self.config.steps)
        images, labels = (t.to(self.device) for t in batch([self.sampler.sample() for _ in range(self.config.batch)]))
        self._train_mode()
        logits = self.network(images)
        loss = F.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=self.config.void)
        take_step(self.optimizer, loss, max_norm=None)
        self.step += 1
        return {"loss": loss.item()}

    def _train_mode(self) -> None:
        """BatchNorm statistics stay frozen in the trunk (batches of 4 cannot estimate them);
        the new layers learn theirs."""
        self.network.train()
        self.network.backbone.eval()

    def validate(self) -> dict[str, float]:
        return stream_miou(self.network, self.val, None, self.config.classes, self.config.void, self.device) if self.val else {}

    def save_checkpoint(self) -> None:
        own = {"network": self.network.state_dict(), "config": json.dumps(asdict(self.config))}
        save_run_state(self.run_dir, self.optimizer, self.step, self.rng, self.history, own)

    def load_checkpoint(self) -> None:
        state = load_run_state(self.run_dir, self.device, self.optimizer, self.rng)
        # The memory is untrained here, so a checkpoint from before the label memory (whose
        # memory layers differ) resumes too: the trunk and decoder must match, the memory stays fresh.
        trained = {name: t for name, t in state["network"].items() if not name.startswith(MEMORY_PREFIX)}
        missing, unexpected = self.network.load_state_dict(trained, strict=False)
        if unexpected or any(not name.startswith(MEMORY_PREFIX) for name in missing):
            raise VidsegError(f"{self.run_dir}: the checkpoint does not fit this network (missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.step, self.history = state["step"], state["history"]

    def save_model(self, classes: list[dict]) -> Path:
        """The whole network (trunk included) as safetensors; the metadata rebuilds it."""
        path = self.run_dir / MODEL
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.network.state_dict().items()}
        metadata = {
            "arch": ARCH, "config": self.network.config.to_json(), "backbone": self.network.backbone.variant, "classes": json.dumps(classes),
            "void": str(self.config.void), "stage": "single", "steps": str(self.step), "seed": str(self.config.seed),
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


@torch.no_grad()
def stream_miou(
    network: SemsegNetwork, sequences: list[LabelledSequence], slots: int | None, classes: int, void: int, device: torch.device,
    size: int | None = None,
) -> dict[str, float]:
    """mIoU and pixel accuracy of ``sequences`` streamed in order, each with a fresh fifo
    memory of ``slots`` frames (None: the single-frame network), labelled as `vidseg
    semseg` labels them (``label_frame``), at ``size`` (None: the frames' own)."""
    network.eval()
    confusion = ConfusionMatrix(classes, ignore_index=void)
    for sequence in sequences:
        bank = MemoryBank(policy=FIFO(slots=slots)) if slots else None
        for number, frame in enumerate(sequence.frames):
            image = rgb(frame.image).permute(1, 2, 0).numpy()
            labels = label_frame(network, bank, image, number, size or min(image.shape[:2]), device)
            confusion.update(labels, read_label(frame.label, classes, void))
    iou = confusion.iou()
    return {"miou": round(float(np.nanmean(iou)), 4), "pixel_accuracy": round(confusion.pixel_accuracy(), 4)}
