"""SpVOS's triple sparse convolution: a gate per backbone block and decoder convolution,
and three ways to run each gated layer.

Every gated layer (the backbone's MBConv blocks, the decoder's 3x3 convolutions) has a triple
gate (gates.py) that looks at the layer's input on this frame and on the previous one and
picks a policy per output *tile* (T x T output pixels): SKIP (zeros; a residual block passes
its input through), REUSE (the previous frame's output) or COMPUTE. One decision per tile
instead of per pixel is what makes the saving real on a CPU (tiles.py); the gate reads both
and their absolute difference average-pooled to the tile grid, so it costs next to nothing.
(Eq 7 feeds the gate [F_{t-1}, F_t]; a convolution over those is linear in the change and
cannot tell a large change from a small one of the opposite sign, which is what a reuse
decision needs: the gate reads |F_t - F_{t-1}| instead of F_{t-1}.)

Object-aware gates (``object_aware``, our addition) also read where the objects were on the
last frame: its object probabilities and their dilations by 32 and 96 pixels, max-pooled to
the tile grid. SpVOS finds the decoder's work concentrated near the objects and the query
encoder's sparsity costly everywhere; a gate that knows the distance to the objects can keep
computing around them and reuse the background far away, where a stale feature still reads
as background. Where computed tiles lie together, the rectangle bounding them runs as one
dense crop (tiles.py), far cheaper per pixel than scattered tiles. (Measured: the decoder's
gates do compute a block around the object; the stride-2 blocks' gates still spread their
tiles across the frame; README.) A gated layer runs three ways:

* ``dense``: the plain layer; frames written to memory and the first frame (mixed sparse
  processing), and it records what the next frame's gates compare against;
* ``sparse``: inference, computing only the COMPUTE tiles (``mbconv_tiles``, ``conv_tiles``);
* ``relaxed``: training, the dense layer mixed by Gumbel-softmax one-hot policies with a
  straight-through gradient (eqs 8-9), and the computed share s_k for the sparsity losses.

Layers are keyed by the block index (backbone) or the convolution's name (decoder, which
runs one batch item per object). Per-video state (each gated layer's input and output on
the last frame) lives in a ``LayerState`` that the session owns; the modules here
keep none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.models.backbone import (
    EfficientNetLite,
    Features,
    MBConv,
)
from vidseg_cli.vos.memnet import Decoder
from vidseg_cli.vos.sparse.gates import COMPUTE, REUSE, TripleGate, compose, layer_policies
from vidseg_cli.vos.sparse.tiles import (
    conv_region,
    conv_tiles,
    mbconv_region,
    mbconv_tiles,
    scatter_tiles,
)

SPARSE_ARCH = "sparse-gates"


@dataclass(frozen=True)
class SparseConfig:
    mode: str = "triple"  # static | residual | triple
    tile: int = 8  # output pixels per tile side: one decision per tile
    blocks: tuple[int, ...] = tuple(range(11))  # gated backbone blocks
    decoder: tuple[str, ...] = Decoder.GATED_CONVS  # gated decoder convolutions
    object_aware: bool = False  # gates also read the last frame's object cue (object_cue)
    # REUSE only farther than 32 px from the last frame's objects (needs object_aware): reused
    # features of a moving object are what cost accuracy (README, "which policy costs").
    reuse_far: bool = False
    # Heads of the memory network trained with the gates (TUNABLE_HEADS); the gates file
    # carries them, and they replace the model's own in a sparse session, dense frames included.
    tuned: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> SparseConfig:
        return cls(**{
            **fields, "blocks": tuple(fields["blocks"]), "decoder": tuple(fields.get("decoder", ())), "tuned": tuple(fields.get("tuned", ())),
        })


TUNABLE_HEADS = ("key", "decoder")  # what `vidseg train sparse --tune` may adapt to sparse features
TUNED_PREFIX = "tuned."  # their tensors in a gates file: tuned.decoder.enter.0.weight, ...

Key = int | str  # a backbone block's index or a decoder convolution's name
Layer = MBConv | nn.Conv2d

# The object cue's dilation radii, in stride-4 pixels (32 and 96 pixels of the network's input)
CUE_RADII = (8, 24)
CUES = 1 + len(CUE_RADII)


def observe_objects(config: SparseConfig, state: LayerState, probs: torch.Tensor) -> None:
    """A frame's final object probabilities (O, h4, w4) become the next frame's object cue
    (object-aware gates only)."""
    if config.object_aware:
        state.cue = object_cue(probs.detach())


def object_cue(probs: torch.Tensor) -> torch.Tensor:
    """(O, h4, w4) object probabilities -> (O, CUES, h4, w4): the probabilities and their
    dilations (separable max-pooling: a 49x49 window in one pass costs 25x more)."""
    maps = [probs[:, None]]
    for radius in CUE_RADII:
        width = 2 * radius + 1
        wide = F.max_pool2d(maps[0], (1, width), stride=1, padding=(0, radius))
        maps.append(F.max_pool2d(wide, (width, 1), stride=1, padding=(radius, 0)))
    return torch.cat(maps, dim=1)


@dataclass
class LayerState:
    """What the next frame's gates need: per gated layer, its input and its output."""

    inputs: dict[Key, torch.Tensor] = field(default_factory=dict)
    outputs: dict[Key, torch.Tensor] = field(default_factory=dict)
    cue: torch.Tensor | None = None  # object_cue of the last frame's probabilities (O, CUES, h4, w4)

    def ready(self) -> bool:
        return bool(self.outputs)

    def knows(self, key: Key, output_shape: torch.Size) -> bool:
        """Whether the last frame ran this layer on the same shape (objects can join a video)."""
        return key in self.outputs and self.outputs[key].shape == output_shape


