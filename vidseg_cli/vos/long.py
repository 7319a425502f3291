"""Long-video check: memory and latency against frame index, per configuration.

All sessions step on the same synthetic frame before the next one is made, so the clip
is streamed once (never held whole) and every configuration sees the same machine state.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vidseg_cli.engine.job import make_bank
from vidseg_cli.options import LONG_HEIGHT, LONG_WIDTH
from vidseg_cli.synthetic import frames
from vidseg_cli.vos.bench import Config
from vidseg_cli.vos.models import create_vos_model
from vidseg_cli.vos.segment import fusion_for
from vidseg_cli.vos.session import VOSSession

POINTS = 100  # samples kept per series
# Small frames: stm's cost grows with every slot (10,000 frames -> 2,000 slots), and at
# this size its memory is read as one batched global match, so the run takes minutes.
@dataclass
class Series:
    config: Config
    frame: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    memory_bytes: list[int] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        tenth = max(1, len(self.latency_ms) // 10)
        stride = max(1, len(self.frame) // POINTS)
        return {
            "config": self.config.label,
            "frames": self.frame[-1] + 1,
            "slots_end": self.slots[-1],
            "memory_mb_at_10pct": round(self.memory_bytes[len(self.memory_bytes) // 10] / 2**20, 2),
            "memory_mb_end": round(self.memory_bytes[-1] / 2**20, 2),
            "latency_ms_first_10pct": round(statistics.median(self.latency_ms[:tenth]), 1),
            "latency_ms_last_10pct": round(statistics.median(self.latency_ms[-tenth:]), 1),
            "series": {
                "frame": self.frame[:: stride],
                "slots": self.slots[:: stride],
                "memory_bytes": self.memory_bytes[:: stride],
                # the median of each bin: single frames are noisy on a shared machine
                "latency_ms": [
                    round(statistics.median(self.latency_ms[i : i + stride]), 2)
                    for i in range(0, len(self.latency_ms), stride)
                ],
            },
        }


def long_run(
    configs: list[Config],
    length: int,
    device: torch.device = torch.device("cpu"),
    progress: Callable[[int], None] | None = None,
    height: int = LONG_HEIGHT,
    width: int = LONG_WIDTH,
) -> list[Series]:
    models = {name: create_vos_model(name, device) for name in {c.model for c in configs}}
    sessions = [VOSSession(models[c.model], make_bank(c.memory, fusion_for(models[c.model], c.memory)), c.size, device) for c in configs]
    series = [Series(c) for c in configs]
    for index, (image, truth) in enumerate(frames(length, height, width, objects=2, seed=7)):
        mask = truth if index == 0 else None
        for session, record in zip(sessions, series, strict=True):
            start = time.perf_counter()
            step = session.step(image, mask)
            record.latency_ms.append(1000 * (time.perf_counter() - start))
            record.frame.append(index)
            record.slots.append(step.slots)
            record.memory_bytes.append(step.memory_bytes)
        if progress and index % 50 == 0:
            progress(index)
    return series
