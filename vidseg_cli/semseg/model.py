"""The semantic segmentation head over the shared memory engine: a memory of labels.

Single-frame network: an EfficientNet-Lite trunk (strides 4, 8, 16) and a light decoder
that merges them top-down into class logits at stride 4 (training step ``single``).

The memory (``LabelMemory``, training step ``memory``, the network frozen) holds what the
frames before said, not what they looked like: each slot is a frame's class
probabilities at stride 8 (the value) under its trunk features at stride 8 (the key, unit
norm: no weights to learn). A frame reads the bank by local attention (LMANet eqs 3-5) at
stride 8, which moves the remembered labels to where their pixels went, and a learned gate
(LMANet's gated fusion, eq 6, on labels) mixes them into the frame's own probabilities
pixel by pixel: near 1 where the frame is unsure or degraded and the memory was sure, near
0 where the memory shows a scene that has moved on (frames 1 s apart) or something new came
into view. The mix is what the frame writes back, so one slot (the default) carries what
the frames before it carried, and a label carried through a bad frame stays carried.

Why labels and not features: the earlier design (TMANet/LMANet's feature memory at stride
16, fused before the decoder) measured nothing, -0.1 mIoU on CamVid test and +0.3 on val
(docs/results.md), because the decoder's stride-4 and -8 skips come from the frame alone
and decide the boundaries. A mix of moved labels reaches them: docs/results.md
("Semseg results on CamVid") has what it measures.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.errors import VidsegError
from vidseg_cli.memory.slot import Slot
from vidseg_cli.memory.windowed import global_attention, windowed_attention
from vidseg_cli.models.backbone import EfficientNetLite, Features
from vidseg_cli.models.config import JsonConfig

SEMSEG_SIZE = 360  # a semseg model file's processing size unless weights.toml names another
ARCH = "semseg-lma"
READS = ("local", "global")
MEMORY_PREFIX = "memory."
LEGACY_FIELDS = ("key_dim", "value_dim", "aggregation")  # the feature memory's, in older files
LEGACY_MEMORY = ("memory.key.", "memory.value.", "memory.fusion.")


@dataclass(frozen=True)
class SemsegConfig(JsonConfig):
    classes: int = 11
    decoder_dim: int = 64
    read: str = "local"
    radius: int = 4  # local window radius, in stride-8 positions
    gate_dim: int = 16  # the gate's hidden channels

    def __post_init__(self) -> None:
        if self.read not in READS:
            raise ValueError(f"unknown read {self.read!r}; choose from {', '.join(READS)}")

    @classmethod
    def _upgrade(cls, fields: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in fields.items() if k not in LEGACY_FIELDS}


def _conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Decoder(nn.Module):
    """Top-down: stride 16 -> 8 -> 4, each step a 1x1 lateral and a 3x3 merge; logits at stride 4."""

    def __init__(self, channels: dict[str, int], dim: int, classes: int) -> None:
        super().__init__()
        self.top = _conv(channels["s16"], dim, 1)
        self.lateral8, self.lateral4 = _conv(channels["s8"], dim, 1), _conv(channels["s4"], dim, 1)
        self.merge8, self.merge4 = _conv(dim, dim, 3), _conv(dim, dim, 3)
        self.classify = nn.Conv2d(dim, classes, 1)

    def forward(self, features: Features) -> torch.Tensor:
        x = self.top(features.s16)
        x = self.merge8(F.interpolate(x, size=features.s8.shape[-2:], mode="bilinear", align_corners=False) + self.lateral8(features.s8))
        x = self.merge4(F.interpolate(x, size=features.s4.shape[-2:], mode="bilinear", align_corners=False) + self.lateral4(features.s4))
        return self.classify(x)


def work_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The processing size of a (height, width) frame whose short side becomes ``size``, in
    multiples of 16 as the trunk's strides need."""
    scale = size / min(height, width)
    return max(16, round(height * scale / 16) * 16), max(16, round(width * scale / 16) * 16)


def memory_key(features: Features) -> torch.Tensor:
    """A frame's key: its stride-8 trunk features at unit norm (B, C, h8, w8). Frozen
    features match a pixel to where it went better than a learned key of a few channels
    could learn to on a CPU budget."""
    return F.normalize(features.s8.float(), dim=1)


def pack(probabilities: torch.Tensor) -> torch.Tensor:
    """(B, C, h4, w4) -> (B, 4C, h8, w8): a slot's value, each stride-8 position holding its
    2x2 stride-4 probabilities whole, so that moving it keeps a pole a pole (pooling to
    stride 8 blurred thin classes away)."""
    return F.pixel_unshuffle(probabilities, 2)


