"""Training step ``memory``: the label memory's gate and read temperature, on a frozen
single-frame network, in two parts that each resume.

1. Recording (``record_labelled``, ``record_video``): the frozen network runs once over
   short clips and keeps, per frame, its stride-4 probabilities and stride-8 key, clean
   and degraded (``semseg/corrupt.py``), with a target:
   - labelled frames: the label. The memory frames are the labelled frames just before
     when they are near (CamVid val's 15 Hz stretch, when training on it), else a
     pseudo-clip of the frame itself (the frame as a small camera drift would have shown it
     a few frames earlier) and a stale clip (the far labelled frames before it: without
     it the gate never met a memory 1 s old and took it, -18 mIoU on CamVid test);
   - unlabelled video (DAVIS at 24 fps, any clip): the teacher, which is the single-frame
     network on the clean frames t-2..t+2, each moved to frame t by optical flow (OpenCV's
     DIS) and averaged. It sees the future, so it is steadier and more often right than the
     frame alone, which is what a memory of the past can learn to approach.
2. Fitting (``MemoryTrainer``): clips unrolled as a video is streamed: each frame reads a
   fifo memory of the mixes before it, a random third of the frames degraded, and the
   loss is the cross-entropy of each mix against its target. A step costs milliseconds, so
   thousands fit in minutes on a CPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vidseg_cli.io.outputs import write_file_atomically
from vidseg_cli.semseg.corrupt import KINDS, corrupt
from vidseg_cli.semseg.data import LabelledSequence, read_label
from vidseg_cli.semseg.model import ARCH, SemsegNetwork, memory_key, pack, work_size
from vidseg_cli.semseg.samples import moved, rgb
from vidseg_cli.train.loop import load_run_state, save_run_state, take_step

STORE = torch.float16  # recordings: half the memory, ample for probabilities and unit keys


@dataclass(frozen=True)
class MemoryTrainConfig:
    steps: int = 1500
    batch: int = 8
    lr: float = 3e-3
    size: int = 480  # the short side frames are recorded at: the model's processing size
    slots: int = 3  # the fifo memory the unrolled clips read
    corrupt_share: float = 1 / 3  # frames degraded when fitting (the bench degrades every third)
    near: int = 4  # labelled frames at most this many video frames apart are each other's memory
    pseudo_frames: int = 2  # memory frames of a pseudo-clip
    stale: bool = True  # also clips whose memory is far: see record_labelled and record_video
    stale_gap: int = 24  # video frames between a stale video clip's frames (1 s at 24 fps)
    segment: int = 5  # frames unrolled per video clip
    gap: int = 2  # video frames between a video clip's frames (24 fps -> 12 Hz, near CamVid val's 15)
    window: int = 2  # the teacher averages frames t-window..t+window
    clips_per_video: int = 3
    video_share: float = 0.5  # share of steps on video clips (when both kinds were recorded)
    crop: int = 32  # stride-8 positions a side a step trains on (256 px): a whole frame cost seconds a step
    class_weights: str = "enet"
    seed: int = 0
    classes: int = 11
    void: int = 11


@dataclass
class Clip:
    """One recorded clip, frames in time order; targets for frames 1.. only."""

    probs: torch.Tensor  # (L, C, h4, w4) the single-frame network on clean frames
    keys: torch.Tensor  # (L, K, h8, w8)
    bad_probs: torch.Tensor  # (L-1, C, h4, w4) on degraded copies of frames 1..
    bad_keys: torch.Tensor  # (L-1, K, h8, w8)
    target: torch.Tensor  # the last frame's labels (1, h4, w4) int64 with void, or teacher probabilities (L-1, C, h4, w4)
    pseudo: bool = False  # memory frames made from the frame itself
    stale: bool = False  # memory frames far before the frame: a scene that has moved on

    @property
    def labelled(self) -> bool:
        return not self.target.is_floating_point()


@torch.no_grad()
def _run(network: SemsegNetwork, images: list[torch.Tensor], size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (3, H, W) float [0, 255] -> stacked probabilities (N, C, h4, w4) and keys."""
    probs, keys = [], []
    for image in images:
        work = work_size(*image.shape[-2:], size)
        resized = F.interpolate(image[None].to(device), size=work, mode="bilinear", align_corners=False, antialias=work[0] < image.shape[-2])
        features = network.features(resized)
        probs.append(network.probabilities(features)[0].to(STORE).cpu())
        keys.append(memory_key(features)[0].to(STORE).cpu())
    return torch.stack(probs), torch.stack(keys)


