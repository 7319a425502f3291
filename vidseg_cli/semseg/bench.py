"""`vidseg bench --task semseg`: mIoU, robustness, temporal consistency and speed of semseg
configurations, side by side in one run.

Accuracy by the CamVid protocol: one confusion matrix over every labelled frame of a split
(void ignored), per-class IoU and their mean, pixel accuracy. Each sequence is streamed in
frame order with a fresh memory, so a frame's memory is the frames of its sequence before
it: in CamVid val the video frames 66 ms before (15 Hz), in train and test the labelled
frames 1 s before. Configurations are interleaved frame by frame; each model's
``--memory none`` (the single-frame network) is always in the table.

What each run measures, per configuration:
- per split (``--split val,test``): mIoU and pixel accuracy, and temporal consistency (the
  split's consecutive frames; meaningful where they are near, as in val);
- ``--corrupt``: each split again with every third frame degraded (``semseg/corrupt.py``,
  seed 0), scored on the degraded frames only: what a memory carries through a bad frame;
- ``--far N``: each split whose labelled frames are nearer than N video frames again, its
  frames dealt into clips of frames N apart (CamVid val at N=30: 15 clips of frames 1 s
  apart, every frame scored once): what a memory costs when what it holds has moved on,
  measured on val, where CamVid test's 1-s neighbours may not be tuned on;
- ``--consistency PATH``: temporal consistency on unlabelled video (a file, a frame folder,
  or a folder of either): ``metrics/consistency.py``, the share of pixels whose class
  agrees with the previous frame's labels moved by optical flow;
- speed on the clean splits: FPS end to end (decode, network, PNG encode), the model's
  latency, GFLOPs, and the memory's cost against the same model without it.
"""

from __future__ import annotations

import io
import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vidseg_cli.io.sinks import save_palette_png
from vidseg_cli.metrics.consistency import TemporalConsistency
from vidseg_cli.metrics.segmentation import ConfusionMatrix
from vidseg_cli.models.registry import with_runtime
from vidseg_cli.options import (
    NO_MEMORY,
    POLICIES,
    RUNTIMES,
    SEMSEG_READS,
    MemoryOptions,
    SemsegOptions,
    check_choice,
)
from vidseg_cli.semseg.corrupt import corrupt_clip
from vidseg_cli.semseg.data import load_labelled, read_label, read_video, unlabelled_videos
from vidseg_cli.semseg.job import _bank, class_table, label_frame
from vidseg_cli.semseg.model import SemsegNetwork, create_semseg, processing_size, with_read

CORRUPTED = "corrupted"  # a split's degraded twin is named "<split> corrupted"
FAR = "far"  # and its frames N apart "<split> far"


@dataclass(frozen=True)
class SemsegConfig:
    model: str
    memory: MemoryOptions
    read: str | None  # None: the model's
    radius: int | None
    size: int
    runtime: str = "torch"

    @property
    def label(self) -> str:
        m = self.memory
        policy = {"stremn": f"stremn K={m.slots} {m.update}", "fifo": f"fifo {m.slots}"}.get(m.memory, m.memory)
        read = "" if m.memory == NO_MEMORY or self.read is None else f" {self.read}"
        radius = f" R={self.radius}" if self.radius is not None and self.read != "global" and m.memory != NO_MEMORY else ""
        runtime = "" if self.runtime == "torch" else f" {self.runtime}"
        return f"{self.model} {self.size}p {policy}{read}{radius}{runtime}"

    def options(self, input_path: Path) -> SemsegOptions:
        return SemsegOptions(
            input=input_path, model=self.model, memory=self.memory, read=self.read, radius=self.radius, size=self.size, runtime=self.runtime
        )


