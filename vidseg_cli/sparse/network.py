"""SpVOS's triple sparse convolution in the backbone: a gate per MBConv block, three ways to run it.

Every gated block has a triple gate (gates.py) that looks at the block's input on this frame
and on the previous one and picks a policy per output *tile* (T x T output pixels): SKIP
(zeros; a residual block passes its input through), REUSE (the previous frame's output) or
COMPUTE. One decision per tile instead of per pixel is what makes the saving real on a CPU
(tiles.py); the gate reads both inputs average-pooled to the tile grid, so it costs next to
nothing. The same block runs three ways:

* ``dense``: the plain block; frames written to memory and the first frame (mixed sparse
  processing), and it records what the next frame's gates compare against;
* ``sparse``: inference, computing only the COMPUTE tiles (``mbconv_tiles``);
* ``relaxed``: training, the dense block mixed by Gumbel-softmax one-hot policies with a
  straight-through gradient (eqs 8-9), and the computed share s_k for the sparsity losses.

Per-video state (each gated block's pooled input and output on the last frame) lives in a
``LayerState`` that the session owns; the modules here keep none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.models.backbone import (
    PIXEL_MEAN,
    PIXEL_STD,
    EfficientNetLite0,
    Features,
    MBConv,
)
from vidseg_cli.sparse.gates import COMPUTE, REUSE, TripleGate, compose
from vidseg_cli.sparse.tiles import mbconv_tiles, scatter_tiles

SPARSE_ARCH = "sparse-gates"


@dataclass(frozen=True)
class SparseConfig:
    mode: str = "triple"  # static | residual | triple
    tile: int = 8  # output pixels per tile side: one decision per tile
    blocks: tuple[int, ...] = tuple(range(11))  # gated backbone blocks

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> SparseConfig:
        return cls(**{**fields, "blocks": tuple(fields["blocks"])})


@dataclass
class LayerState:
    """What the next frame's gates need: per gated block, its pooled input and its output."""

    pooled: dict[int, torch.Tensor] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)

    def ready(self) -> bool:
        return bool(self.outputs)


@dataclass
class Shares:
    """Per gated block, the share of tiles computed (a tensor in training: it has gradients)."""

    computed: dict[int, torch.Tensor] = field(default_factory=dict)
    policies: dict[int, torch.Tensor] = field(default_factory=dict)  # inference: codes per tile


def in_channels(block: MBConv) -> int:
    conv = block._expand_conv if block.expand else block._depthwise_conv
    return conv.in_channels


def stride_of(block: MBConv) -> int:
    return block._depthwise_conv.stride[0]


def pixel_cost(block: MBConv) -> float:
    """FLOPs (multiply-adds x 2) per output pixel: the c_k of eq 12 for a whole block."""
    conv = block._depthwise_conv
    mid, kernel, stride = conv.out_channels, conv.kernel_size[0], conv.stride[0]
    expand = stride * stride * in_channels(block) * mid if block.expand else 0
    return 2.0 * (expand + kernel * kernel * mid + mid * block._project_conv.out_channels)