@dataclass
class Shares:
    """Per gated layer, the share of tiles computed (a tensor in training: it has gradients)."""

    computed: dict[Key, torch.Tensor] = field(default_factory=dict)
    policies: dict[Key, torch.Tensor] = field(default_factory=dict)  # inference: codes (B, rows, cols)


def in_channels(layer: Layer) -> int:
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels
    conv = layer._expand_conv if layer.expand else layer._depthwise_conv
    return conv.in_channels


def stride_of(layer: Layer) -> int:
    return (layer if isinstance(layer, nn.Conv2d) else layer._depthwise_conv).stride[0]


def pixel_cost(layer: Layer) -> float:
    """FLOPs (multiply-adds x 2) per output pixel: the c_k of eq 12."""
    if isinstance(layer, nn.Conv2d):
        k = layer.kernel_size[0]
        return 2.0 * k * k * layer.in_channels * layer.out_channels / layer.groups
    conv = layer._depthwise_conv
    mid, kernel, stride = conv.out_channels, conv.kernel_size[0], conv.stride[0]
    expand = stride * stride * in_channels(layer) * mid if layer.expand else 0
    return 2.0 * (expand + kernel * kernel * mid + mid * layer._project_conv.out_channels)


def residual(layer: Layer) -> bool:
    return isinstance(layer, MBConv) and layer.residual


def _layers(config: SparseConfig, backbone: EfficientNetLite, decoder: Decoder) -> dict[Key, Layer]:
    """The gated layers: those where the mode has a choice (static skips residual layers only)."""
    convs = decoder.gated_convs()
    layers = {**{i: backbone._blocks[i] for i in config.blocks}, **{name: convs[name] for name in config.decoder}}
    return {k: layer for k, layer in layers.items() if len(layer_policies(config.mode, residual(layer))) > 1}