@dataclass
class SemsegResult:
    config: SemsegConfig
    classes: list[dict]
    void: int
    scores: dict[str, ConfusionMatrix] = field(default_factory=dict)  # by source: a split, or "<split> corrupted"
    consistency: dict[str, TemporalConsistency] = field(default_factory=dict)  # by source: a split or a video
    latency: list[float] = field(default_factory=list)  # model seconds per frame
    total_seconds: float = 0.0  # image decode + model + PNG encode
    frames: int = 0
    flops: list[int] = field(default_factory=list)
    bank_bytes: int = 0

    def confusion(self, source: str) -> ConfusionMatrix:
        return self.scores.setdefault(source, ConfusionMatrix(len(self.classes), ignore_index=self.void))

    def summary(self) -> dict:
        first = next(iter(self.scores.values()))
        timed = self.latency or [float("nan")]
        return {
            "config": self.config.label,
            "model": self.config.model,
            "memory": self.config.memory.memory,
            "slots": self.config.memory.slots,
            "read": self.config.read,
            "radius": self.config.radius,
            "size": self.config.size,
            "runtime": self.config.runtime,
            "miou": round(first.miou(), 4),  # the first split's, as plots and CSV rows read it
            "class_iou": _class_iou(first, self.classes),
            "pixel_accuracy": round(first.pixel_accuracy(), 4),
            "scores": {
                source: {"miou": round(m.miou(), 4), "pixel_accuracy": round(m.pixel_accuracy(), 4), "class_iou": _class_iou(m, self.classes)}
                for source, m in self.scores.items()
            },
            "consistency": {source: round(c.score(), 2) for source, c in self.consistency.items() if c.score() is not None},
            "fps": round(self.frames / max(self.total_seconds, 1e-9), 2),
            "model_fps": round(len(self.latency) / max(sum(self.latency), 1e-9), 2),
            "latency_ms_median": round(1000 * statistics.median(timed), 1),
            "latency_ms_p90": round(1000 * float(np.percentile(timed, 90)), 1),
            "gflops": round(statistics.mean(self.flops) / 1e9, 2) if self.flops else None,
            "bank_bytes": self.bank_bytes,
        }


def _class_iou(confusion: ConfusionMatrix, classes: list[dict]) -> dict[str, float | None]:
    return {c["name"]: (None if np.isnan(v) else round(float(v), 4)) for c, v in zip(classes, confusion.iou(), strict=True)}


def memory_cost(summaries: list[dict]) -> None:
    """Each configuration's model latency against its model's ``--memory none`` at the same
    size and runtime, as ``memory_cost`` (0.12: 12% slower), in place."""
    alone = {(s["model"], s["size"], s["runtime"]): s["latency_ms_median"] for s in summaries if s["memory"] == NO_MEMORY}
    for s in summaries:
        base = alone.get((s["model"], s["size"], s["runtime"]))
        s["memory_cost"] = None if not base else round(s["latency_ms_median"] / base - 1, 3)


def semseg_configs(
    models: list[str], memories: list[str], slots: list[int], reads: list[str | None], radii: list[int | None], sizes: list[int | None],
    runtimes: Sequence[str] = ("torch",),
) -> list[SemsegConfig]:
    """Every configuration of the sweep, then the single-frame network beside each model; a
    size None is the model's own (``processing_size``)."""
    for memory in memories:
        check_choice("memory", memory, (*POLICIES, NO_MEMORY))
    for read in reads:
        if read is not None:
            check_choice("read", read, SEMSEG_READS)
    for runtime in runtimes:
        check_choice("runtime", runtime, RUNTIMES)
    out: list[SemsegConfig] = []
    for model, runtime, size, memory, k, read, radius in itertools.product(models, runtimes, sizes, memories, slots, reads, radii):
        size = size or processing_size(model)
        if memory == NO_MEMORY:
            config = SemsegConfig(model, MemoryOptions(NO_MEMORY), None, None, size, runtime)
        else:
            config = SemsegConfig(model, MemoryOptions(memory=memory, slots=k), read, None if read == "global" else radius, size, runtime)
        if config not in out:
            out.append(config)
    for model, runtime, size in itertools.product(models, runtimes, sizes):  # the single-frame network beside each model
        size = size or processing_size(model)
        baseline = SemsegConfig(model, MemoryOptions(NO_MEMORY), None, None, size, runtime)
        if baseline not in out:
            out.append(baseline)
    return out


