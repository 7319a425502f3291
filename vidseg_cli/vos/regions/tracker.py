"""Region steps: compute only the part of a frame that changed, on dense kernels.

SpVOS gates every layer per 8x8 tile. On a CPU, gathering tiles costs about three times
more per pixel than a dense convolution, and the layers a gate cannot skip (the stem, the
memory read, the decoder) stay. So the decision here is made once per frame, on the
stride-16 grid, before any network runs:

- each cell is *computed* (fresh output), *reused* (the last output it computed) or
  *skipped* (background, no work), by the mode and the change test (change.py);
- a frame with no computed cell runs nothing: its result is the last one, and the memory
  is not written;
- otherwise the backbone runs on one crop around the computed cells, with a halo for its
  receptive field, is pasted into the last frame's feature maps, the memory is read for the
  crop's cells only and the decoder runs on the crop.

Modes, as in SpVOS (skip = no work, reuse = previous output, compute = fresh):
``static`` computes near the objects and skips the rest (it looks at the current frame
only); ``residual`` computes where the frame changed and reuses the rest; ``triple``
computes where it changed near the objects, reuses where it did not, and skips far from them;
``dense`` computes every frame whole (what ``--reuse`` alone runs).

"Changed" is the learned cell gate's verdict where gates are loaded (gate.py), else the
change test against a fixed threshold. With a reuse threshold below 1, the frame gate may
first decide that the whole frame keeps the last output: nothing runs (Reuse-VOS's reuse).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vidseg_cli.memory.slot import Slot
from vidseg_cli.models.backbone import Features
from vidseg_cli.vos.memnet import MemNetFrame, MemoryNetwork
from vidseg_cli.vos.regions.boxes import Box, bounding_box, cells_of, dilate
from vidseg_cli.vos.regions.change import frame_gain, per_cell, residual, thumbnail
from vidseg_cli.vos.regions.gate import RegionGates, cell_features, frame_features


@dataclass(frozen=True)
class RegionSettings:
    mode: str = "triple"
    threshold: float = 8.0  # grey levels: without gates, a cell whose change test exceeds it changed
    near: int = 3  # cells: how far from the last frame's objects counts as near them
    halo: int = 2  # cells of context the decoder gets around its output, and the backbone around that
    most: float = 0.6  # a crop larger than this share of the frame runs the whole frame
    reuse: float = 1.0  # the frame gate's tau: a frame whose P_gate reaches it runs nothing; 1: never
    look_every: int = 8  # frames: how often the gates also look where the frame changed far from the objects


@dataclass(frozen=True)
class LoadedGates:
    """A gates file's heads and the settings it was trained with."""

    gates: RegionGates
    threshold: float  # the cell gate's P(compute) above which a cell computes, on a frame that runs
    trigger: float  # the P(compute) some cell must pass for the frame to run at all
    near: int


@dataclass
class Plan:
    thumb: torch.Tensor  # (3, h4, w4) this frame's thumbnail, divided by its gain
    cells: int  # of the frame's stride-16 grid
    box: Box | None = None  # the cells computed fresh; None: none (with ``dense``: all)
    skip: torch.Tensor | None = None  # (h16, w16) bool: cells whose output is background
    dense: bool = False
    context: Box | None = None  # the box and the decoder's halo: where the memory is read
    crop: Box | None = None  # the context and the backbone's halo: where the backbone runs

    @property
    def idle(self) -> bool:
        return self.box is None and not self.dense

    @property
    def computed_share(self) -> float:
        if self.dense:
            return 1.0
        return self.box.cells / self.cells if self.box is not None else 0.0

    @property
    def skipped_share(self) -> float:
        return float(self.skip.float().mean()) if self.skip is not None and not self.dense else 0.0


