"""Run configurations side by side over a dataset, interleaved per sequence.

Every configuration sees each sequence right after the others did, in one process, so
machine noise hits all of them alike and their ratios stay fair.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vidseg_cli.engine.job import peak_rss_bytes
from vidseg_cli.engine.profile import Profile, recording, stage
from vidseg_cli.io.frames import FolderSource
from vidseg_cli.io.sinks import save_palette_png
from vidseg_cli.metrics.davis import ObjectScore, evaluate_sequence, j_and_f
from vidseg_cli.models.registry import runtime_of
from vidseg_cli.options import MemoryOptions, ReuseOptions, SparseOptions
from vidseg_cli.vos.base import VOSModel
from vidseg_cli.vos.checks import check_tta, validate_memory, validate_size
from vidseg_cli.vos.davis import Sequence
from vidseg_cli.vos.regions.load import load_gates
from vidseg_cli.vos.regions.tracker import LoadedGates
from vidseg_cli.vos.segment import build_model, make_session


@dataclass(frozen=True)
class Config:
    model: str
    size: int
    memory: MemoryOptions
    reuse: ReuseOptions = ReuseOptions()
    gates: str | None = None  # region gates for --reuse and --sparse (default: MODEL-gates; NO_GATES: none)
    sparse: SparseOptions = SparseOptions()
    tta: str = "none"
    runtime: str = "torch"

    @property
    def label(self) -> str:
        m = self.memory
        detail = {"stremn": f" K={m.slots} {m.update}", "fifo": f" K={m.slots}", "stm": f" every={m.every}"}
        fusion = f" fusion={m.fusion}" if m.fusion != "model" else ""
        reuse = f" reuse={self.reuse.tau:g}" if self.reuse.enabled else ""
        gates = f" gates={Path(self.gates).stem}" if self.gates is not None else ""
        writes = f" write/{m.write_every}" if m.write_every != 1 else ""
        sparse = f" sparse={self.sparse.mode}" if self.sparse.enabled else ""
        tta = f" tta={self.tta}" if self.tta != "none" else ""
        runtime = f" {self.runtime}" if self.runtime != "torch" else ""
        return f"{self.model} {self.size}p {m.memory}{detail.get(m.memory, '')}{fusion}{writes}{reuse}{sparse}{gates}{tta}{runtime}"

    @property
    def network(self) -> tuple[str, str, bool]:
        """Which model object runs it: the model on its runtime (region steps and reuse run
        the model itself)."""
        return self.model, self.runtime, self.sparse.enabled

    def build(self, device: torch.device) -> VOSModel:
        return build_model(self.model, device, self.sparse, self.runtime)

    def load_gates(self) -> LoadedGates | None:
        return load_gates(self.model, self.gates, self.reuse, self.sparse)


# FLOPs are counted on every FLOP_EVERY-th frame (from the FLOP_OFFSET-th), under a
# dispatch mode that slows the step down; those frames are left out of the timings.
# FLOP_EVERY is prime to the memory-write intervals, so counted frames mix memory frames
# (dense under --sparse) and the others in their true proportion.
FLOP_EVERY, FLOP_OFFSET = 7, 1


@dataclass
class Result:
    config: Config
    scores: dict[str, list[ObjectScore]] = field(default_factory=dict)  # per sequence, per object
    memory: dict[str, list[int]] = field(default_factory=dict)  # per sequence, bank bytes per frame
    step_seconds: list[float] = field(default_factory=list)  # per timed frame, model only
    flops: list[int] = field(default_factory=list)  # per counted frame
    frames: int = 0  # timed frames
    total_seconds: float = 0.0  # of timed frames: decode + model + PNG encode
    max_slots: int = 0
    max_memory_bytes: int = 0
    peak_cuda_bytes: int | None = None
    reused_frames: int = 0  # that ran nothing, over every frame of every sequence, counted or timed
    reused_seconds: list[float] = field(default_factory=list)  # per timed reused frame: decode + step + PNG
    computed: list[float] = field(default_factory=list)  # per frame: share of the frame computed afresh
    skipped: list[float] = field(default_factory=list)  # per frame: share set to background without work
    all_frames: int = 0
    profile: Profile | None = None  # per-stage time of the timed frames (--profile)

    @property
    def objects(self) -> list[ObjectScore]:
        """Every object's scores, over all sequences."""
        return [score for scores in self.scores.values() for score in scores]

    def summary(self) -> dict:
        steps = sorted(self.step_seconds)
        objects = self.objects
        overall = j_and_f(objects)
        return {
            "config": self.config.label,
            "model": self.config.model,
            "size": self.config.size,
            **vars(self.config.memory),
            "reuse": self.config.reuse.tau,
            "reuse_rate": round(self.reused_frames / max(1, self.all_frames), 4),
            "sparse": self.config.sparse.mode,
            "tta": self.config.tta,
            "runtime": self.config.runtime,
            "computed_share": round(float(np.mean(self.computed)), 4) if self.computed else 1.0,
            "skipped_share": round(float(np.mean(self.skipped)), 4) if self.skipped else 0.0,
            **{name: round(value, 4) for name, value in overall.items()},
            "J_recall": round(float(np.mean([o.j.recall for o in objects])), 4),
            "J_decay": round(float(np.mean([o.j.decay for o in objects])), 4),
            "F_recall": round(float(np.mean([o.f.recall for o in objects])), 4),
            "F_decay": round(float(np.mean([o.f.decay for o in objects])), 4),
            "fps": round(self.frames / self.total_seconds, 2),
            # end to end, decode and PNG encode included: the mean frame, and the median reused one
            "frame_ms": round(1000 * self.total_seconds / self.frames, 1),
            "reused_frame_ms": round(1000 * statistics.median(self.reused_seconds), 1) if self.reused_seconds else None,
            "model_fps": round(len(steps) / sum(steps), 2),
            "latency_ms_median": round(1000 * statistics.median(steps), 1),
            "latency_ms_p90": round(1000 * steps[int(0.9 * (len(steps) - 1))], 1),
            "gflops": round(statistics.mean(self.flops) / 1e9, 2) if self.flops else None,
            "max_slots": self.max_slots,
            "max_memory_mb": round(self.max_memory_bytes / 2**20, 2),
            "peak_cuda_mb": None if self.peak_cuda_bytes is None else round(self.peak_cuda_bytes / 2**20, 1),
            "sequences": {
                name: {**_rounded(j_and_f(scores)), "memory_bytes": self.memory[name]}
                for name, scores in self.scores.items()
            },
            **({"profile": self.profile.summary()} if self.profile is not None else {}),
        }