class SparseGates(nn.Module):
    """The learned part: one TripleGate per gated layer, on tile-pooled maps."""

    def __init__(self, config: SparseConfig, backbone: EfficientNetLite, decoder: Decoder) -> None:
        super().__init__()
        self.config = config
        layers = _layers(config, backbone, decoder)
        cues = CUES if config.object_aware else 0
        self.gates = nn.ModuleDict(
            {str(k): TripleGate(in_channels(layer), 1, config.mode, residual(layer), cues) for k, layer in layers.items()}
        )
        self.pool = {k: config.tile * stride_of(layer) for k, layer in layers.items()}
        self.pixel_costs = {k: pixel_cost(layer) for k, layer in layers.items()}

    def costs(self, outputs: dict[Key, torch.Tensor]) -> dict[Key, float]:
        """c_k H_k W_k of eq 12 per gated layer (times its batch: objects), from one frame's outputs."""
        return {k: self.pixel_costs[k] * out.shape[0] * out.shape[-2] * out.shape[-1] for k, out in outputs.items() if k in self.pool}

    def pooled(self, key: Key, x: torch.Tensor) -> torch.Tensor:
        """The layer's input averaged over each output tile's footprint."""
        size = self.pool[key]
        return F.avg_pool2d(x, size, size, ceil_mode=True)

    def gate(self, key: Key) -> TripleGate:
        return self.gates[str(key)]

    def scores(self, key: Key, x: torch.Tensor, previous: torch.Tensor, cue: torch.Tensor | None = None) -> torch.Tensor:
        """Policy scores per tile from this frame's input, the last frame's and the last
        frame's object cue (used by object-aware gates; None: no object seen yet)."""
        change = None if self.config.mode == "static" else self.pooled(key, (x - previous).abs())
        current = self.pooled(key, x)
        if not self.config.object_aware:
            return self.gate(key)(current, change)
        grid = self._cue_on_grid(cue, current)
        scores = self.gate(key)(current, change, grid)
        policies = self.gate(key).policies
        if self.config.reuse_far and REUSE in policies:  # no REUSE within 32 px of an object
            near = grid[:, 1:2] > 0.5
            mask = torch.zeros_like(scores, dtype=torch.bool)
            mask[:, policies.index(REUSE) : policies.index(REUSE) + 1] = near
            scores = scores.masked_fill(mask, -1e4)
        return scores

    @staticmethod
    def _cue_on_grid(cue: torch.Tensor | None, pooled: torch.Tensor) -> torch.Tensor:
        """The cue max-pooled to a layer's tile grid, per batch item: per object in the
        decoder (one item per object), over all objects in the backbone (one item)."""
        batch, grid = pooled.shape[0], pooled.shape[-2:]
        if cue is None:
            return pooled.new_zeros(batch, CUES, *grid)
        if cue.shape[0] != batch:
            cue = cue.amax(0, keepdim=True).expand(batch, -1, -1, -1)
        return F.adaptive_max_pool2d(cue, grid)


LayerRunner = Callable[[Key, Layer, torch.Tensor], torch.Tensor]

# What a computed tile costs run as a batch of halo'd tiles, against the same pixels in one
# dense crop (measured: block 0 at 99% of its tiles took 28 ms tiled against 8 ms dense).
# A gated layer runs whichever is cheapest: dense, the bounding rectangle of its computed
# tiles as one crop, or the tiles alone.
TILE_OVERHEAD = 3.0


def run_backbone(backbone: EfficientNetLite, image: torch.Tensor, run: LayerRunner) -> Features:
    """The backbone's forward pass with every block call handed to ``run``."""
    x = backbone.stem(image)
    taps = {}
    for index, block in enumerate(backbone._blocks):
        x = run(index, block, x)
        taps[index + 1] = x
    return Features(*(taps[end].contiguous() for end in (backbone._s4_end, backbone._s8_end, backbone._s16_end)))