def _degraded(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    pixels = image.permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()
    return torch.from_numpy(corrupt(pixels, KINDS[rng.integers(len(KINDS))], rng)).permute(2, 0, 1).float()


def _record(
    network, frames: list[torch.Tensor], target: torch.Tensor, config: MemoryTrainConfig, rng, device, pseudo: bool = False,
    stale: bool = False,
) -> Clip:
    probs, keys = _run(network, frames, config.size, device)
    bad_probs, bad_keys = _run(network, [_degraded(f, rng) for f in frames[1:]], config.size, device)
    return Clip(probs, keys, bad_probs, bad_keys, target, pseudo, stale)


def record_labelled(
    network: SemsegNetwork, sequence: LabelledSequence, config: MemoryTrainConfig, rng: np.random.Generator, device
) -> list[Clip]:
    """A clip per labelled frame: its memory the near labelled frames before it, or a
    pseudo-clip; the target its label at stride 4 (nearest: labels stay labels)."""
    clips = []
    images = [rgb(frame.image).float() for frame in sequence.frames]
    for index, frame in enumerate(sequence.frames):
        before = [i for i in range(max(0, index - config.pseudo_frames), index)
                  if frame.number - sequence.frames[i].number <= config.near * (index - i)]
        pseudo = len(before) < config.pseudo_frames
        if not pseudo:
            memory = [images[i] for i in before]
        else:
            memory = [moved(images[index], config.pseudo_frames - i, rng) for i in range(config.pseudo_frames)]
        label = torch.from_numpy(read_label(frame.label, config.classes, config.void).astype(np.int64))
        h4, w4 = (s // 4 for s in work_size(*label.shape, config.size))
        target = F.interpolate(label[None, None].float(), size=(h4, w4), mode="nearest")[0].long()
        clips.append(_record(network, [*memory, images[index]], target, config, rng, device, pseudo))
        if pseudo and config.stale and index >= config.pseudo_frames:
            # the far labelled frames before it (CamVid train's and test's are 1 s apart): a
            # memory of a scene that has moved on, which the gate must learn to refuse
            stale = images[index - config.pseudo_frames : index + 1]
            clips.append(_record(network, stale, target, config, rng, device, stale=True))
    return clips


def record_video(
    network: SemsegNetwork, frames: list[np.ndarray], config: MemoryTrainConfig, rng: np.random.Generator, device
) -> list[Clip]:
    """``clips_per_video`` clips of ``segment`` frames ``gap`` apart from random starts, and
    (``stale``) one of ``pseudo_frames`` + 1 frames ``stale_gap`` apart; each frame after
    the first is taught by the teacher (``teacher``) from its neighbours ``gap`` apart.

    The stale clip is the negative that CamVid train's far labelled frames cannot give: on
    its own training frames the frozen network is sure and right whatever the memory says,
    so a gate learns there that mixing a memory 1 s old costs nothing (it cost 5 mIoU on
    CamVid test); on video it never trained on, the teacher says what it costs."""
    reach = config.window * config.gap
    shapes = [(config.segment, config.gap, config.clips_per_video, False)]  # frames, apart, clips, stale
    if config.stale:
        shapes.append((config.pseudo_frames + 1, config.stale_gap, 1, True))
    clips = []
    for length, gap, count, stale in shapes:
        last_start = len(frames) - 1 - (length - 1) * gap - reach  # the last frame's teacher needs frames up to +reach
        if last_start < 0:
            continue
        for start in sorted(rng.choice(last_start + 1, size=min(count, last_start + 1), replace=False)):
            clips.append(_video_clip(network, frames, [int(start) + k * gap for k in range(length)], config, rng, device, stale))
    return clips


def _video_clip(
    network: SemsegNetwork, frames: list[np.ndarray], numbers: list[int], config: MemoryTrainConfig, rng: np.random.Generator, device,
    stale: bool,
) -> Clip:
    """The clip of frames ``numbers``, frames 1.. taught by the teacher."""

    def image(n: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(frames[n])).permute(2, 0, 1).float()

    window, gap = config.window, config.gap
    around = {n: [min(len(frames) - 1, max(0, n + k * gap)) for k in range(-window, window + 1)] for n in numbers[1:]}
    needed = sorted({m for ms in around.values() for m in ms})
    probs, _ = _run(network, [image(m) for m in needed], config.size, device)
    by_frame = dict(zip(needed, probs, strict=True))
    greys = {m: _grey(frames[m], probs.shape[-2:]) for m in needed}
    targets = [teacher(torch.stack([by_frame[m] for m in ms]), [greys[m] for m in ms], window, window) for ms in around.values()]
    return _record(network, [image(n) for n in numbers], torch.stack(targets).to(STORE), config, rng, device, stale=stale)


def _grey(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from vidseg_cli.metrics.consistency import opencv

    cv2 = opencv()
    return cv2.resize(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY), (size[1], size[0]), interpolation=cv2.INTER_AREA)


def teacher(probs: torch.Tensor, greys: list[np.ndarray], t: int, window: int) -> torch.Tensor:
    """The mean of frames t-window..t+window's probabilities, each moved to frame t by DIS
    flow (from t to that frame, so every pixel of t looks up where it was or will be)."""
    from vidseg_cli.metrics.consistency import opencv

    cv2 = opencv()
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    h, w = greys[t].shape
    total = probs[t].float().clone()
    for other in (*range(t - window, t), *range(t + 1, t + window + 1)):
        motion = flow.calc(greys[t], greys[other], None)
        x = (np.arange(w, dtype=np.float32)[None, :] + motion[..., 0]) / max(1, w - 1) * 2 - 1
        y = (np.arange(h, dtype=np.float32)[:, None] + motion[..., 1]) / max(1, h - 1) * 2 - 1
        grid = torch.from_numpy(np.stack([x, y], axis=-1))[None]
        total += F.grid_sample(probs[other][None].float(), grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    return total / (2 * window + 1)


class MemoryTrainer:
    """Fits ``network.memory`` on recorded clips; the rest of the network is never touched."""

    def __init__(self, network: SemsegNetwork, clips: list[Clip], config: MemoryTrainConfig, run_dir: Path, class_weights) -> None:
        if not clips:
            raise ValueError("no clips to train the memory on")
        self.network, self.config, self.run_dir = network, config, run_dir
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        network.requires_grad_(False)
        network.memory.requires_grad_(True)
        self.optimizer = torch.optim.Adam(network.memory.parameters(), lr=config.lr)
        self.groups = _groups(clips)
        self.weights = class_weights
        self.step = 0
        self.history: list[dict] = []

    def train_step(self) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * 0.5 * (1 + math.cos(math.pi * self.step / self.config.steps))
        clips = self._batch()
        self.network.memory.train()
        loss, gate = self.unroll(clips)
        take_step(self.optimizer, loss, max_norm=1.0)
        self.step += 1
        return {"loss": loss.item(), "gate": gate}

    def _batch(self) -> list[Clip]:
        """Clips of one shape (one recording kind and size), the kinds by ``video_share``."""
        labelled = [g for g in self.groups if g[0].labelled]
        video = [g for g in self.groups if not g[0].labelled]
        pool = video if video and (not labelled or self.rng.random() < self.config.video_share) else labelled
        group = pool[self.rng.integers(len(pool))]
        return [group[i] for i in self.rng.integers(len(group), size=self.config.batch)]

    def unroll(self, clips: list[Clip]) -> tuple[torch.Tensor, float]:
        """Stream the clips as inference streams a video: each frame's mix is what it
        writes to a fifo of ``slots``; the loss is each mix's cross-entropy to its target."""
        square = self._square(clips[0].keys.shape[-2:])
        probs, bad_probs = (torch.stack([getattr(c, name)[square.s4] for c in clips]).float() for name in ("probs", "bad_probs"))
        keys, bad_keys = (torch.stack([getattr(c, name)[square.s8] for c in clips]).float() for name in ("keys", "bad_keys"))
        memory_keys, memory_values = [keys[:, 0]], [pack(probs[:, 0])]
        losses, gates = [], []
        for t in range(1, probs.shape[1]):
            # A pseudo-clip's memory is the frame itself, moved: it holds nothing a clean frame
            # lacks and teaches only distrust of moved labels, so its frame is always degraded.
            # A stale clip's frame is always clean: it teaches that a memory of another scene
            # is refused, which a degraded frame (better off with any memory) would blur.
            share = 1.0 if clips[0].pseudo else 0.0 if clips[0].stale else self.config.corrupt_share
            bad = torch.from_numpy(self.rng.random(len(clips)) < share)
            own = torch.where(bad[:, None, None, None], bad_probs[:, t - 1], probs[:, t])
            key = torch.where(bad[:, None, None, None], bad_keys[:, t - 1], keys[:, t])
            mixed, gate = self.network.remember(
                own, key, torch.stack(memory_keys[-self.config.slots :], 1), torch.stack(memory_values[-self.config.slots :], 1)
            )
            last = t == probs.shape[1] - 1
            if last or not clips[0].labelled:  # a labelled clip has a label for its last frame only
                target = torch.stack([c.target[-1 if c.labelled else t - 1][(..., *square.s4[2:])] for c in clips])
                losses.append(self._cross_entropy(mixed, target))
            gates.append(gate.mean().item())
            memory_keys.append(key)
            memory_values.append(pack(mixed))
        return torch.stack(losses).mean(), float(np.mean(gates))

    def _square(self, size8: tuple[int, int]) -> _Square:
        """A random square of ``crop`` stride-8 positions (the whole frame if smaller)."""
        h, w = (min(self.config.crop, side) for side in size8)
        top, left = (int(self.rng.integers(side - extent + 1)) for side, extent in zip(size8, (h, w), strict=True))
        s8 = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))
        s4 = (slice(None), slice(None), slice(2 * top, 2 * top + 2 * h), slice(2 * left, 2 * left + 2 * w))
        return _Square(s8, s4)

    def _cross_entropy(self, mixed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log = mixed.clamp_min(1e-6).log()
        if not target.is_floating_point():  # labels
            return F.nll_loss(log, target, weight=self.weights, ignore_index=self.config.void)
        target = target.float()
        weight = 1.0 if self.weights is None else self.weights[target.argmax(1)]  # a soft target weighs as its top class
        return (-(target * log).sum(1) * weight).sum() / (weight * torch.ones_like(log[:, 0])).sum()

    def save_checkpoint(self) -> None:
        own = {"memory": self.network.memory.state_dict(), "config": json.dumps(asdict(self.config))}
        save_run_state(self.run_dir, self.optimizer, self.step, self.rng, self.history, own)

    def load_checkpoint(self) -> None:
        state = load_run_state(self.run_dir, torch.device("cpu"), self.optimizer, self.rng)
        self.network.memory.load_state_dict(state["memory"])
        self.step, self.history = state["step"], state["history"]

    def save_model(self, path: Path, metadata: dict[str, str]) -> Path:
        """The whole network, its memory trained, as safetensors (``metadata``: the base
        file's, with this stage's own)."""
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.network.state_dict().items()}
        metadata = {**metadata, "arch": ARCH, "config": self.network.config.to_json(), "stage": "memory",
                    "steps": str(self.step), "seed": str(self.config.seed)}
        write_file_atomically(path, lambda staging: save_file(tensors, str(staging), metadata=metadata), force=True)
        return path


@dataclass(frozen=True)
class _Square:
    s8: tuple[slice, ...]  # (frame, channel, y, x) of a clip's keys
    s4: tuple[slice, ...]  # the same square at stride 4 (probabilities, targets)


def _groups(clips: list[Clip]) -> list[list[Clip]]:
    """Clips that stack into one batch: same kind, length and size."""
    groups: dict[tuple, list[Clip]] = {}
    for clip in clips:
        groups.setdefault((clip.labelled, clip.pseudo, clip.stale, tuple(clip.probs.shape), tuple(clip.keys.shape)), []).append(clip)
    return list(groups.values())
