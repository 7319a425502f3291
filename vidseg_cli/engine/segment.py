"""The segment job: frames -> session -> sinks, validated up front, written atomically."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vidseg_cli.engine.reuse import ReuseTracker
from vidseg_cli.engine.session import VOSSession
from vidseg_cli.engine.sparse import SparseTracker
from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import FrameSource, open_frames
from vidseg_cli.io.images import warn
from vidseg_cli.io.masks import MaskFile, MaskReader, parse_mask_args
from vidseg_cli.io.outputs import StagedOutput
from vidseg_cli.io.sinks import Sink, open_sinks, write_all
from vidseg_cli.memory.bank import FusionCell, MemoryBank
from vidseg_cli.memory.fusion import TrainingFreeFusion
from vidseg_cli.memory.policies import make_policy
from vidseg_cli.models.base import VOSModel
from vidseg_cli.options import (  # noqa: F401 - re-exported
    DEFAULT_SIZE,
    FUSIONS,
    MAX_SIZE,
    MAX_SLOTS,
    MIN_SIZE,
    TTAS,
    MemoryOptions,
    ReuseOptions,
    SegmentOptions,
    SparseOptions,
)
from vidseg_cli.models.registry import (
    create_reuse_model,
    create_sparse_model,
    create_vos_model,
)

Progress = Callable[[int, int | None], None]


def fusion_for(model: VOSModel, options: MemoryOptions) -> FusionCell | None:
    """The cell that distills dropped slots: ``model.fusion()`` unless the options say otherwise."""
    if options.fusion == "model":
        return model.fusion()
    if options.fusion == "training-free":
        return TrainingFreeFusion()  # both models' keys are unit vectors
    if options.fusion == "none":
        return None
    raise VidsegError(f"unknown fusion {options.fusion!r}; choose from {', '.join(FUSIONS)}")


@dataclass
class SegmentSummary:
    input: str
    output: str
    frames: int = 0
    objects: list[int] = field(default_factory=list)
    seconds: float = 0.0
    fps: float = 0.0
    peak_rss_mb: float = 0.0
    peak_cuda_mb: float | None = None
    memory_slots_max: int = 0
    memory_bytes_max: int = 0
    reused_frames: int = 0
    computed_share: float | None = None  # SpVOS: mean share of the gated backbone work computed
    outputs: list[str] = field(default_factory=list)
    renumbered_ids: dict[str, int] = field(default_factory=dict)  # 16-bit mask id -> object id


def default_output(input_path: Path) -> Path:
    """``clip.mp4`` -> ``clip_masks/`` beside it; ``frames/`` -> ``frames_masks/``, also
    when the folder is given as ``.`` (its resolved name)."""
    resolved = input_path.resolve()
    name = resolved.name if resolved.is_dir() else resolved.stem
    return resolved.parent / f"{name}_masks"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VidsegError("--device cuda: no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise VidsegError("--device mps: no MPS device is available")
    if name not in ("cpu", "cuda", "mps"):
        raise VidsegError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)


def use_all_cores() -> None:
    """PyTorch defaults to physical cores; use every core this process may run on, and keep
    large freed buffers for reuse (``keep_freed_buffers``)."""
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    keep_freed_buffers()


def keep_freed_buffers() -> None:
    """Stop glibc from returning large blocks to the kernel on every free.

    Above its mmap threshold (128 KiB, adapting up to 32 MiB) glibc maps each allocation
    afresh and unmaps it on free, so large activation maps are page-faulted in again frame
    after frame; in a VM a fault can cost more than the convolution that fills the page.
    PyTorch's CPU allocator has no cache of its own, so the heap is the cache. Measured here:
    a 25-frame loop of encode + segment at 360p, 90-115 ms per frame against 73-77 ms; over
    DAVIS val-dev, where glibc's own threshold adapts after a while, 10.02 against 10.55 FPS
    and a p90 latency of 115 against 98 ms (README)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return  # not glibc (musl): nothing to tune
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed threshold
    mallopt(m_trim_threshold, 1 << 30)


def make_bank(options: MemoryOptions, fusion: FusionCell | None = None) -> MemoryBank:
    """A bank for one video; ``fusion`` is the model's cell (``model.fusion()``)."""
    try:
        policy = make_policy(options.memory, options.slots, options.update, options.every)
    except ValueError as error:
        raise VidsegError(str(error)) from None
    return MemoryBank(policy=policy, fusion=fusion)


def build_model(
    model: str,
    device: torch.device,
    reuse: ReuseOptions,
    heads: str | None = None,
    sparse: SparseOptions = SparseOptions(),
    gates: str | None = None,
) -> VOSModel:
    """The named model, with its Reuse-VOS heads when the gate can reuse (tau < 1) or its
    SpVOS gates when it runs sparse."""
    if reuse.enabled and sparse.enabled:
        raise VidsegError("--reuse and --sparse cannot be combined: pick one way to skip work")
    if reuse.enabled:
        return create_reuse_model(model, heads or f"{model}-reuse", device)
    if sparse.enabled:
        return create_sparse_model(model, sparse_gates_name(model, sparse.mode, gates), sparse.mode, device)
    return create_vos_model(model, device)


def sparse_gates_name(model: str, mode: str, gates: str | None) -> str:
    """--sparse-gates NAME|FILE, where {mode} stands for the mode; default MODEL-MODE."""
    return (gates or f"{model}-{{mode}}").replace("{mode}", mode)


