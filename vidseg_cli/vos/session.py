"""A per-video inference session: steps frame by frame and owns every piece of state.

Models are stateless, so one model serves many sessions. Object ids are the user's
(palette indices); internally objects are channels in order of first appearance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vidseg_cli.engine.profile import stage
from vidseg_cli.engine.threads import adapt
from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.memory.slot import Slot
from vidseg_cli.vos.aggregate import aggregate
from vidseg_cli.vos.base import EncodedFrame, VOSModel
from vidseg_cli.vos.regions.tracker import RegionTracker


@dataclass
class StepResult:
    labels: np.ndarray  # (H, W) uint8 object ids at the input resolution
    slots: int
    memory_bytes: int
    reused: bool = False  # nothing ran: the frame kept the last computed frame's result
    computed: float = 1.0  # the share of the frame computed afresh (region steps: its crop's cells)
    skipped: float = 0.0  # region steps: the share set to background without work
    # with ``keep_probabilities``: (objects, H, W) uint8, each object's probability x 255
    # at the input resolution, channels in the order of ``object_ids``
    probabilities: np.ndarray | None = None
    object_ids: tuple[int, ...] = ()
    repeated: bool = False  # the frame repeated the last computed one: its result was handed on


# A frame none of whose pixels differs from the last computed frame's by more than this (at
# the processing size, grey levels of 255) repeats it: a duplicated or frozen frame (frame-
# rate conversion, a paused screen recording, a still shot encoded losslessly). Its result is
# the last one's and nothing is written to memory: running the network on it would only add
# a slot that says the same as the last, and a model's small error on it, written back and
# read again frame after frame, makes a still mask drift. The largest difference, not the
# mean: a small object moving over a static frame changes few pixels, but by much. A real
# still shot's sensor noise stays above it.
REPEAT_TOLERANCE = 2.0


class VOSSession:
    """Semi-supervised VOS over one video: ``step`` each frame, with a mask where given."""

    def __init__(
        self,
        model: VOSModel,
        bank: MemoryBank,
        size: int,
        device: torch.device,
        regions: RegionTracker | None = None,
        write_every: int = 1,
        mirror: MemoryBank | None = None,
    ) -> None:
        self.model = model
        self.bank = bank
        # Flip test-time augmentation: the mirrored video keeps its own memory, and each
        # frame's prediction averages the two views (both memories learn the averaged mask).
        self.mirror = mirror
        self.size = size
        self.device = device
        self.regions = regions  # region steps and frame reuse (vos/regions/)
        self.write_every = write_every  # memory frames: one every N frames, and every masked frame
        self.object_ids: list[int] = []
        self.frame_index = 0
        self._last_write: int | None = None
        self.keep_probabilities = False  # also return soft masks (mattes, confidences)
        self._last_computed: tuple[torch.Tensor, StepResult] | None = None  # (image, its result)

    def step(
        self, frame: np.ndarray, mask: np.ndarray | None = None, output_size: tuple[int, int] | None = None
    ) -> StepResult:
        """frame: (H, W, 3) uint8 RGB; mask: (H, W) integer ids (0 = background) or None.
        ``output_size``: the input resolution when ``frame`` was already brought to the
        processing size (``processing_image``), as the backward pass caches it."""
        adapt()  # the job's threads follow the cores other processes leave (engine/threads.py)
        height, width = output_size or frame.shape[:2]
        writes = mask is not None or self._memory_frame()
        plan = None
        if self.regions is not None:  # its gates see repeated frames too: no repeat test
            dense = mask is not None or not self.object_ids or not self.bank.slots
            plan = self.regions.plan(frame, self._processing_size(frame), dense)
            if plan.idle:  # nothing changed where it matters: nothing runs, the memory stays
                self.frame_index += 1
                last = self._last_computed[1]
                return dataclasses.replace(last, repeated=False, reused=True, computed=0.0, skipped=plan.skipped_share)
        with stage("resize"):
            image = self._preprocess(frame)
        if plan is None and mask is None and self._repeats(image, (height, width)):
            self.frame_index += 1
            return dataclasses.replace(self._last_computed[1], repeated=True, reused=False)
        if plan is not None:
            with stage("trunk"):
                encoded = self.regions.encode(image, plan)
            probs = self._predict(encoded, lambda frame, slots, objects: self.regions.segment(frame, plan, slots, objects))
        else:
            with stage("trunk"):
                encoded = self.model.encode(image)
            probs = self._predict(encoded)
            if self.mirror is not None:
                with stage("trunk"):
                    mirrored = self.model.encode(image.flip(-1))
                probs = (probs + self._predict(mirrored, bank=self.mirror).flip(-1)) / 2
        if mask is not None:
            probs = self._apply_mask(probs, mask, encoded.grid)
        if plan is not None:
            self.regions.observe(plan, encoded, probs, tuple(image.shape[-2:]))
        probs = aggregate(probs)  # (1 + objects, h, w), background first
        if writes:
            with stage("memory write"):
                self._remember(encoded, probs[1:], self.bank, permanent=mask is not None)
                if self.mirror is not None:
                    self._remember(mirrored, probs[1:].flip(-1), self.mirror, permanent=mask is not None)
        computed, skipped = (plan.computed_share, plan.skipped_share) if plan is not None else (1.0, 0.0)
        result = self._result(probs, image, (height, width), mask, computed=computed, skipped=skipped)
        self._last_computed = (image, result)
        return result

    def _memory_frame(self) -> bool:
        return self._last_write is None or self.frame_index - self._last_write >= self.write_every

    def _repeats(self, image: torch.Tensor, size: tuple[int, int]) -> bool:
        if self._last_computed is None or not self.object_ids:
            return False
        last, result = self._last_computed
        if last.shape != image.shape or result.labels.shape != size:
            return False
        return (image - last).abs().max().item() <= REPEAT_TOLERANCE

    def _result(
        self,
        probs: torch.Tensor,
        image: torch.Tensor,
        size: tuple[int, int],
        mask: np.ndarray | None,
        computed: float = 1.0,
        skipped: float = 0.0,
    ) -> StepResult:
        with stage("upsample"):
            full = self.model.upsample(probs, image, size)
            labels = self._labels(full, mask)
        self.frame_index += 1
        memory_bytes = self.bank.nbytes + (self.mirror.nbytes if self.mirror is not None else 0)
        soft = _soft(full, labels, self.object_ids, mask) if self.keep_probabilities else None
        return StepResult(
            labels=labels, slots=len(self.bank), memory_bytes=memory_bytes, computed=computed, skipped=skipped,
            probabilities=soft, object_ids=tuple(self.object_ids),
        )

    def state(self) -> dict:
        """Everything a resumed run needs to go on exactly where this one stopped: objects,
        frame counters, the memory (and the mirror's) and the region tracker's per-video state. Not the model: a resumed run builds it again from the same name."""
        return {
            "object_ids": list(self.object_ids),
            "frame_index": self.frame_index,
            "last_write": self._last_write,
            "bank": list(self.bank.slots),
            "mirror": list(self.mirror.slots) if self.mirror is not None else None,
            "regions": _tracker_state(self.regions),
            "last_computed": self._last_computed,
        }

    def restore(self, state: dict) -> None:
        self.object_ids = list(state["object_ids"])
        self.frame_index, self._last_write = state["frame_index"], state["last_write"]
        self._last_computed = state.get("last_computed")  # checkpoints from before it have none
        # replace() gives each slot a new uid: the bank caches similarities by uid, and the
        # counter that numbered the saved slots belonged to another process
        self.bank.slots = [dataclasses.replace(slot) for slot in state["bank"]]
        if self.mirror is not None:
            self.mirror.slots = [dataclasses.replace(slot) for slot in state["mirror"]]
        if self.regions is not None and state.get("regions") is not None:
            vars(self.regions).update(state["regions"])

    def processing_image(self, frame: np.ndarray) -> np.ndarray:
        """The frame at the processing size, (h, w, 3) uint8: what a cache keeps."""
        image = self._preprocess(frame).round().clamp(0, 255).to(torch.uint8)
        return image.permute(1, 2, 0).cpu().numpy()

    def _preprocess(self, frame: np.ndarray) -> torch.Tensor:
        # float32, not torch's faster uint8 resize: its rounding to whole grey levels cost
        # 0.0017 J&F on val-dev (0.8193 -> 0.8176)
        image = torch.from_numpy(frame).to(self.device).permute(2, 0, 1).float()
        target = self._processing_size(frame)
        if target != tuple(image.shape[-2:]):
            scale = self.size / min(frame.shape[:2])
            image = F.interpolate(image[None], size=target, mode="bilinear", antialias=scale < 1, align_corners=False)[0]
        return image

    def _processing_size(self, frame: np.ndarray) -> tuple[int, int]:
        """(h, w): the frame scaled to a short side of ``size`` (within 0.1%: as it is)."""
        h, w = frame.shape[:2]
        scale = self.size / min(h, w)
        if abs(scale - 1) <= 1e-3:
            return h, w
        return max(1, round(h * scale)), max(1, round(w * scale))

    def _predict(self, encoded: EncodedFrame, segment=None, bank: MemoryBank | None = None) -> torch.Tensor:
        bank = self.bank if bank is None else bank  # an empty bank is falsy
        if not bank.slots or not self.object_ids:
            return encoded.key.new_zeros(len(self.object_ids), *encoded.grid)
        return (segment or self.model.segment)(encoded, bank.slots, len(self.object_ids))

    def _apply_mask(self, probs: torch.Tensor, mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """Objects in the mask take its shape; others keep their prediction outside it."""
        ids = [int(i) for i in np.unique(mask) if i != 0]
        for object_id in ids:
            if object_id not in self.object_ids:
                self.object_ids.append(object_id)
        probs = F.pad(probs, (0, 0, 0, 0, 0, len(self.object_ids) - probs.shape[0]))
        labels = torch.from_numpy(mask.astype(np.int64)).to(probs.device)
        given = torch.stack([(labels == i).float() for i in ids])
        given = F.interpolate(given[None], size=grid, mode="area")[0]  # coverage per grid cell
        probs = probs * (1 - given.sum(0, keepdim=True).clamp(max=1))
        for row, object_id in enumerate(ids):
            probs[self.object_ids.index(object_id)] = given[row]
        return probs

    def _remember(self, encoded: EncodedFrame, probs: torch.Tensor, bank: MemoryBank, permanent: bool) -> None:
        if not self.object_ids:
            return  # nothing to propagate yet: frames before the first mask are not stored
        k, v = self.model.memorize(encoded, probs)
        bank.write(Slot(key=k, value=v, frame=self.frame_index, permanent=permanent))
        self._last_write = self.frame_index

    def _labels(self, full: torch.Tensor, mask: np.ndarray | None) -> np.ndarray:
        """Object ids from probabilities at the input resolution."""
        index = argmax_channels(full).cpu().numpy()
        lut = np.array([0, *self.object_ids], dtype=np.uint8)
        labels = lut[index]
        return labels if mask is None else keep_given_pixels(labels, mask)


def _tracker_state(tracker: RegionTracker | None) -> dict | None:
    """The region tracker's per-video fields (its model, settings and gates come anew)."""
    if tracker is None:
        return None
    return {name: value for name, value in vars(tracker).items() if name not in ("model", "settings", "gates")}


def keep_given_pixels(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A user mask is exact at full resolution: its pixels keep their ids, and the objects it
    names appear nowhere else; objects it does not name keep their labels outside it."""
    labels = np.where(mask > 0, mask, np.where(np.isin(labels, np.unique(mask)), 0, labels))
    return labels.astype(np.uint8)


def certain_where_given(soft: np.ndarray, labels: np.ndarray, object_ids: Sequence[int], mask: np.ndarray) -> np.ndarray:
    """On a frame with a user mask, its own pixels are certain: 255 for its object, 0 for the others."""
    given = mask > 0
    for row, object_id in enumerate(object_ids):
        soft[row][given] = np.where(labels[given] == object_id, 255, 0)
    return soft


def _soft(full: torch.Tensor, labels: np.ndarray, object_ids: list[int], mask: np.ndarray | None) -> np.ndarray:
    """(objects, H, W) uint8 probabilities x 255, certain where a user mask gives the pixel."""
    soft = (full[1:].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return soft if mask is None else certain_where_given(soft, labels, object_ids, mask)


def argmax_channels(probs: torch.Tensor) -> torch.Tensor:
    """argmax over dim 0 by pairwise comparison: torch's strided argmax over a few
    channels of a large image is ~20x slower on a CPU."""
    best, index = probs[0], torch.zeros(probs.shape[1:], dtype=torch.long, device=probs.device)
    for channel in range(1, probs.shape[0]):
        better = probs[channel] > best
        best = torch.where(better, probs[channel], best)
        index[better] = channel
    return index
