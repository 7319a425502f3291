"""`vidseg bench --task semseg`: mIoU, speed and temporal consistency of semseg configurations.

Accuracy by the CamVid protocol: one confusion matrix over every labelled frame of the
split (void ignored), per-class IoU and their mean, pixel accuracy. Each sequence is
streamed in frame order with a fresh memory, so a frame's memory is the frames of its
sequence before it (in this copy of CamVid, the previous labelled frames). Configurations
are interleaved frame by frame; each model's ``--memory none`` (the single-frame network)
is always in the table.

Temporal consistency (``--consistency DIR``, unlabelled video at its own frame rate): the
mean IoU between frame t's labels and frame t-1's labels warped to t by the optical flow
between the two frames (OpenCV's Farneback; ``pip install "vidseg[flow]"``). A per-frame
segmenter flickers where the memory should hold steady.
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

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import natural_key, open_frames
from vidseg_cli.io.images import is_listed_image
from vidseg_cli.io.sinks import save_palette_png
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
from vidseg_cli.semseg.data import load_labelled, read_label
from vidseg_cli.semseg.job import _bank, class_table, label_frame
from vidseg_cli.semseg.model import SemsegNetwork, create_semseg, processing_size, with_read


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
    confusion: ConfusionMatrix | None = None
    latency: list[float] = field(default_factory=list)  # model seconds per frame
    total_seconds: float = 0.0  # image decode + model + PNG encode
    frames: int = 0
    flops: list[int] = field(default_factory=list)
    bank_bytes: int = 0
    consistency: list[float] = field(default_factory=list)  # per frame pair

    def summary(self) -> dict:
        iou = self.confusion.iou()
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
            "miou": round(float(np.nanmean(iou)), 4),
            "class_iou": {c["name"]: (None if np.isnan(v) else round(float(v), 4)) for c, v in zip(self.classes, iou, strict=True)},
            "pixel_accuracy": round(self.confusion.pixel_accuracy(), 4),
            "fps": round(self.frames / max(self.total_seconds, 1e-9), 2),
            "model_fps": round(len(self.latency) / max(sum(self.latency), 1e-9), 2),
            "latency_ms_median": round(1000 * statistics.median(timed), 1),
            "latency_ms_p90": round(1000 * float(np.percentile(timed, 90)), 1),
            "gflops": round(statistics.mean(self.flops) / 1e9, 2) if self.flops else None,
            "bank_bytes": self.bank_bytes,
            "consistency": round(float(np.mean(self.consistency)), 4) if self.consistency else None,
        }


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
    configs: list[SemsegConfig], data: Path, split: str, device: torch.device, consistency: Path | None, progress
) -> list[SemsegResult]:
    loaded = {model: create_semseg(model, device) for model in {c.model: None for c in configs}}
    networks = {
        (c.model, c.runtime): (with_runtime(loaded[c.model][0], c.runtime, device), loaded[c.model][1]) for c in configs
    }
    results = []
    for config in configs:
        network, metadata = networks[config.model, config.runtime]
        classes = class_table(metadata)
        void = int(metadata.get("void", len(classes)))
        result = SemsegResult(config, classes, void, ConfusionMatrix(len(classes), ignore_index=void))
        results.append(result)
    sequences = load_labelled(data, split)
    for sequence in sequences:
        start = time.perf_counter()
        images = [_decode(frame.image) for frame in sequence.frames]
        decode = (time.perf_counter() - start) / len(images)  # decoded once, charged to every configuration
        truths = [read_label(frame.label, len(results[0].classes), results[0].void) for frame in sequence.frames]
        progress(f"{sequence.name}: {len(images)} frames x {len(results)} configurations")
        _score_sequence(results, networks, images, truths, decode, device)
    if consistency is not None:
        for video in _videos(consistency):
            images = _read_video(video)
            for result in results:
                progress(f"consistency {video.name}: {result.config.label}")
                _consistency(result, networks[result.config.model, result.config.runtime][0], images, device)
    return results


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def _score_sequence(
    results: list[SemsegResult], networks: dict, images: list[np.ndarray], truths: list[np.ndarray], decode: float, device
) -> None:
    """Every configuration streams the sequence with its own memory, interleaved frame by
    frame: a slow spell of the machine (seconds, on a shared 2-core CPU) then lands on every
    configuration alike instead of on whichever one held the sequence, so ratios such as the
    memory's cost hold within a run."""
    streams = []
    for result in results:
        network = with_read(networks[result.config.model, result.config.runtime][0], result.config.read, result.config.radius)
        streams.append((result, network, _bank(result.config.options(Path(".")))))
    for index, (image, truth) in enumerate(zip(images, truths, strict=True)):
        for result, network, bank in streams:
            _score_frame(result, network, bank, image, truth, index, decode, device)


def _score_frame(
    result: SemsegResult, network: SemsegNetwork, bank, image: np.ndarray, truth: np.ndarray, index: int, decode: float, device
) -> None:
    size = result.config.size
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
    result.confusion.update(labels, truth)
    if bank is not None:
        result.bank_bytes = max(result.bank_bytes, bank.nbytes)


def _videos(root: Path) -> list[Path]:
    """Frame folders (DAVIS's JPEGImages/<seq>/ or <seq>/) or video files under ``root``."""
    base = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    entries = sorted((p for p in base.iterdir() if not p.name.startswith(".")), key=natural_key)
    videos = [p for p in entries if p.is_dir() or not is_listed_image(p)]
    if not videos:
        raise VidsegError(f"--consistency {root}: no videos or frame folders")
    return videos


def _read_video(path: Path) -> list[np.ndarray]:
    source = open_frames(path)
    try:
        return [frame.image for frame in source]
    finally:
        source.close()


def _consistency(result: SemsegResult, network: SemsegNetwork, images: list[np.ndarray], device) -> None:
    try:
        import cv2
    except ImportError:
        raise VidsegError('--consistency needs OpenCV for optical flow: pip install "vidseg[flow]"') from None
    config = result.config
    network = with_read(network, config.read, config.radius)
    bank = _bank(config.options(Path(".")))
    previous_grey, previous_labels = None, None
    for index, image in enumerate(images):
        labels = label_frame(network, bank, image, index, config.size, device)
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if previous_grey is not None:
            warped = warp_labels(cv2, previous_labels, previous_grey, grey)
            result.consistency.append(label_agreement(labels, warped, len(result.classes)))
        previous_grey, previous_labels = grey, labels


def warp_labels(cv2, labels: np.ndarray, previous_grey: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Frame t-1's labels carried to frame t: the flow from t to t-1 says where each pixel
    of t was; nearest sampling keeps labels labels."""
    flow = cv2.calcOpticalFlowFarneback(grey, previous_grey, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    h, w = grey.shape
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(labels, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)


def label_agreement(labels: np.ndarray, warped: np.ndarray, classes: int) -> float:
    """Mean IoU over the classes present in either map."""
    confusion = ConfusionMatrix(classes, ignore_index=None)
    confusion.update(labels, warped)
    return float(np.nanmean(confusion.iou()))