def make_session(
    model: VOSModel,
    memory: MemoryOptions,
    size: int,
    device: torch.device,
    reuse: ReuseOptions,
    sparse: SparseOptions = SparseOptions(),
    tta: str = "none",
) -> VOSSession:
    """A fresh per-video session: its own bank and, when reusing, running sparse or
    flipping, that state."""
    check_tta(tta, reuse, sparse)
    reusing = ReuseTracker(model, reuse) if reuse.enabled else None
    sparsing = SparseTracker(model) if sparse.enabled else None
    bank = make_bank(memory, fusion_for(model, memory))
    mirror = make_bank(memory, fusion_for(model, memory)) if tta == "flip" else None
    return VOSSession(
        model, bank, size, device, reuse=reusing, sparse=sparsing, write_every=memory.write_every, mirror=mirror
    )


def check_tta(tta: str, reuse: ReuseOptions, sparse: SparseOptions) -> None:
    if tta not in TTAS:
        raise VidsegError(f"unknown --tta {tta!r}; choose from {', '.join(TTAS)}")
    if tta != "none" and (reuse.enabled or sparse.enabled):
        raise VidsegError("--tta flip cannot be combined with --reuse or --sparse: they skip work, it doubles it")


def validate_memory(options: MemoryOptions, permanent: int) -> None:
    if options.update not in ("A", "B", "C", "D"):
        raise VidsegError(f"unknown --update {options.update!r}; choose A, B, C or D")
    if options.slots < 1 or options.every < 1 or options.write_every < 1:
        raise VidsegError("--slots, --every and --write-every must be at least 1")
    if options.slots > MAX_SLOTS:
        raise VidsegError(f"--slots {options.slots}: at most {MAX_SLOTS} memory slots")
    if options.memory == "stremn" and options.slots < permanent + 1:
        raise VidsegError(
            f"--slots {options.slots} leaves no room: {permanent} mask frame(s) are kept permanently, "
            f"so stremn needs at least {permanent + 1} slots"
        )


def validate_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise VidsegError(f"--size {size}: the processing size must be between {MIN_SIZE} and {MAX_SIZE} pixels")


def segment(options: SegmentOptions, progress: Progress | None = None) -> SegmentSummary:
    """Run video object segmentation end to end; raises VidsegError on bad input."""
    masks = parse_mask_args(options.masks)
    validate_memory(options.memory, permanent=len(masks))
    check_tta(options.tta, options.reuse, options.sparse)
    device = pick_device(options.device)
    validate_size(options.size)
    source = open_frames(options.input)
    with contextlib.closing(source):
        reader = MaskReader(source.size, resize=options.resize_mask)
        _check_masks(masks, reader, source)
        _say_renumbered(reader.renumbered)
        target = options.out or default_output(options.input)
        inputs = [options.input, *(mask.path for mask in masks), *(mask.source for mask in masks)]
        staged = StagedOutput(target, force=options.force, inputs=inputs)
        try:
            summary = _run(options, source, masks, reader, staged.staging, device, progress)
            staged.commit()
        except BaseException:
            staged.abort()
            raise
    summary.output = str(staged.target)
    summary.renumbered_ids = {str(wide): id_ for wide, id_ in reader.renumbered.items()}
    return summary


def _say_renumbered(renumbered: dict[int, int]) -> None:
    if renumbered:
        pairs = ", ".join(f"{wide} -> {id_}" for wide, id_ in renumbered.items())
        warn(f"16-bit mask ids above 255 renumbered (the outputs use the new ids): {pairs}")


def _check_masks(masks: list[MaskFile], reader: MaskReader, source: FrameSource) -> None:
    """Fail before any work: unreadable, empty, wrongly sized or out-of-range masks."""
    for mask in masks:
        if source.count is not None and mask.frame >= source.count:
            raise VidsegError(
                f"mask {mask.path} is for frame {mask.frame}, but the video has {source.count} frames"
            )
        reader.read(mask.path)


def _run(
    options: SegmentOptions,
    source: FrameSource,
    masks: list[MaskFile],
    reader: MaskReader,
    folder: Path,
    device: torch.device,
    progress: Progress | None,
) -> SegmentSummary:
    use_all_cores()
    model = build_model(options.model, device, options.reuse, options.reuse_heads, options.sparse, options.sparse_gates)
    session = make_session(model, options.memory, options.size, device, options.reuse, options.sparse, options.tta)
    computed = []
    by_frame = {mask.frame: mask.path for mask in masks}
    summary = SegmentSummary(input=str(options.input), output="")
    start = time.perf_counter()
    with open_sinks(options.format, folder, source.time_base) as sinks:
        for frame in source:
            mask = reader.read(by_frame[frame.index]) if frame.index in by_frame else None
            result = session.step(frame.image, mask)
            write_all(sinks, frame, result.labels)
            summary.frames += 1
            summary.memory_slots_max = max(summary.memory_slots_max, result.slots)
            summary.memory_bytes_max = max(summary.memory_bytes_max, result.memory_bytes)
            summary.reused_frames += result.reused
            computed.append(result.computed)
            if progress:
                progress(summary.frames, source.count)
    late = [m for m in masks if m.frame >= summary.frames]
    if late:
        raise VidsegError(
            f"mask {late[0].path} is for frame {late[0].frame}, but the video has {summary.frames} frames"
        )
    _finish(summary, session, sinks, time.perf_counter() - start, device)
    if options.sparse.enabled and computed:
        summary.computed_share = round(sum(computed) / len(computed), 4)
    return summary


def _finish(summary: SegmentSummary, session: VOSSession, sinks: list[Sink], seconds: float, device: torch.device) -> None:
    summary.objects = list(session.object_ids)
    summary.seconds = round(seconds, 3)
    summary.fps = round(summary.frames / seconds, 3) if seconds > 0 else 0.0
    summary.peak_rss_mb = round(peak_rss_bytes() / 2**20, 1)
    if device.type == "cuda":
        summary.peak_cuda_mb = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    summary.outputs = [name for sink in sinks for name in sink.outputs]


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
