"""Run configurations side by side over a dataset, interleaved per sequence.

Every configuration sees each sequence right after the others did, in one process, so
machine noise hits all of them alike and their ratios stay fair.
"""

from __future__ import annotations

import io
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from vidseg_cli.bench.dataset import Sequence
from vidseg_cli.engine.segment import MemoryOptions, make_bank, peak_rss_bytes, validate_memory
from vidseg_cli.engine.session import VOSSession
from vidseg_cli.io.frames import FolderSource
from vidseg_cli.io.sinks import save_palette_png
from vidseg_cli.metrics.davis import ObjectScore, evaluate_sequence, j_and_f
from vidseg_cli.models.base import VOSModel
from vidseg_cli.models.registry import create_vos_model


@dataclass(frozen=True)
class Config:
    model: str
    size: int
    memory: MemoryOptions

    @property
    def label(self) -> str:
        m = self.memory
        detail = {"stremn": f" K={m.slots} {m.update}", "fifo": f" K={m.slots}", "stm": f" every={m.every}"}
        return f"{self.model} {self.size}p {m.memory}{detail.get(m.memory, '')}"


@dataclass
class Result:
    config: Config
    scores: dict[str, list[ObjectScore]] = field(default_factory=dict)  # per sequence, per object
    step_seconds: list[float] = field(default_factory=list)  # per frame, model only
    frames: int = 0
    total_seconds: float = 0.0  # decode + model + PNG encode
    max_slots: int = 0
    max_memory_bytes: int = 0

    def summary(self) -> dict:
        steps = sorted(self.step_seconds)
        objects = [score for scores in self.scores.values() for score in scores]
        overall = j_and_f(objects)
        return {
            "config": self.config.label,
            "model": self.config.model,
            "size": self.config.size,
            **vars(self.config.memory),
            **{name: round(value, 4) for name, value in overall.items()},
            "J_recall": round(float(np.mean([o.j.recall for o in objects])), 4),
            "J_decay": round(float(np.mean([o.j.decay for o in objects])), 4),
            "F_recall": round(float(np.mean([o.f.recall for o in objects])), 4),
            "F_decay": round(float(np.mean([o.f.decay for o in objects])), 4),
            "fps": round(self.frames / self.total_seconds, 2),
            "model_fps": round(len(steps) / sum(steps), 2),
            "latency_ms_median": round(1000 * statistics.median(steps), 1),
            "latency_ms_p90": round(1000 * steps[int(0.9 * (len(steps) - 1))], 1),
            "max_slots": self.max_slots,
            "max_memory_mb": round(self.max_memory_bytes / 2**20, 2),
            "sequences": {name: _rounded(j_and_f(scores)) for name, scores in self.scores.items()},
        }


def configs(models: list[str], sizes: list[int], memories: list[str], slots: list[int], updates: list[str], every: list[int]) -> list[Config]:
    """The cross product, without duplicates that an option does not affect."""
    seen, out = set(), []
    for model, size, memory, k, rule, n in itertools.product(models, sizes, memories, slots, updates, every):
        options = MemoryOptions(
            memory=memory,
            slots=k if memory in ("stremn", "fifo") else 5,
            update=rule if memory == "stremn" else "C",
            every=n if memory == "stm" else 5,
        )
        config = Config(model, size, options)
        if config not in seen:
            seen.add(config)
            out.append(config)
    return out


def run(sequences: list[Sequence], configs: list[Config], progress: Callable[[str], None] | None = None) -> tuple[list[Result], int]:
    """Returns the results and the peak RSS in bytes."""
    for config in configs:
        validate_memory(config.memory, permanent=max(len(s.prompts) for s in sequences))
    models = {name: create_vos_model(name) for name in {c.model for c in configs}}
    results = [Result(config) for config in configs]
    for sequence in sequences:
        start = time.perf_counter()
        images = [frame.image for frame in FolderSource(sequence.frames)]
        decode = time.perf_counter() - start
        for result in results:
            if progress:
                progress(f"{sequence.name}: {result.config.label}")
            _run_one(result, models[result.config.model], sequence, images, decode)
    return results, peak_rss_bytes()


def _run_one(result: Result, model: VOSModel, sequence: Sequence, images: list[np.ndarray], decode: float) -> None:
    config = result.config
    session = VOSSession(model, make_bank(config.memory), config.size, torch.device("cpu"))
    predictions = []
    encode = 0.0
    for index, image in enumerate(images):
        start = time.perf_counter()
        step = session.step(image, sequence.prompts.get(index))
        middle = time.perf_counter()
        save_palette_png(step.labels, io.BytesIO())
        encode += time.perf_counter() - middle
        result.step_seconds.append(middle - start)
        result.max_slots = max(result.max_slots, step.slots)
        result.max_memory_bytes = max(result.max_memory_bytes, step.memory_bytes)
        predictions.append(step.labels)
    result.frames += len(images)
    result.total_seconds += decode + encode + sum(result.step_seconds[-len(images):])
    per_object = evaluate_sequence(predictions, sequence.truths, sequence.objects)
    result.scores[sequence.name] = list(per_object.values())


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in values.items()}
