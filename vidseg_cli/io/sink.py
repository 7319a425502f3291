"""What every output sink is: a frame's prediction, the sink protocol (write, checkpoint,
resume, close), and how label ids are drawn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidseg_cli.io.frames import Frame
from vidseg_cli.io.palette import davis_palette


@dataclass(frozen=True)
class Prediction:
    """What a frame's sinks write: object ids, and (for mattes and confidences) each
    object's probability x 255, channels in the order of ``object_ids``."""

    labels: np.ndarray  # (H, W) uint8
    probabilities: np.ndarray | None = None  # (len(object_ids), H, W) uint8
    object_ids: tuple[int, ...] = ()

    def probability(self, object_id: int) -> np.ndarray:
        """(H, W) uint8; zeros for an object this frame's pass did not know yet."""
        if self.probabilities is None:
            raise ValueError("this prediction was made without probabilities")
        if object_id not in self.object_ids:
            return np.zeros(self.labels.shape, np.uint8)
        return self.probabilities[self.object_ids.index(object_id)]


class Sink:
    def write(self, frame: Frame, prediction: Prediction) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and finish the file."""

    def checkpoint(self) -> dict:
        """Make what is written so far durable; what a resumed run needs to go on."""
        return {}

    def resume(self, state: dict) -> None:
        """Go on from ``checkpoint``'s state (files written since then are rewritten)."""

    def abandon(self) -> None:
        """The run failed: release files without finishing them (a checkpoint may be kept)."""
        self.close()

    @property
    def outputs(self) -> list[str]:
        """Names of what this sink wrote, relative to the output folder."""
        raise NotImplementedError


@dataclass(frozen=True)
class Colours:
    """How label ids are drawn: the palette of the PNGs and overlays, the id an overlay
    leaves uncoloured (segment: 0, the background; semseg: None, every class is drawn),
    and a legend of (name, colour) drawn on the overlay."""

    palette: np.ndarray  # (256, 3) uint8
    background: int | None = 0
    legend: tuple[tuple[str, tuple[int, int, int]], ...] = ()


def object_colours() -> Colours:
    """segment's: the DAVIS palette, index = object id."""
    return Colours(davis_palette())