def unpack(values: torch.Tensor) -> torch.Tensor:
    return F.pixel_shuffle(values, 2)


class LabelMemory(nn.Module):
    """The read's temperature and the gate: all the memory learns."""

    # agreement, both confidences here and over the frame, the best match's similarity (the
    # read's peak) here and over the frame, and the key similarity where the pixel stood.
    # The peak alone cannot tell a memory of a scene 1 s gone from a degraded frame (both
    # match their memory badly); the confidences can: a degraded frame is unsure where its
    # memory was sure, a stale memory's frame is as sure as its memory.
    GATE_INPUTS = 8

    def __init__(self, classes: int, hidden: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # a sharp read: 1/tau with tau 0.1
        self.gate = nn.Sequential(
            nn.Conv2d(2 * classes + self.GATE_INPUTS, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 3, padding=1)
        )
        nn.init.zeros_(self.gate[2].weight)
        nn.init.zeros_(self.gate[2].bias)  # a new gate mixes half and half

    def mix(
        self, probabilities: torch.Tensor, key: torch.Tensor, readout: torch.Tensor, peak: torch.Tensor, last_key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """probabilities (B, C, h4, w4) of the frame alone; key (B, K, h8, w8); readout
        (B, 4C, h8, w8) the memory's labels moved here (``pack``ed); peak (B, 1, h8, w8)
        the read's best score; last_key the newest slot's key. Returns the mixed
        probabilities at stride 4 and the gate (B, 1, h8, w8)."""
        moved = unpack(readout)
        own, remembered = F.avg_pool2d(probabilities, 2), F.avg_pool2d(moved, 2)
        best = peak / self.log_scale.exp()  # a cosine similarity again
        similarity = (key * last_key).sum(1, keepdim=True)  # where this pixel stands still, how alike it looks
        sure, was_sure = own.amax(1, keepdim=True), remembered.amax(1, keepdim=True)
        inputs = torch.cat([
            own, remembered, (own * remembered).sum(1, keepdim=True), sure, was_sure, _frame_mean(sure), _frame_mean(was_sure),
            best, _frame_mean(best), similarity,
        ], dim=1)
        gate = torch.sigmoid(self.gate(inputs))
        up = F.interpolate(gate, size=probabilities.shape[-2:], mode="bilinear", align_corners=False)
        return probabilities + up * (moved - probabilities), gate


def _frame_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x)


class SemsegNetwork(nn.Module):
    """Stateless, like every vidseg model: the memory lives in the caller's MemoryBank."""

    def __init__(self, backbone: EfficientNetLite, config: SemsegConfig = SemsegConfig()) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.decoder = Decoder(EfficientNetLite.channels, config.decoder_dim, config.classes)
        self.memory = LabelMemory(config.classes, config.gate_dim)
        # What runs the backbone at inference (``step``): None is the module itself; --runtime
        # onnx puts ONNX Runtime here (models/onnx_trunk.py). Training always uses the module.
        self.trunk: Callable[[torch.Tensor], Features] | None = None

    def features(self, images: torch.Tensor) -> Features:
        return (self.trunk or self.backbone)(images)

    def probabilities(self, features: Features) -> torch.Tensor:
        """The single-frame network's class probabilities at stride 4 (B, C, h4, w4)."""
        return torch.softmax(self.decoder(features), dim=1)

    def read(self, key: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """key (B, K, h, w); memory (B, T, ., h, w) -> the memory's values moved here (B, ., h, w)
        and the read's best score (B, 1, h, w)."""
        scale = self.memory.log_scale.exp()
        if self.config.read == "local":
            return windowed_attention(key, memory_keys, memory_values, self.config.radius, scale)
        return global_attention(key, memory_keys, memory_values, scale)

    def remember(
        self, probabilities: torch.Tensor, key: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The frame's probabilities mixed with what the memory holds (memory (B, T, ., h8,
        w8), newest last), and the gate."""
        readout, peak = self.read(key, memory_keys, memory_values)
        return self.memory.mix(probabilities, key, readout, peak, memory_keys[:, -1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Training step ``single``: logits (B, C, H, W) of ``images`` (B, 3, H, W) in [0, 255]."""
        return F.interpolate(self.decoder(self.backbone(images)), size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def step(
        self, image: torch.Tensor, slots: Sequence[Slot] | None, frame: int, remember: bool = True
    ) -> tuple[torch.Tensor, Slot | None]:
        """One frame of a video: image (3, H, W) in [0, 255] -> class probabilities
        (classes, H/4, W/4) and the slot to write to the bank (``slots`` None: no memory to
        read; ``remember`` False: no slot, the single-frame network)."""
        features = self.features(image[None])
        probabilities = self.probabilities(features)
        if not remember and not slots:
            return probabilities[0], None
        key = memory_key(features)
        if slots:
            keys = torch.stack([slot.key for slot in slots])[None]
            values = torch.stack([slot.value[0] for slot in slots])[None]
            probabilities, _ = self.remember(probabilities, key, keys, values)
        return probabilities[0], Slot(key=key[0], value=pack(probabilities), frame=frame)


def with_read(network: SemsegNetwork, read: str | None, radius: int | None) -> SemsegNetwork:
    """The same weights read another way (``--read``, ``--radius``; None keeps the model's):
    a shallow copy, so one loaded network serves every configuration."""
    changes = {k: v for k, v in (("read", read), ("radius", radius)) if v is not None}
    if not changes:
        return network
    view = copy.copy(network)
    view.config = dataclasses.replace(network.config, **changes)
    return view


def load_semseg(path: Path, fresh_memory: SemsegConfig | None = None) -> tuple[SemsegNetwork, dict[str, str]]:
    """A network from a safetensors file written by ``vidseg train semseg``, and its metadata
    (``classes``: JSON list of id, name, colour; ``void``; ``stage``). ``fresh_memory``: the
    file's trunk and decoder under a new, untrained memory of that config (training step
    ``memory`` starts from a single-frame model; an older file's feature memory is left out)."""
    from vidseg_cli.models.registry import read_safetensors

    state, metadata = read_safetensors(path)
    if metadata.get("arch") != ARCH or "config" not in metadata:
        raise VidsegError(f"{path} is not a semseg model (arch {metadata.get('arch')!r}; a {ARCH} file from vidseg train semseg)")
    try:
        config = SemsegConfig.from_json(metadata["config"])
        if fresh_memory is not None:
            config = dataclasses.replace(fresh_memory, classes=config.classes, decoder_dim=config.decoder_dim)
            state = {name: t for name, t in state.items() if not name.startswith(MEMORY_PREFIX)}
        elif any(name.startswith(LEGACY_MEMORY) for name in state):
            raise VidsegError(
                f"{path} holds the feature memory of earlier vidseg versions; give it a label memory with "
                f"vidseg train semseg --stage memory --init {path} (docs/training.md)"
            )
        network = SemsegNetwork(EfficientNetLite(metadata.get("backbone", "efficientnet-lite0")), config)
        missing, unexpected = network.load_state_dict(state, strict=False)
        if unexpected or any(fresh_memory is None or not name.startswith(MEMORY_PREFIX) for name in missing):
            raise RuntimeError(f"missing {missing}, unexpected {unexpected}")
    except (TypeError, ValueError, RuntimeError) as error:
        raise VidsegError(f"{path}: the weights do not fit the architecture they name: {str(error).splitlines()[0]}") from None
    return network.eval(), metadata


def create_semseg(name: str, device: torch.device | str = "cpu") -> tuple[SemsegNetwork, dict[str, str]]:
    """A semseg network by weights.toml name or .safetensors path, in eval mode on ``device``."""
    from vidseg_cli.weights.registry import checkpoint

    spec = checkpoint(name, "semseg")
    network, metadata = load_semseg(spec.path)
    spec.check_listed(network.config, _listed_config)
    if spec.entry is not None and spec.entry.fields.get("backbone") != network.backbone.variant:
        raise VidsegError(f"{name}: the file's trunk is {network.backbone.variant}, weights.toml lists {spec.entry.fields.get('backbone')}")
    return network.to(device), metadata


def processing_size(name: str) -> int:
    """The short side a semseg model labels at unless --size says otherwise: weights.toml's
    ``size`` for a named model (chosen on its validation split), else 360, CamVid's height."""
    from vidseg_cli.weights.registry import entry

    if name.endswith(".safetensors"):
        return SEMSEG_SIZE
    return int(entry(name).fields.get("size", SEMSEG_SIZE))


def _listed_config(listed: dict) -> SemsegConfig | None:
    try:
        return SemsegConfig(**listed)
    except (TypeError, ValueError):
        return None
