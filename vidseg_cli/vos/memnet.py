"""The learned VOS model: a light memory network on a frozen EfficientNet-Lite0.

Per frame, the backbone gives stride-4/8/16 features and a key projection of the stride-16
features is what memory matches. A frame written to memory adds one value per object: its
stride-16 features joined with its mask through a light strided-conv path (as STCN reuses
the key encoder's features instead of running a second backbone). Reading is STM attention
(L2 affinity, top-k) over every slot; a decoder with stride-8 and stride-4 skips turns each
object's readout into logits on the stride-4 grid, and the session's soft aggregation
combines objects. The STReMN fusion cell is part of the model (memory/fusion_cell.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.engine.profile import stage
from vidseg_cli.memory.fusion_cell import FusionCell, LearnedFusion
from vidseg_cli.memory.readout import read_values
from vidseg_cli.memory.slot import Slot
from vidseg_cli.models.backbone import EfficientNetLite, Features
from vidseg_cli.models.config import JsonConfig

ARCH = "memnet"


@dataclass(frozen=True)
class MemNetConfig(JsonConfig):
    key_dim: int = 64
    value_dim: int = 96
    mask_dim: int = 32
    decoder_dims: tuple[int, int, int] = (96, 48, 32)  # at strides 16, 8, 4
    fusion_hidden: int = 64
    fusion_candidate: str = "tanh"  # eq 8 as published; "aligned" (memory/fusion_cell.py)
    topk: int = 20  # memory pixels each query pixel reads from; 0 = all
    # Added to every object logit: a calibration chosen after training by `vidseg train
    # calibrate` on validation data (0 while training).
    logit_bias: float = 0.0

    @classmethod
    def _upgrade(cls, fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "decoder_dims": tuple(fields["decoder_dims"])}


@dataclass(frozen=True)
class MemNetFrame:
    key: torch.Tensor  # (Ck, h16, w16)
    features: Features  # batch of one

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.features.s4.shape[-2:])


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


class ValueEncoder(nn.Module):
    """(stride-16 features, per-object masks on the stride-4 grid) -> per-object values."""

    def __init__(self, feature_dim: int, mask_dim: int, value_dim: int) -> None:
        super().__init__()
        # input channels: this object's mask and the union of the other objects (STCN)
        self.mask_path = nn.Sequential(
            _conv(2, 16, stride=2), nn.ReLU(inplace=True), _conv(16, mask_dim, stride=2), nn.ReLU(inplace=True)
        )
        self.fuse = nn.Sequential(
            _conv(feature_dim + mask_dim, value_dim), nn.ReLU(inplace=True), _conv(value_dim, value_dim)
        )

    def forward(self, s16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """s16 (B, C, h, w); masks (B, O, H4, W4) -> (B, O, Cv, h, w)."""
        b, o = masks.shape[:2]
        others = masks.sum(1, keepdim=True) - masks
        m = self.mask_path(torch.stack([masks, others], dim=2).flatten(0, 1))
        if m.shape[-2:] != s16.shape[-2:]:
            m = F.interpolate(m, size=s16.shape[-2:], mode="bilinear", align_corners=False)
        v = self.fuse(torch.cat([s16.repeat_interleave(o, dim=0), m], dim=1))
        return v.view(b, o, *v.shape[1:])


class Decoder(nn.Module):
    """Readout + query features -> one logit per pixel of the stride-4 grid."""

    def __init__(self, channels: dict[str, int], value_dim: int, dims: tuple[int, int, int], bias: float = 0.0) -> None:
        super().__init__()
        self.bias = bias
        d16, d8, d4 = dims
        self.enter = nn.Sequential(
            _conv(value_dim + channels["s16"], d16), nn.ReLU(inplace=True), _conv(d16, d16), nn.ReLU(inplace=True)
        )
        self.up8, self.skip8, self.refine8 = _conv(d16, d8, 1), _conv(channels["s8"], d8, 1), _conv(d8, d8)
        self.up4, self.skip4, self.refine4 = _conv(d8, d4, 1), _conv(channels["s4"], d4, 1), _conv(d4, d4)
        self.out = _conv(d4, 1, 1)

    def forward(self, readout: torch.Tensor, features: Features) -> torch.Tensor:
        """readout (B*O, Cv, h16, w16), features repeated per object -> logits (B*O, H4, W4)."""
        return self.finish(self.refined8(readout, features), features.s4)

    def refined8(self, readout: torch.Tensor, features: Features) -> torch.Tensor:
        """The refined stride-8 map."""
        x = F.relu(self.enter[0](torch.cat([readout, features.s16], dim=1)))
        x = F.relu(self.enter[2](x))
        return self._merge(x, features.s8, self.up8, self.skip8, self.refine8)

    def finish(self, refined8: torch.Tensor, s4: torch.Tensor) -> torch.Tensor:
        """R8 and the stride-4 features -> logits (B*O, H4, W4)."""
        x = self._merge(refined8, s4, self.up4, self.skip4, self.refine4)
        return self.out(x)[:, 0] + self.bias

    @staticmethod
    def _merge(x: torch.Tensor, skip: torch.Tensor, up: nn.Module, lateral: nn.Module, refine: nn.Conv2d) -> torch.Tensor:
        x = F.interpolate(up(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = F.relu(x + lateral(skip))
        return F.relu(refine(x))


class MemNetHeads(nn.Module):
    """Every learned part; the frozen backbone is not among them (it has its own weights)."""

    def __init__(self, config: MemNetConfig, channels: dict[str, int]) -> None:
        super().__init__()
        self.key = _conv(channels["s16"], config.key_dim)
        # Keys are unit vectors and the read's sharpness is learned: raw projections of
        # ImageNet features have norms ~25, which makes the softmax one-hot from the first
        # step (top-1 weight 1.0) and starves the keys of gradient.
        self.log_read_scale = nn.Parameter(torch.tensor(math.log(7.0)))
        self.value = ValueEncoder(channels["s16"], config.mask_dim, config.value_dim)
        self.decoder = Decoder(channels, config.value_dim, config.decoder_dims, config.logit_bias)
        self.fusion = FusionCell(config.key_dim, config.value_dim, config.fusion_hidden, config.fusion_candidate)


class MemoryNetwork(nn.Module):
    """Stateless like every VOS model: per-video state lives in the session's bank."""

    def __init__(self, backbone: EfficientNetLite, config: MemNetConfig = MemNetConfig()) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.heads = MemNetHeads(config, EfficientNetLite.channels)
        self.tuned_blocks: set[int] = set()  # backbone blocks this model has its own weights for
        # What runs the backbone at inference: the module itself, or the same weights on
        # another runtime (models/onnx_trunk.py); training always uses the module.
        self.trunk: Callable[[torch.Tensor], Features] | None = None
        # Likewise the decoder of one frame's objects, (O, Cv, h, w) readout -> (O, H4, W4).
        self.frame_decoder: Callable[[torch.Tensor, Features], torch.Tensor] | None = None

    def with_own_heads(self) -> MemoryNetwork:
        """A copy with its own heads and this model's backbone (for heads trained or loaded
        apart from a model that others share)."""
        return copy.deepcopy(self, memo={id(self.backbone): self.backbone})

    # -- differentiable pieces, batched (training uses these directly) --

    def features(self, images: torch.Tensor) -> Features:
        """Backbone features; gradients reach only the blocks ``unfreeze_top`` opened."""
        if not any(p.requires_grad for p in self.backbone.parameters()):
            with torch.no_grad():
                return self.backbone(images)
        return self.backbone(images)  # frozen early blocks build no graph: nothing needs their grad

    def unfreeze_top(self, blocks: int) -> list[nn.Parameter]:
        """Make the last ``blocks`` backbone blocks trainable, on a private copy of the backbone
        (the registry's is shared by every model in the process). BatchNorm statistics stay
        frozen: the backbone is kept in eval mode. Returns the opened parameters."""
        if blocks <= 0:
            return []
        self.backbone = copy.deepcopy(self.backbone)
        opened = []
        first = len(self.backbone._blocks) - blocks
        for block in self.backbone._blocks[first:]:
            block.requires_grad_(True)
            opened.extend(block.parameters())
        # blocks a loaded model had tuned stay its own, opened or not
        self.tuned_blocks |= set(range(first, len(self.backbone._blocks)))
        return opened

    def load_tuned_blocks(self, state: dict[str, torch.Tensor], blocks: set[int] | None = None) -> None:
        """Fine-tuned backbone blocks from a model file, on a private copy of the backbone.
        Every tensor of every tuned block must be there (``blocks``: the ones the file's
        metadata names; files from before that record: the blocks it holds tensors of, which
        training always takes from the top, 8, 9, 10): a block with tensors missing would
        silently keep its ImageNet weights and give other masks."""
        present = {int(name.split(".")[1]) for name in state if name.startswith("_blocks.")}
        blocks = present if blocks is None else blocks
        if blocks != present:
            raise RuntimeError(f"tuned blocks {sorted(blocks)} recorded, tensors for {sorted(present)} present")
        if blocks and blocks != set(range(min(blocks), len(self.backbone._blocks))):
            raise RuntimeError(f"tuned blocks {sorted(blocks)} are not the top blocks that training opens")
        needed = {n for n in self.backbone.state_dict() if n.startswith("_blocks.") and int(n.split(".")[1]) in blocks}
        missing, unexpected = sorted(needed - set(state)), sorted(set(state) - needed)
        if missing or unexpected:
            raise RuntimeError(
                f"missing tensors, e.g. backbone.{missing[0]}" if missing else f"unexpected tensors, e.g. backbone.{unexpected[0]}"
            )
        self.backbone = copy.deepcopy(self.backbone)
        self.backbone.load_state_dict(state, strict=False)
        self.tuned_blocks = set(blocks)

    def finetuned_state(self) -> dict[str, torch.Tensor]:
        """The backbone tensors that training changed, named as in the backbone."""
        return {
            f"backbone.{n}": t for n, t in self.backbone.state_dict().items()
            if n.startswith("_blocks.") and int(n.split(".")[1]) in self.tuned_blocks
        }

    def keys(self, features: Features) -> torch.Tensor:
        return F.normalize(self.heads.key(features.s16), dim=1)

    def read(self, key: torch.Tensor, slots: Sequence[Slot], objects: int) -> torch.Tensor:
        """(objects, Cv, h, w) read from memory with the learned sharpness."""
        return read_values(key, slots, objects, self.config.topk, self.heads.log_read_scale.exp())

    def values(self, features: Features, masks: torch.Tensor) -> torch.Tensor:
        return self.heads.value(features.s16, masks)

    def decode(self, readout: torch.Tensor, features: Features) -> torch.Tensor:
        """readout (B, O, Cv, h, w) -> logits (B, O, H4, W4)."""
        b, o = readout.shape[:2]
        repeated = Features(*(t.repeat_interleave(o, dim=0) for t in (features.s4, features.s8, features.s16)))
        return self.heads.decoder(readout.flatten(0, 1), repeated).view(b, o, *features.s4.shape[-2:])

    # -- the session's interface (vos/base.py), one frame at a time --

    @torch.inference_mode()
    def encode(self, image: torch.Tensor) -> MemNetFrame:
        features = (self.trunk or self.backbone)(image[None])
        return MemNetFrame(self.keys(features)[0], features)

    @torch.inference_mode()
    def segment(self, frame: MemNetFrame, slots: Sequence[Slot], objects: int) -> torch.Tensor:
        with stage("memory read"):
            readout = self.read(frame.key, slots, objects)  # (O, Cv, h, w)
        with stage("decoder"):
            if self.frame_decoder is not None:
                return torch.sigmoid(self.frame_decoder(readout, frame.features))
            return torch.sigmoid(self.decode(readout[None], frame.features)[0])

    @torch.inference_mode()
    def crop_features(self, crop: torch.Tensor, frame_size: tuple[int, int]) -> Features:
        """Backbone features of a crop (3, h, w) of a frame of ``frame_size``; the crop must
        pad as the frame does (vos/regions/boxes.py)."""
        crop_trunk = getattr(self.trunk, "crop", None)
        return crop_trunk(crop[None], frame_size) if crop_trunk else self.backbone(crop[None])

    @torch.inference_mode()
    def segment_crop(self, key: torch.Tensor, features: Features, slots: Sequence[Slot], objects: int) -> torch.Tensor:
        """``segment`` on part of a frame: its key (Ck, h, w) and features -> (O, h4, w4)."""
        readout = self.read(key, slots, objects)
        crop_decoder = getattr(self.frame_decoder, "crop", None)
        if crop_decoder is not None:
            return torch.sigmoid(crop_decoder(readout, features))
        return torch.sigmoid(self.decode(readout[None], features)[0])

    @torch.inference_mode()
    def memorize(self, frame: MemNetFrame, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return frame.key, self.values(frame.features, probs[None])[0]

    @torch.inference_mode()
    def upsample(self, probs: torch.Tensor, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # straight from the grid to the input's resolution: one pass, not two
        return F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]

    def fusion(self) -> LearnedFusion:
        return LearnedFusion(self.heads.fusion)


class ExtendedMemoryNetwork(nn.Module):
    """A memory network with parts added by a speed-up (reuse heads, sparse gates). Frames that
    run the full network go through ``base`` unchanged; subclasses add the calls for the rest.
    Like every model, it keeps no per-video state."""

    def __init__(self, base: MemoryNetwork) -> None:
        super().__init__()
        self.base = base

    def encode(self, image: torch.Tensor) -> MemNetFrame:
        return self.base.encode(image)

    def segment(self, frame: MemNetFrame, slots: Sequence[Slot], objects: int) -> torch.Tensor:
        return self.base.segment(frame, slots, objects)

    def memorize(self, frame: MemNetFrame, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.memorize(frame, probs)

    def upsample(self, probs: torch.Tensor, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.base.upsample(probs, image, size)

    def fusion(self):
        return self.base.fusion()