def run_semseg_bench(
    configs: list[SemsegConfig], data: Path, splits: Sequence[str], device: torch.device, videos: Sequence[Path], corrupt: bool, progress,
    far: int | None = None,
) -> list[SemsegResult]:
    loaded = {model: create_semseg(model, device) for model in {c.model: None for c in configs}}
    networks = {
        (c.model, c.runtime): (with_runtime(loaded[c.model][0], c.runtime, device), loaded[c.model][1]) for c in configs
    }
    results = []
    for config in configs:
        classes = class_table(networks[config.model, config.runtime][1])
        results.append(SemsegResult(config, classes, int(networks[config.model, config.runtime][1].get("void", len(classes)))))
    for split in splits:
        for sequence in load_labelled(data, split):
            start = time.perf_counter()
            images = [_decode(frame.image) for frame in sequence.frames]
            decode = (time.perf_counter() - start) / len(images)  # decoded once, charged to every configuration
            truths = [read_label(frame.label, len(results[0].classes), results[0].void) for frame in sequence.frames]
            progress(f"{split} {sequence.name}: {len(images)} frames x {len(results)} configurations")
            _stream(results, networks, images, device, split, truths=truths, decode=decode)
            if corrupt:
                degraded, kinds = corrupt_clip(images, seed=0)
                progress(f"{split} {sequence.name} corrupted: {len(kinds)} degraded frames")
                _stream(results, networks, degraded, device, f"{split} {CORRUPTED}", truths=truths, scored=set(kinds))
            deal = _far_deal(sequence, far) if far else 1
            for first in range(deal) if deal > 1 else ():  # 1: already that far apart
                picked = range(first, len(images), deal)
                progress(f"{split} {sequence.name} far: clip {first + 1} of {deal}")
                _stream(results, networks, [images[i] for i in picked], device, f"{split} {FAR}",
                        truths=[truths[i] for i in picked], scored=set(range(len(picked))))
    for video in videos:
        images = read_video(video)
        progress(f"consistency {video.name}: {len(images)} frames x {len(results)} configurations")
        _stream(results, networks, images, device, video.stem)
    return results


def _far_deal(sequence, far: int) -> int:
    """Every how many labelled frames a clip takes, for its frames to be ``far`` video
    frames apart (1: already that far)."""
    steps = [b.number - a.number for a, b in itertools.pairwise(sequence.frames)]
    return max(1, round(far / statistics.median(steps))) if steps else 1


def consistency_videos(path: Path | None) -> list[Path]:
    return [] if path is None else unlabelled_videos(path)


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def _stream(
    results: list[SemsegResult], networks: dict, images: list[np.ndarray], device, source: str,
    truths: list[np.ndarray] | None = None, decode: float | None = None, scored: set[int] | None = None,
) -> None:
    """Every configuration streams the clip with its own memory, interleaved frame by frame:
    a slow spell of the machine (seconds, on a shared 2-core CPU) then lands on every
    configuration alike instead of on whichever one held the clip, so ratios such as the
    memory's cost hold within a run. ``truths``: score the frames (those in ``scored``,
    default all); ``decode`` given: time them; consistency is measured on clean clips."""
    streams = []
    for result in results:
        network = with_read(networks[result.config.model, result.config.runtime][0], result.config.read, result.config.radius)
        consistency = result.consistency.setdefault(source, TemporalConsistency()) if scored is None else None
        if consistency is not None:
            consistency.reset()
        streams.append((result, network, _bank(result.config.options(Path("."))), consistency))
    for index, image in enumerate(images):
        for result, network, bank, consistency in streams:
            labels = _label(result, network, bank, image, index, decode, device)
            if truths is not None and (scored is None or index in scored):
                result.confusion(source).update(labels, truths[index])
            if consistency is not None:
                consistency.add(image, labels)


def _label(result: SemsegResult, network: SemsegNetwork, bank, image: np.ndarray, index: int, decode: float | None, device) -> np.ndarray:
    size = result.config.size
    if decode is None:
        return label_frame(network, bank, image, index, size, device)
    if index == 0:  # untimed warm-up: a runtime's first call at a size (ONNX: export, session) is set-up, not speed
        label_frame(network, bank.copy() if bank is not None else None, image, index, size, device)
    if index == 1:  # one frame a sequence with a memory to read: FLOPs
        with FlopCounterMode(display=False) as counter:
            label_frame(network, bank.copy() if bank is not None else None, image, index, size, device)
        result.flops.append(counter.get_total_flops())
    start = time.perf_counter()
    labels = label_frame(network, bank, image, index, size, device)
    middle = time.perf_counter()
    save_palette_png(labels, io.BytesIO())  # what writing a frame costs, as segment's bench
    result.total_seconds += decode + time.perf_counter() - start
    result.latency.append(middle - start)
    result.frames += 1
    if bank is not None:
        result.bank_bytes = max(result.bank_bytes, bank.nbytes)
    return labels