def _output_shape(layer: Layer, x: torch.Tensor) -> torch.Size:
    stride = stride_of(layer)
    channels = layer.out_channels if isinstance(layer, nn.Conv2d) else layer._project_conv.out_channels
    return torch.Size((x.shape[0], channels, -(-x.shape[-2] // stride), -(-x.shape[-1] // stride)))


def _skip_value(layer: Layer, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A skipped position: a residual block passes its input through (only residual layers
    may skip; the zeros fill positions no policy chose)."""
    return x if residual(layer) else torch.zeros_like(like)


def _tiles(layer: Layer, x: torch.Tensor, selected: torch.Tensor, tile: int) -> torch.Tensor:
    if isinstance(layer, MBConv):
        return mbconv_tiles(layer, x, selected, tile)
    return conv_tiles(layer, x, selected, tile)


def _region(layer: Layer, x: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    if isinstance(layer, MBConv):
        return mbconv_region(layer, x, rows, cols)
    return conv_region(layer, x, rows, cols)


def bounding_tiles(selected: torch.Tensor) -> tuple[slice, slice]:
    """The rectangle of tiles (rows, cols) bounding every selected tile of every batch item."""
    hit = selected.flatten(0, -3).any(0)
    rows, cols = hit.any(1).nonzero()[:, 0], hit.any(0).nonzero()[:, 0]
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _run_computed(layer: Layer, x: torch.Tensor, y: torch.Tensor, compute: torch.Tensor, share: float, tile: int) -> torch.Tensor:
    """``y`` (the reused and skipped values) with the computed tiles (``share`` of them)
    computed, the cheapest way."""
    rows, cols = bounding_tiles(compute)
    region = (rows.stop - rows.start) * (cols.stop - cols.start) / compute.shape[-1] / compute.shape[-2]
    if min(region, TILE_OVERHEAD * share) >= 1.0:
        return torch.where(_to_pixels(compute, tile, y.shape[-2:])[:, None], layer(x), y)
    if region <= TILE_OVERHEAD * share:
        out_rows = slice(rows.start * tile, min(rows.stop * tile, y.shape[-2]))
        out_cols = slice(cols.start * tile, min(cols.stop * tile, y.shape[-1]))
        window = y[..., out_rows, out_cols]
        inside = _to_pixels(compute[..., rows, cols], tile, window.shape[-2:])[:, None]
        window.copy_(torch.where(inside, _region(layer, x, out_rows, out_cols), window))
        return y
    return scatter_tiles(y, _tiles(layer, x, compute, tile), compute, tile, inplace=True)


def dense_runner(gates: SparseGates, state: LayerState) -> LayerRunner:
    """The plain layers, recording each gated layer's input and output."""

    def run(key: Key, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        y = layer(x)
        if key in gates.pool:
            state.inputs[key], state.outputs[key] = x, y
        return y

    return run


def sparse_runner(gates: SparseGates, state: LayerState, shares: Shares) -> LayerRunner:
    """Inference: each gated layer computes only its COMPUTE tiles. A layer the last frame did
    not run on this shape (a new object) runs dense."""
    tile, dense = gates.config.tile, dense_runner(gates, state)

    def run(key: Key, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        if key not in gates.pool or not state.knows(key, _output_shape(layer, x)):
            return dense(key, layer, x)
        policy = gates.gate(key).decide(gates.scores(key, x, state.inputs[key], state.cue))  # (B, rows, cols) codes
        compute = policy == COMPUTE
        share = compute.float().mean()
        if bool(compute.all()):
            y = layer(x)
        else:
            previous = state.outputs[key]
            reuse = _to_pixels(policy == REUSE, tile, previous.shape[-2:])[:, None]
            y = torch.where(reuse, previous, _skip_value(layer, x, previous))
            if bool(compute.any()):
                y = _run_computed(layer, x, y, compute, float(share), tile)
        state.inputs[key], state.outputs[key] = x, y
        shares.computed[key] = share
        shares.policies[key] = policy
        return y

    return run


def _to_pixels(tiles: torch.Tensor, tile: int, size: torch.Size) -> torch.Tensor:
    """(..., rows, cols) per tile -> (..., H, W) per pixel."""
    return tiles.repeat_interleave(tile, -2).repeat_interleave(tile, -1)[..., : size[0], : size[1]]


def relaxed_runner(gates: SparseGates, state: LayerState, shares: Shares, temperature: float = 1.0) -> LayerRunner:
    """Training: dense layers mixed by sampled one-hot policies (eq 8), differentiable to the gates."""
    tile, dense = gates.config.tile, dense_runner(gates, state)

    def run(key: Key, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        if key not in gates.pool or not state.knows(key, _output_shape(layer, x)):
            return dense(key, layer, x)
        policy = gates.gate(key).one_hot(gates.scores(key, x, state.inputs[key], state.cue), temperature)  # (B, 3, rows, cols)
        computed = layer(x)
        pixels = _to_pixels(policy, tile, computed.shape[-2:])
        skipped = x if residual(layer) else None
        y = compose(pixels, computed, state.outputs[key], skipped)
        state.inputs[key], state.outputs[key] = x, y
        shares.computed[key] = policy[:, COMPUTE].mean()
        return y

    return run
