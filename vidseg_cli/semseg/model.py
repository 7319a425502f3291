"""The semantic segmentation head over the shared memory engine (TMANet, LMANet).

Single-frame network: the EfficientNet-Lite0 trunk (strides 4, 8, 16) and a light decoder
that merges them top-down into class logits at stride 4. The memory sits between the
trunk's stride-16 output and the decoder, as LMANet inserts it between encoder and
decoder: each frame's key (C_K) and value (C_V = 4 C_K) come from 1x1 then 3x3 layers
(TMANet 2.2) and are written to the session's MemoryBank as one slot (one "object": the
scene); a frame reads the bank's slots locally (``read="local"``, LMANet eqs 3-5) or
globally (``"global"``, TMANet eq 1), and the readout is merged with the frame's own
value by LMANet's gated fusion (eq 6) or TMANet's concatenation (``aggregation``), back to
the trunk's width. With an empty bank (the first frame, or ``--memory none``) the decoder
gets the trunk's output itself: the single-frame network, which training step 1 trains
alone.

Unlike the papers, the fusion's output is added to the trunk's output instead of replacing
it, and its last layers start at zero: a memory model starts as exactly the single-frame
network it was built on, so training step 2 can only teach the memory to add what the frame
lacks (replacing the features made step 2 relearn the frame's own features through the
fusion before the memory could help).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.errors import VidsegError
from vidseg_cli.memory.slot import Slot
from vidseg_cli.memory.windowed import global_attention, windowed_attention
from vidseg_cli.models.backbone import EfficientNetLite, Features

SEMSEG_SIZE = 360  # a semseg model file's processing size unless weights.toml names another
ARCH = "semseg-lma"
READS = ("local", "global")
AGGREGATIONS = ("gated", "concat")


@dataclass(frozen=True)
class SemsegConfig:
    classes: int = 11
    # TMANet's proportions (ResNet-50's 2048 channels -> C_K 256, C_V 1024) on the trunk's 112
    key_dim: int = 16  # C_K
    value_dim: int = 64  # C_V = 4 C_K
    decoder_dim: int = 64
    read: str = "local"
    radius: int = 4  # local window radius, in stride-16 positions
    aggregation: str = "gated"

    def __post_init__(self) -> None:
        if self.read not in READS:
            raise ValueError(f"unknown read {self.read!r}; choose from {', '.join(READS)}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose from {', '.join(AGGREGATIONS)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SemsegConfig:
        return cls(**json.loads(text))


def _conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Encoding(nn.Module):
    """TMANet 2.2: a 1x1 then a 3x3 convolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(cin, cout, 1)
        self.spread = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spread(F.relu(self.reduce(x)))


class GatedFusion(nn.Module):
    """LMANet eq 6: sigma(A_Q(V_Q, V_M)) * E_Q(V_Q) + sigma(A_M(V_Q, V_M)) * E_M(V_M).

    1x1 convolutions: with 3x3 ones the fusion alone cost 0.5 GFLOPs a frame at 480x352,
    a fifth of the single-frame network, where the memory may cost 15% in all."""

    def __init__(self, value_dim: int, out_dim: int) -> None:
        super().__init__()
        self.embed_query = nn.Conv2d(value_dim, out_dim, 1)  # E_Q
        self.embed_memory = nn.Conv2d(value_dim, out_dim, 1)  # E_M
        _start_at_zero(self.embed_query, self.embed_memory)
        self.attend_query = nn.Conv2d(2 * value_dim, out_dim, 1)  # A_Q
        self.attend_memory = nn.Conv2d(2 * value_dim, out_dim, 1)  # A_M

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        # The four 1x1 layers as one product over [V_Q; V_M] (four calls took 1.2 ms at 480x352, one 0.3 ms)
        both = torch.cat([query, memory], dim=1)
        gates_q, gates_m, embedded_q, embedded_m = _pointwise(both, self._weight(), self._bias()).chunk(4, dim=1)
        return torch.sigmoid(gates_q) * embedded_q + torch.sigmoid(gates_m) * embedded_m

    def _weight(self) -> torch.Tensor:
        """(4 out, 2 C_V): A_Q, A_M, then E_Q and E_M with zeros where they do not look."""
        eq, em = self.embed_query.weight.flatten(1), self.embed_memory.weight.flatten(1)
        return torch.cat([
            self.attend_query.weight.flatten(1), self.attend_memory.weight.flatten(1),
            torch.cat([eq, torch.zeros_like(em)], dim=1), torch.cat([torch.zeros_like(eq), em], dim=1),
        ])

    def _bias(self) -> torch.Tensor:
        layers = (self.attend_query, self.attend_memory, self.embed_query, self.embed_memory)
        return torch.cat([layer.bias for layer in layers])


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution (weight (out, in), bias (out,)) as one matrix product: at stride 16
    a frame has a few hundred positions, where a convolution call costs more than its
    arithmetic."""
    b, _, h, w = x.shape
    return (torch.matmul(weight, x.flatten(2)) + bias[:, None]).view(b, -1, h, w)


def _start_at_zero(*layers: nn.Conv2d) -> None:
    """The fusion's output layers start at zero, so a new memory adds nothing (a residual)."""
    for layer in layers:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