class RegionTracker:
    """Per video: the last feature maps, outputs and per-cell references region steps use."""

    def __init__(self, model: MemoryNetwork, settings: RegionSettings, gates: LoadedGates | None = None) -> None:
        self.model, self.settings = model, settings
        self.features: Features | None = None  # the last computed maps, batch of one
        self.probs: torch.Tensor | None = None  # (O, h4, w4) the last output, before aggregation
        # (3, h4, w4) each cell's thumbnail when last computed, divided by that frame's gain
        # relative to the first frame (change.py)
        self.reference: torch.Tensor | None = None
        self.size: tuple[int, int] | None = None
        self.age: torch.Tensor | None = None  # (h16, w16) frames since each cell was computed
        self.steps = 0  # frames planned
        self.gates = gates

    @torch.inference_mode()
    def plan(self, frame: np.ndarray, size: tuple[int, int], dense: bool) -> Plan:
        """What this frame (decoded, (H, W, 3) uint8; processed at ``size``) computes:
        ``dense`` (a user mask, a first frame) runs everything."""
        thumb = thumbnail(frame, size)
        grid = cells_of(size)
        cells = grid[0] * grid[1]
        if self.reference is None or self.reference.shape != thumb.shape:
            return Plan(thumb, cells, dense=True)
        gain = frame_gain(thumb, self.reference)
        if dense or self.features is None or self.probs is None or not self.probs.shape[0]:
            return Plan(thumb / gain, cells, dense=True)
        self.age += 1
        self.steps += 1
        # Skipping far from the objects alone would never find an object again that left
        # the frame, or was occluded, and comes back elsewhere: while one is lost, and every
        # few frames anyway, the gates look where the frame changed far from them too.
        looking = self._lost_object() or self.steps % self.settings.look_every == 0
        changed, near = self._changed(residual(thumb, self.reference, gain), grid, looking)
        if changed is None:  # the frame gate reuses the whole frame
            return Plan(thumb / gain, cells)
        mode = self.settings.mode
        if mode == "dense":
            return Plan(thumb / gain, cells, dense=True)
        if looking:
            near = near | changed
        compute = {"static": near, "residual": changed, "triple": changed & near}[mode]
        skip = ~near if mode in ("static", "triple") else None
        box = bounding_box(compute)
        if box is None:
            return Plan(thumb / gain, cells, skip=skip)
        box = box.aligned(size)
        if box.cells > self.settings.most * cells:
            return Plan(thumb / gain, cells, skip=skip, dense=True)
        context = box.grown(self.settings.halo, grid).aligned(size)
        crop = context.grown(self.settings.halo, grid).aligned(size)
        return Plan(thumb / gain, cells, box, skip, context=context, crop=crop)

    @torch.inference_mode()
    def encode(self, image: torch.Tensor, plan: Plan) -> MemNetFrame:
        """The frame's features: the backbone on a crop around ``plan.box``, pasted into the
        last maps (or on the whole frame, for a dense plan)."""
        if plan.dense:
            return self.model.encode(image)
        size, context, crop = tuple(image.shape[-2:]), plan.context, plan.crop
        rows, cols = crop.pixels(1, size)
        fresh = self.model.crop_features(image[:, rows, cols], size)
        crop_size = (rows.stop - rows.start, cols.stop - cols.start)
        for stride, old, new in zip((4, 8, 16), _maps(self.features), _maps(fresh), strict=True):
            inner = context.inside(crop).pixels(stride, crop_size)
            old[0, :, *context.pixels(stride, size)] = new[0, :, *inner]
        return MemNetFrame(self.model.keys(self.features)[0], self.features)

    @torch.inference_mode()
    def segment(self, frame: MemNetFrame, plan: Plan, slots: Sequence[Slot], objects: int) -> torch.Tensor:
        """(O, h4, w4): fresh in the box (read and decoded with the halo around it), the
        last output where reused, 0 where skipped."""
        if plan.dense:
            return self.model.segment(frame, slots, objects)
        size, context = self.size, plan.context
        key = frame.key[:, *context.pixels(16, size)]
        features = Features(*(m[..., *context.pixels(s, size)] for s, m in zip((4, 8, 16), _maps(frame.features), strict=True)))
        fresh = self.model.segment_crop(key, features, slots, objects)
        probs = self.probs.clone()
        probs[:, *plan.box.pixels(4, size)] = fresh[:, *plan.box.inside(context).pixels(4, context.size(size))]
        if plan.skip is not None:
            probs = probs * ~_to_grid(plan.skip, probs.shape[-2:])
        return probs

    @torch.inference_mode()
    def observe(self, plan: Plan, frame: MemNetFrame, probs: torch.Tensor, size: tuple[int, int]) -> None:
        """Keep what the next frame compares with: the maps, the output (O, h4, w4) and,
        for the cells computed, this frame's thumbnail."""
        self.features, self.probs, self.size = frame.features, probs, size
        if plan.dense:
            self.reference = plan.thumb
            self.age = torch.zeros(cells_of(size), dtype=torch.long)
        else:
            cells = plan.box.pixels(4, size)
            self.reference[:, *cells] = plan.thumb[:, *cells]
            self.age[plan.box.pixels(16, size)] = 0

    def _changed(
        self, difference: torch.Tensor, grid: tuple[int, int], looking: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(h16, w16) bool maps of the cells that changed (None: the frame gate reuses the
        whole frame) and of those near the last output's objects. ``looking``: the frame
        gate watches every cell, not only those near the objects."""
        if self.gates is None:
            near = dilate(self._object_cells(grid), self.settings.near)
            return per_cell(difference, "max", grid) > self.settings.threshold, near
        features, near = cell_features(difference, self.probs, self.age, grid, self.gates.near)
        gate = torch.sigmoid(self.gates.gates.cell_logits(features[None]))[0]
        if self.settings.reuse < 1:
            watched = torch.ones_like(near) if looking else near
            summary = frame_features(gate, features, watched, self.gates.threshold)
            if float(torch.sigmoid(self.gates.gates.frame_logits(summary[None]))[0]) >= self.settings.reuse:
                return None, near
        # Hysteresis: a frame runs when some cell surely changed, and then computes every cell
        # that may have. One low threshold alone lets noise start a crop on a still frame
        # (and a crop is a strip of whole columns at 360p); one high threshold alone leaves
        # stale the edges that moved a little (-1.3 J&F on DAVIS val-dev at 0.5).
        if not bool((gate > self.gates.trigger).any()):
            return torch.zeros_like(near), near
        return gate > self.gates.threshold, near

    def _lost_object(self) -> bool:
        """Whether some object holds no pixel of the last output."""
        return bool((self.probs.flatten(1).amax(1) <= 0.5).any())

    def _object_cells(self, grid: tuple[int, int]) -> torch.Tensor:
        """(h16, w16) bool: cells where the last output holds an object."""
        return per_cell(self.probs.amax(0), "max", grid) > 0.5


def _maps(features: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return features.s4, features.s8, features.s16


def _to_grid(cells: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A (h16, w16) map on the stride-4 grid of ``shape``."""
    return cells.repeat_interleave(4, 0).repeat_interleave(4, 1)[: shape[0], : shape[1]]