class SparseGates(nn.Module):
    """The learned part: one TripleGate per gated block, on tile-pooled inputs."""

    def __init__(self, config: SparseConfig, backbone: EfficientNetLite0) -> None:
        super().__init__()
        self.config = config
        blocks = backbone._blocks
        self.gates = nn.ModuleDict({str(i): TripleGate(in_channels(blocks[i]), 1, config.mode) for i in config.blocks})
        self.pool = {i: config.tile * stride_of(blocks[i]) for i in config.blocks}
        self.pixel_costs = {i: pixel_cost(blocks[i]) for i in config.blocks}

    def costs(self, outputs: dict[int, torch.Tensor]) -> dict[int, float]:
        """c_k H_k W_k of eq 12 per gated block, from the block outputs of one frame."""
        return {i: self.pixel_costs[i] * outputs[i].shape[-2] * outputs[i].shape[-1] for i in self.pool}

    def pooled(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """The block's input averaged over each output tile's footprint."""
        size = self.pool[index]
        return F.avg_pool2d(x, size, size, ceil_mode=True)

    def scores(self, index: int, pooled: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        return self.gates[str(index)](pooled, previous)


BlockRunner = Callable[[int, MBConv, torch.Tensor], torch.Tensor]


def run_backbone(backbone: EfficientNetLite0, image: torch.Tensor, run_block: BlockRunner) -> Features:
    """The backbone's forward pass with every block call handed to ``run_block``."""
    x = (image - PIXEL_MEAN) / PIXEL_STD
    x = F.relu6(backbone._bn0(backbone._conv_stem(x)))
    taps = {}
    for index, block in enumerate(backbone._blocks):
        x = run_block(index, block, x)
        taps[index + 1] = x
    return Features(taps[backbone._s4_end], taps[backbone._s8_end], taps[backbone._s16_end])


def dense_runner(gates: SparseGates, state: LayerState) -> BlockRunner:
    """The plain blocks, recording each gated block's pooled input and output."""

    def run(index: int, block: MBConv, x: torch.Tensor) -> torch.Tensor:
        y = block(x)
        if index in gates.pool:
            state.pooled[index], state.outputs[index] = gates.pooled(index, x), y
        return y

    return run


def sparse_runner(gates: SparseGates, state: LayerState, shares: Shares) -> BlockRunner:
    """Inference: each gated block computes only its COMPUTE tiles (needs a ready state)."""
    tile = gates.config.tile

    def run(index: int, block: MBConv, x: torch.Tensor) -> torch.Tensor:
        if index not in gates.pool:
            return block(x)
        pooled = gates.pooled(index, x)
        gate = gates.gates[str(index)]
        policy = gate.decide(gate(pooled, state.pooled[index]))[0]  # (rows, cols) codes
        compute = policy == COMPUTE
        if bool(compute.all()):
            y = block(x)
        else:
            y = _kept(policy, block, x, state.outputs[index], tile)
            if bool(compute.any()):
                y = scatter_tiles(y, mbconv_tiles(block, x, compute, tile), compute, tile)
        state.pooled[index], state.outputs[index] = pooled, y
        shares.computed[index] = compute.float().mean()
        shares.policies[index] = policy
        return y

    return run


def _kept(policy: torch.Tensor, block: MBConv, x: torch.Tensor, previous: torch.Tensor, tile: int) -> torch.Tensor:
    """The output where nothing is computed: the previous output on REUSE tiles, the skip
    value (the input for a residual block, zeros otherwise) on SKIP tiles."""
    size = previous.shape[-2:]
    reuse = _to_pixels(policy == REUSE, tile, size)
    skipped = x if block.residual else torch.zeros_like(previous)
    return torch.where(reuse, previous, skipped)


def _to_pixels(tiles: torch.Tensor, tile: int, size: torch.Size) -> torch.Tensor:
    """(..., rows, cols) per tile -> (..., H, W) per pixel."""
    return tiles.repeat_interleave(tile, -2).repeat_interleave(tile, -1)[..., : size[0], : size[1]]


def relaxed_runner(gates: SparseGates, state: LayerState, shares: Shares, temperature: float = 1.0) -> BlockRunner:
    """Training: dense blocks mixed by sampled one-hot policies (eq 8), differentiable to the gates."""
    tile = gates.config.tile

    def run(index: int, block: MBConv, x: torch.Tensor) -> torch.Tensor:
        if index not in gates.pool:
            return block(x)
        pooled = gates.pooled(index, x)
        gate = gates.gates[str(index)]
        policy = gate.one_hot(gate(pooled, state.pooled[index]), temperature)  # (B, 3, rows, cols)
        dense = block(x)
        pixels = _to_pixels(policy, tile, dense.shape[-2:])
        y = compose(pixels, dense, state.outputs[index], x if block.residual else None)
        state.pooled[index], state.outputs[index] = pooled, y
        shares.computed[index] = policy[:, COMPUTE].mean()
        return y

    return run