class ConcatFusion(nn.Module):
    """TMANet's aggregation: concatenate, then a (1x1) convolution (the ablation of eq 6)."""

    def __init__(self, value_dim: int, out_dim: int) -> None:
        super().__init__()
        self.merge = nn.Conv2d(2 * value_dim, out_dim, 1)
        _start_at_zero(self.merge)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([query, memory], dim=1))


class Decoder(nn.Module):
    """Top-down: stride 16 -> 8 -> 4, each step a 1x1 lateral and a 3x3 merge; logits at stride 4."""

    def __init__(self, channels: dict[str, int], dim: int, classes: int) -> None:
        super().__init__()
        self.top = _conv(channels["s16"], dim, 1)
        self.lateral8, self.lateral4 = _conv(channels["s8"], dim, 1), _conv(channels["s4"], dim, 1)
        self.merge8, self.merge4 = _conv(dim, dim, 3), _conv(dim, dim, 3)
        self.classify = nn.Conv2d(dim, classes, 1)

    def forward(self, s16: torch.Tensor, features: Features) -> torch.Tensor:
        x = self.top(s16)
        x = self.merge8(F.interpolate(x, size=features.s8.shape[-2:], mode="bilinear", align_corners=False) + self.lateral8(features.s8))
        x = self.merge4(F.interpolate(x, size=features.s4.shape[-2:], mode="bilinear", align_corners=False) + self.lateral4(features.s4))
        return self.classify(x)


