"""The STReMN video predictor (section 4.2) on the shared memory engine.

Step t sees the stack (I_{t-3}, I_{t-2}, I_{t-1}); an encoder of 6 blocks (two 3x3
convolutions, GroupNorm, LeakyReLU) turns it into features, a key (unit vectors) and a
value; the key reads the session's MemoryBank (the same bank, policies and learned fusion
cell as segment, with one "object": the scene), and a decoder of 6 blocks of two
(stride-1 transposed, i.e. plain) convolutions turns features and readout into I_t. Predicted frames are fed
back as inputs for the frames after the observed ones.

Sizing for a 2-core CPU: the frames are folded into 4x4 patches first (space to depth,
64x64x1 -> 16x16x16, as PredRNN and OpenSTL run Moving MNIST), so every layer runs at
16x16. The decoder predicts a change of I_{t-1}'s logit, so an untrained model already
copies the last frame, the baseline to beat, instead of drawing a grey blur.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.memory.bank import MemoryBank, Slot
from vidseg_cli.memory.readout import read_values
from vidseg_cli.models.fusion_cell import FusionCell, LearnedFusion

ARCH = "predict-stremn"
STACK = 3  # frames per input step


@dataclass(frozen=True)
class PredictorConfig:
    channels: int = 1  # 1 grey, 3 colour
    patch: int = 4  # space-to-depth factor
    width: int = 64  # feature channels of every block
    key_dim: int = 32
    value_dim: int = 64
    blocks: int = 6
    topk: int = 0  # memory pixels each query reads; 0 = all
    fusion_hidden: int = 32

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PredictorConfig:
        return cls(**json.loads(text))


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with GroupNorm and LeakyReLU. The decoder's "deconvolution"
    blocks are the same: at stride 1 a transposed convolution is a convolution with a
    flipped kernel, and PyTorch runs ConvTranspose2d on a slow path on the CPU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.LeakyReLU(0.2, inplace=True),
    )


class Predictor(nn.Module):
    """Stateless: the memory lives in a ``MemoryBank`` the caller owns (one per video)."""

    def __init__(self, config: PredictorConfig = PredictorConfig()) -> None:
        super().__init__()
        self.config = config
        folded = config.channels * config.patch**2
        widths = [STACK * folded] + [config.width] * config.blocks
        self.encoder = nn.Sequential(*(_block(a, b) for a, b in zip(widths, widths[1:])))
        self.key = nn.Conv2d(config.width, config.key_dim, 1)
        self.value = nn.Conv2d(config.width, config.value_dim, 3, padding=1)
        decoder_widths = [config.width + config.value_dim] + [config.width] * config.blocks
        self.decoder = nn.Sequential(*(_block(a, b) for a, b in zip(decoder_widths, decoder_widths[1:])))
        self.out = nn.Conv2d(config.width, folded, 1)
        nn.init.zeros_(self.out.weight)  # starts as copy-last (see the module docstring)
        nn.init.zeros_(self.out.bias)
        self.log_read_scale = nn.Parameter(torch.tensor(float(config.key_dim) ** 0.5).log())
        self.fusion_cell = FusionCell(config.key_dim, config.value_dim, config.fusion_hidden)

    def fusion(self) -> LearnedFusion:
        return LearnedFusion(self.fusion_cell)

    def step(self, frames: torch.Tensor, bank: MemoryBank, frame: int) -> torch.Tensor:
        """frames: (3, C, H, W) in [0, 1], I_{t-3} .. I_{t-1}; returns I_t (C, H, W) and
        writes this step's key and value into ``bank``."""
        folded = F.pixel_unshuffle(frames, self.config.patch).flatten(0, 1)[None]  # (1, 3 C p^2, h, w)
        features = self.encoder(folded)
        key = F.normalize(self.key(features), dim=1)[0]  # (Ck, h, w)
        value = self.value(features)  # (1, Cv, h, w): one "object", the scene
        if bank.slots:
            readout = read_values(key, bank.slots, 1, self.config.topk, self.log_read_scale.exp())  # (1, Cv, h, w)
        else:
            readout = torch.zeros_like(value)
        change = self.out(self.decoder(torch.cat([features, readout], dim=1)))
        last = frames[-1].clamp(1e-3, 1 - 1e-3)
        logit = F.pixel_unshuffle(torch.logit(last)[None], self.config.patch) + change
        bank.write(Slot(key=key, value=value, frame=frame))
        return torch.sigmoid(F.pixel_shuffle(logit, self.config.patch))[0]

    def rollout(self, observed: torch.Tensor, future: int, bank: MemoryBank) -> torch.Tensor:
        """observed: (M, C, H, W), M >= 3. Returns the predictions of frames 3 .. M+N-1
        (M + N - 3, C, H, W): through the observed frames each step sees true frames (and
        fills the memory); after them the model's own predictions are fed back."""
        frames = list(observed)
        predictions = []
        for t in range(STACK, len(observed) + future):
            predicted = self.step(torch.stack(frames[t - STACK : t]), bank, t)
            if t >= len(observed):
                frames.append(predicted)
            predictions.append(predicted)
        return torch.stack(predictions)