def configs(
    models: list[str],
    sizes: list[int],
    memories: list[str],
    slots: list[int],
    updates: list[str],
    every: list[int],
    fusions: tuple[str, ...] = ("model",),
    reuses: tuple[float, ...] = (1.0,),
    gates: tuple[str | None, ...] = (None,),
    sparses: tuple[str, ...] = ("none",),
    write_everies: tuple[int, ...] = (1,),
    ttas: tuple[str, ...] = ("none",),
    runtimes: tuple[str, ...] = ("torch",),
) -> list[Config]:
    """The cross product, without duplicates that an option does not affect. Memory is
    written every ``write_everies`` frames (default: every frame)."""
    seen, out = set(), []
    grid = itertools.product(models, sizes, memories, slots, updates, every, fusions, reuses, sparses, gates, ttas, runtimes, write_everies)
    for model, size, memory, k, rule, n, fusion, tau, sparse, gate, tta, runtime, write_every in grid:
        options = MemoryOptions(
            memory=memory,
            slots=k if memory in ("stremn", "fifo") else 5,
            update=rule if memory == "stremn" else "C",
            every=n if memory == "stm" else 5,
            fusion=fusion if memory == "stremn" else "model",
            write_every=write_every,
        )
        reuse, sparsing = ReuseOptions(tau), SparseOptions(sparse)
        config = Config(model, size, options, reuse, gate if reuse.enabled or sparsing.enabled else None, sparsing, tta, runtime)
        if config not in seen:
            seen.add(config)
            out.append(config)
    return out