class MemoryLayers(nn.Module):
    """Everything the memory adds to the single-frame network (training step 2 trains only these)."""

    def __init__(self, trunk_dim: int, config: SemsegConfig) -> None:
        super().__init__()
        self.key = Encoding(trunk_dim, config.key_dim)
        self.value = Encoding(trunk_dim, config.value_dim)
        fusion = GatedFusion if config.aggregation == "gated" else ConcatFusion
        self.fusion = fusion(config.value_dim, trunk_dim)
        self.log_scale = nn.Parameter(torch.tensor(-0.5 * math.log(config.key_dim)))  # 1/sqrt(C_K) at the start

    def encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value of the trunk's stride-16 features: both 1x1 layers as one product
        (``_pointwise``), then each 3x3."""
        weight = torch.cat([self.key.reduce.weight.flatten(1), self.value.reduce.weight.flatten(1)])
        bias = torch.cat([self.key.reduce.bias, self.value.reduce.bias])
        reduced = F.relu(_pointwise(features, weight, bias))
        key, value = reduced.split([self.key.reduce.out_channels, self.value.reduce.out_channels], dim=1)
        return self.key.spread(key), self.value.spread(value)


class SemsegNetwork(nn.Module):
    """Stateless, like every vidseg model: the memory lives in the caller's MemoryBank."""

    def __init__(self, backbone: EfficientNetLite, config: SemsegConfig = SemsegConfig()) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        trunk_dim = EfficientNetLite.channels["s16"]
        self.decoder = Decoder(EfficientNetLite.channels, config.decoder_dim, config.classes)
        self.memory = MemoryLayers(trunk_dim, config)
        # What runs the backbone at inference (``step``): None is the module itself; --runtime
        # onnx puts ONNX Runtime here (models/onnx_trunk.py). Training always uses the module.
        self.trunk: Callable[[torch.Tensor], Features] | None = None

    def encode(self, images: torch.Tensor, trunk: Callable[[torch.Tensor], Features] | None = None) -> tuple[Features, torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 255] -> features, keys (B, C_K, h, w), values (B, C_V, h, w)."""
        features = (trunk or self.backbone)(images)
        return features, *self.memory.encode(features.s16)

    def read(self, key: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor) -> torch.Tensor:
        """key (B, C_K, h, w); memory (B, T, C, h, w) -> readout (B, C_V, h, w)."""
        scale = self.memory.log_scale.exp()
        if self.config.read == "local":
            return windowed_attention(key, memory_keys, memory_values, self.config.radius, scale)
        return global_attention(key, memory_keys, memory_values, scale)

    def logits(
        self, features: Features, value: torch.Tensor | None, readout: torch.Tensor | None, size: tuple[int, int]
    ) -> torch.Tensor:
        """Class logits (B, classes, H, W) at ``size``; ``readout`` None: no memory."""
        s16 = features.s16 if readout is None else features.s16 + self.memory.fusion(value, readout)
        logits = self.decoder(s16, features)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor, memory_images: torch.Tensor | None = None) -> torch.Tensor:
        """Training: logits of ``images`` (B, 3, H, W) reading a memory made of
        ``memory_images`` (B, T, 3, H, W; None: the single-frame network)."""
        features, key, value = self.encode(images)
        readout = None
        if memory_images is not None and memory_images.shape[1] > 0:
            b, t = memory_images.shape[:2]
            _, keys, values = self.encode(memory_images.flatten(0, 1))
            readout = self.read(key, keys.unflatten(0, (b, t)), values.unflatten(0, (b, t)))
        return self.logits(features, value, readout, images.shape[-2:])

    @torch.inference_mode()
    def step(
        self, image: torch.Tensor, slots: Sequence[Slot] | None, frame: int, remember: bool = True
    ) -> tuple[torch.Tensor, Slot | None]:
        """One frame of a video: image (3, H, W) in [0, 255] -> class probabilities
        (classes, H, W) and the slot to write to the bank (``slots`` None: no memory to
        read; ``remember`` False: no slot, and the single-frame network pays nothing for the
        memory's key and value)."""
        if not remember and not slots:
            features = (self.trunk or self.backbone)(image[None])
            return torch.softmax(self.logits(features, None, None, image.shape[-2:])[0], dim=0), None
        features, key, value = self.encode(image[None], self.trunk)
        readout = None
        if slots:
            keys = torch.stack([slot.key for slot in slots])[None]
            values = torch.stack([slot.value[0] for slot in slots])[None]
            readout = self.read(key, keys, values)
        logits = self.logits(features, value, readout, image.shape[-2:])
        return torch.softmax(logits[0], dim=0), Slot(key=key[0], value=value, frame=frame)


def with_read(network: SemsegNetwork, read: str | None, radius: int | None) -> SemsegNetwork:
    """The same weights read another way (``--read``, ``--radius``; None keeps the model's):
    a shallow copy, so one loaded network serves every configuration."""
    changes = {k: v for k, v in (("read", read), ("radius", radius)) if v is not None}
    if not changes:
        return network
    view = copy.copy(network)
    view.config = dataclasses.replace(network.config, **changes)
    return view


def load_semseg(path: Path, new_memory: SemsegConfig | None = None) -> tuple[SemsegNetwork, dict[str, str]]:
    """A network from a safetensors file written by ``vidseg train semseg``, and its metadata
    (``classes``: JSON list of id, name, colour; ``void``). ``new_memory``: leave the file's
    memory layers out and build new ones by that config (a single-frame model's memory layers
    never trained; training step 2 starts them afresh, whatever their shape was)."""
    from vidseg_cli.models.registry import read_safetensors

    state, metadata = read_safetensors(path)
    if metadata.get("arch") != ARCH or "config" not in metadata:
        raise VidsegError(f"{path} is not a semseg model (arch {metadata.get('arch')!r}; a {ARCH} file from vidseg train semseg)")
    try:
        config = SemsegConfig.from_json(metadata["config"])
        if new_memory is not None:
            config = dataclasses.replace(new_memory, classes=config.classes, decoder_dim=config.decoder_dim)
            state = {name: t for name, t in state.items() if not name.startswith("memory.")}
        network = SemsegNetwork(EfficientNetLite(metadata.get("backbone", "efficientnet-lite0")), config)
        missing, unexpected = network.load_state_dict(state, strict=new_memory is None)
        if unexpected or any(not name.startswith("memory.") for name in missing):
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