def run(
    sequences: list[Sequence],
    configs: list[Config],
    device: torch.device = torch.device("cpu"),
    progress: Callable[[str], None] | None = None,
    profile: bool = False,
) -> tuple[list[Result], int]:
    """Returns the results and the peak RSS in bytes; with ``profile`` each result's
    timed frames are broken down by stage (``engine/profile.py``)."""
    for config in configs:
        validate_size(config.size)
        validate_memory(config.memory, permanent=max(len(s.prompts) for s in sequences))
        check_tta(config.tta, config.reuse, config.sparse)
    models = {}
    for config in configs:
        if config.network not in models:
            models[config.network] = config.build(device)
    configs = _resolved(configs, models)
    gates = {config: config.load_gates() for config in configs}
    results = [Result(config, profile=Profile() if profile else None) for config in configs]
    for sequence in sequences:
        start = time.perf_counter()
        images = [frame.image for frame in FolderSource(sequence.frames)]
        decode_per_frame = (time.perf_counter() - start) / len(images)
        for result in results:
            if progress:
                progress(f"{sequence.name}: {result.config.label}")
            network = models[result.config.network], gates[result.config]
            _run_one(result, network, sequence, images, decode_per_frame, device, warm_up=True)
    return results, peak_rss_bytes()


def _resolved(configs: list[Config], models: dict) -> list[Config]:
    """Configurations with ``--runtime auto`` named by what it chose (their models listed
    under that name too), without the duplicates that makes."""
    out = []
    for config in configs:
        model = models[config.network]
        config = dataclasses.replace(config, runtime=runtime_of(model))
        models.setdefault(config.network, model)
        if config not in out:
            out.append(config)
    return out


def evaluate(model: VOSModel, sequences: list[Sequence], config: Config, device: torch.device) -> dict[str, float]:
    """J&F, J and F of one model over a dataset (training's validation)."""
    result = Result(config)
    for sequence in sequences:
        images = [frame.image for frame in FolderSource(sequence.frames)]
        _run_one(result, (model, None), sequence, images, 0.0, device)
    return _rounded(j_and_f(result.objects))


def _run_one(
    result: Result, network: tuple[VOSModel, LoadedGates | None], sequence: Sequence, images: list[np.ndarray],
    decode: float, device: torch.device, warm_up: bool = False,
) -> None:
    config = result.config
    model, gates = network
    if warm_up:  # untimed: a runtime's first call at a size (ONNX: export, session) is set-up, not speed
        warm = make_session(model, config.memory, config.size, device, config.reuse, config.sparse, config.tta, gates)
        for index, image in enumerate(images[:2]):
            warm.step(image, sequence.prompts.get(index))
    session = make_session(model, config.memory, config.size, device, config.reuse, config.sparse, config.tta, gates)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    predictions, memory = [], []
    for index, image in enumerate(images):
        mask = sequence.prompts.get(index)
        if index % FLOP_EVERY == FLOP_OFFSET:
            counter = FlopCounterMode(display=False)
            with counter:
                step = session.step(image, mask)
            result.flops.append(counter.get_total_flops())
        else:
            with recording(result.profile):
                start = time.perf_counter()
                step = session.step(image, mask)  # returns host labels, so the device has finished
                middle = time.perf_counter()
                with stage("encode"):
                    save_palette_png(step.labels, io.BytesIO())
                end = time.perf_counter()
            if result.profile is not None:
                result.profile.add("decode", decode)  # the sequence's mean: frames are decoded up front
                result.profile.end_frame(decode + end - start)
            result.step_seconds.append(middle - start)
            result.total_seconds += decode + end - start
            if step.reused:
                result.reused_seconds.append(decode + end - start)
            result.frames += 1
        result.max_slots = max(result.max_slots, step.slots)
        result.reused_frames += step.reused
        result.computed.append(step.computed)
        result.skipped.append(step.skipped)
        result.all_frames += 1
        result.max_memory_bytes = max(result.max_memory_bytes, step.memory_bytes)
        memory.append(step.memory_bytes)
        predictions.append(step.labels)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        result.peak_cuda_bytes = max(result.peak_cuda_bytes or 0, peak)
    paired = [predictions[index] for index in sequence.annotated]  # by frame index, never by position
    per_object = evaluate_sequence(paired, sequence.truths, sequence.objects)
    result.scores[sequence.name] = list(per_object.values())
    result.memory[sequence.name] = memory


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in values.items()}
