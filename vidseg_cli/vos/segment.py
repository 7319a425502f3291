"""The segment job: frames -> session -> sinks, validated up front, written atomically."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vidseg_cli.engine.job import default_output, make_bank, peak_rss_bytes, pick_device
from vidseg_cli.engine.threads import threads_used, use_all_cores
from vidseg_cli.errors import OutputError, VidsegError, os_error_text
from vidseg_cli.io.frames import Frame, FrameSource, open_frames
from vidseg_cli.io.images import warn
from vidseg_cli.io.masks import MaskFile, MaskReader, parse_mask_args
from vidseg_cli.io.outputs import StagedOutput, check_complete, resolve_output
from vidseg_cli.io.sink import Prediction, Sink
from vidseg_cli.io.sinks import needs_probabilities, open_sinks, write_all
from vidseg_cli.memory.bank import FusionCell
from vidseg_cli.memory.fusion import TrainingFreeFusion
from vidseg_cli.models.registry import runtime_of, with_runtime
from vidseg_cli.options import (
    FUSIONS,
    MemoryOptions,
    ReuseOptions,
    SegmentOptions,
    SparseOptions,
)
from vidseg_cli.vos import checkpoint
from vidseg_cli.vos.base import VOSModel
from vidseg_cli.vos.checks import (
    check_ends,
    check_events_file,
    check_masks,
    check_tta,
    say_renumbered,
    validate_direction,
    validate_memory,
    validate_size,
)
from vidseg_cli.vos.directions import (
    BACKWARD,
    BackwardPass,
    DirectionPlan,
    combine,
    prediction_of,
)
from vidseg_cli.vos.events import EventsOut, EventTracker
from vidseg_cli.vos.memnet import MemoryNetwork
from vidseg_cli.vos.models import create_vos_model
from vidseg_cli.vos.regions.load import load_gates
from vidseg_cli.vos.regions.tracker import LoadedGates, RegionSettings, RegionTracker
from vidseg_cli.vos.session import StepResult, VOSSession

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
    runtime: str = "torch"  # what ran the backbone (--runtime auto chooses)
    peak_cuda_mb: float | None = None
    memory_slots_max: int = 0
    memory_bytes_max: int = 0
    reused_frames: int = 0
    repeated_frames: int = 0  # frames that repeated the last computed one (vos/session.py)
    computed_share: float | None = None  # --sparse: mean share of the frame area computed afresh
    outputs: list[str] = field(default_factory=list)
    renumbered_ids: dict[str, int] = field(default_factory=dict)  # 16-bit mask id -> object id
    steps: int = 0  # frames the model ran on, over both directions
    events: dict[str, dict] | None = None  # per object: frames present, frames lost, where
    threads: dict = field(default_factory=dict)  # what the model ran with (engine/threads.py)


def build_model(model: str, device: torch.device, sparse: SparseOptions = SparseOptions(), runtime: str = "torch") -> VOSModel:
    """The named model; ``runtime`` onnx runs its networks on ONNX Runtime (auto: where it
    can, models/registry.py)."""
    base = create_vos_model(model, device)
    if sparse.enabled and not isinstance(base, MemoryNetwork):
        raise VidsegError(f"--sparse needs a learned memory network; {model!r} is not one")
    return with_runtime(base, runtime, device)


def make_session(
    model: VOSModel,
    memory: MemoryOptions,
    size: int,
    device: torch.device,
    reuse: ReuseOptions = ReuseOptions(),
    sparse: SparseOptions = SparseOptions(),
    tta: str = "none",
    gates: LoadedGates | None = None,
) -> VOSSession:
    """A fresh per-video session: its own bank and, when reusing, running sparse or
    flipping, that state."""
    check_tta(tta, reuse, sparse)
    regions = None
    if reuse.enabled or sparse.enabled:
        mode = sparse.mode if sparse.enabled else "dense"
        regions = RegionTracker(model, RegionSettings(mode, reuse=reuse.tau), gates)
    bank = make_bank(memory, fusion_for(model, memory))
    mirror = make_bank(memory, fusion_for(model, memory)) if tta == "flip" else None
    return VOSSession(model, bank, size, device, regions=regions, write_every=memory.write_every, mirror=mirror)


def segment(
    options: SegmentOptions, progress: Progress | None = None, events: Callable[[dict], None] | None = None
) -> SegmentSummary:
    """Run video object segmentation end to end; raises VidsegError on bad input.
    ``events``: where per-frame event records go when ``options.events`` is ``-``."""
    masks = parse_mask_args(options.masks)
    validate_memory(options.memory, permanent=len(masks))
    check_tta(options.tta, options.reuse, options.sparse)
    validate_direction(options)
    device = pick_device(options.device)
    validate_size(options.size)
    source = open_frames(options.input)
    with contextlib.closing(source):
        reader = MaskReader(source.size, resize=options.resize_mask)
        named = check_masks(masks, reader, source)
        plan = DirectionPlan(options.direction, named, check_ends(options.ends, named, source))
        say_renumbered(reader.renumbered)
        target = options.out or default_output(options.input)
        inputs = [options.input, *(mask.path for mask in masks), *(mask.source for mask in masks)]
        run = checkpoint.fingerprint(options)
        if options.resume:
            check_complete(target, run, inputs)  # a re-run of finished work: nothing to do
        check_events_file(options, resolve_output(target, inputs), inputs)
        staged = StagedOutput(target, force=options.force, inputs=inputs, resume=options.resume, run=run)
        events_out = None
        try:
            events_out = EventsOut(options, inputs, events)
            summary = _run(options, run, source, masks, reader, staged.staging, device, progress, plan, events_out)
            staged.commit()
            events_out.commit()
        except BaseException as error:
            _fail(error, staged, events_out)
    summary.output = str(staged.target)
    summary.renumbered_ids = {str(wide): id_ for wide, id_ in reader.renumbered.items()}
    return summary


def _fail(error: BaseException, staged: StagedOutput, events_out: EventsOut | None) -> None:
    """Remove what a failed run staged, or keep it for ``--resume`` when a checkpoint is
    there and the failure is one a later run can get past (Ctrl-C, SIGTERM, a full disk)."""
    if isinstance(error, checkpoint.Mismatch):  # another run's checkpoint: not ours to remove
        staged.keep()
        raise error
    resumable = checkpoint.exists(staged.staging) and isinstance(error, (KeyboardInterrupt, OutputError))
    if not resumable:
        staged.abort()
        if events_out is not None:
            events_out.abort()
        raise error
    staged.keep()
    if events_out is not None:
        events_out.keep()
    frame = checkpoint.frame_of(staged.staging)
    note = f"the checkpoint at frame {frame} is kept: run the same command with --resume to go on"
    if isinstance(error, OutputError):
        raise OutputError(f"{error}; {note}") from None
    error.note = note
    raise error


class _Stats:
    """What the summary reports of every step, in either pass."""

    def __init__(self, progress: Progress | None, total: int | None) -> None:
        self.progress, self.total = progress, total
        self.steps = 0
        self.slots = self.memory_bytes = self.reused = self.repeated = 0
        self.computed: list[float] = []

    def state(self) -> dict:
        return {name: value for name, value in vars(self).items() if name != "progress"}

    def restore(self, state: dict) -> None:
        vars(self).update(state)

    def __call__(self, result: StepResult) -> None:
        self.steps += 1
        self.slots = max(self.slots, result.slots)
        self.memory_bytes = max(self.memory_bytes, result.memory_bytes)
        self.reused += result.reused
        self.repeated += result.repeated
        self.computed.append(result.computed)
        if self.progress:
            self.progress(self.steps, self.total)


def _run(
    options: SegmentOptions,
    run: str,  # checkpoint.fingerprint(options), computed once: it stats every input
    source: FrameSource,
    masks: list[MaskFile],
    reader: MaskReader,
    folder: Path,
    device: torch.device,
    progress: Progress | None,
    plan: DirectionPlan,
    events: EventsOut,
) -> SegmentSummary:
    use_all_cores(adaptive=True)
    model = build_model(options.model, device, options.sparse, options.runtime)
    gates = load_gates(options.model, options.gates, options.reuse, options.sparse)
    by_frame = {mask.frame: mask.path for mask in masks}
    objects = plan.objects
    # frames fused from both passes, or without an ended object, need per-object probabilities
    soft = needs_probabilities(options.format) or options.events is not None or plan.fuses
    summary = SegmentSummary(input=str(options.input), output="", runtime=runtime_of(model))
    start = time.perf_counter()
    saved = checkpoint.load(folder, run) if options.resume else None
    if options.resume and saved is None:
        warn(f"no checkpoint to resume in {folder.name}: starting from the first frame")
    stats = _Stats(progress, None if source.count is None else source.count + (plan.masked[-1] + 1) * plan.needs_backward)
    backward = BackwardPass(folder / ".cache") if plan.needs_backward else None
    if backward is not None and saved is None:  # frames 0 .. last mask, cached, then walked from the end
        backward.run(_session(model, gates, options, device, soft), source, by_frame, reader, plan, stats)
        source.close()
        source = open_frames(options.input)  # a video decodes forwards only: start again
    tracker = EventTracker(objects, options.event_options) if options.events is not None else None
    session = _session(model, gates, options, device, soft)
    schedule = checkpoint.Schedule(options.checkpoint_every, options.checkpoint_seconds, time.monotonic)
    with contextlib.closing(source), open_sinks(options.format, folder, source.time_base, objects) as sinks:
        if saved is not None:
            _resume(saved, session, tracker, stats, sinks, events, summary)
        for frame in source:
            if frame.index < summary.frames:
                continue  # done before the checkpoint: decoded only
            result = mask = None
            if plan.forward_runs(frame.index):
                mask = reader.read(by_frame[frame.index]) if frame.index in by_frame else None
                result = session.step(frame.image, mask)
                stats(result)
            prediction = _prediction_for(frame, plan.serving(frame.index), result, backward, mask)
            write_all(sinks, frame, prediction)
            if tracker is not None:
                for record in tracker.observe(frame.index, round(float(frame.pts * frame.time_base), 6), prediction):
                    events(record)
            summary.frames += 1
            if schedule.due(summary.frames):
                _checkpoint(folder, run, session, tracker, stats, sinks, events, summary)
                schedule.saved()
    late = [m for m in masks if m.frame >= summary.frames]
    if late:
        raise VidsegError(
            f"mask {late[0].path} is for frame {late[0].frame}, but the video has {summary.frames} frames"
        )
    if tracker is not None:
        for record in tracker.finish():
            events(record)
        summary.events = tracker.summary()
    if backward is not None:
        backward.remove()
    checkpoint.remove(folder)
    _finish(summary, objects, stats, sinks, time.perf_counter() - start, device, options)
    return summary


def _checkpoint(
    folder: Path, run: str, session: VOSSession, tracker: EventTracker | None, stats: _Stats,
    sinks: list[Sink], events: EventsOut, summary: SegmentSummary,
) -> None:
    """Everything needed to go on after frame ``summary.frames - 1``, saved atomically."""
    try:
        state = {
            "fingerprint": run,
            "frames": summary.frames,
            "session": session.state(),
            "tracker": tracker,
            "stats": stats.state(),
            "sinks": [sink.checkpoint() for sink in sinks],
            "events_offset": events.checkpoint(),
        }
        checkpoint.save(folder, state)
    except OSError as error:
        raise OutputError(f"cannot save a checkpoint: {os_error_text(error)}") from None


def _resume(
    saved: dict, session: VOSSession, tracker: EventTracker | None, stats: _Stats, sinks: list[Sink],
    events: EventsOut, summary: SegmentSummary,
) -> None:
    session.restore(saved["session"])
    if tracker is not None and saved["tracker"] is not None:
        vars(tracker).update(vars(saved["tracker"]))
    stats.restore(saved["stats"])
    for sink, state in zip(sinks, saved["sinks"], strict=True):
        sink.resume(state)
    events.resume(saved["events_offset"])
    summary.frames = saved["frames"]


def _session(
    model: VOSModel, gates: LoadedGates | None, options: SegmentOptions, device: torch.device, soft: bool
) -> VOSSession:
    session = make_session(model, options.memory, options.size, device, options.reuse, options.sparse, options.tta, gates)
    session.keep_probabilities = soft
    return session


def _prediction_for(
    frame: Frame, serving: dict[int, str], result: StepResult | None, backward: BackwardPass | None,
    mask: np.ndarray | None,
) -> Prediction:
    """Each object from the pass that serves it on this frame (vos/directions.py)."""
    forward = prediction_of(result) if result is not None else None
    behind = backward.take(frame.index) if backward is not None and BACKWARD in serving.values() else None
    return combine(serving, forward, behind, frame.image.shape[:2], mask)


def _finish(
    summary: SegmentSummary, objects: tuple[int, ...], stats: _Stats, sinks: list[Sink], seconds: float,
    device: torch.device, options: SegmentOptions,
) -> None:
    summary.objects = list(objects)
    summary.steps = stats.steps
    summary.memory_slots_max, summary.memory_bytes_max = stats.slots, stats.memory_bytes
    summary.reused_frames = stats.reused
    summary.repeated_frames = stats.repeated
    if options.sparse.enabled and stats.computed:
        summary.computed_share = round(sum(stats.computed) / len(stats.computed), 4)
    summary.seconds = round(seconds, 3)
    summary.fps = round(summary.frames / seconds, 3) if seconds > 0 else 0.0
    summary.peak_rss_mb = round(peak_rss_bytes() / 2**20, 1)
    if device.type == "cuda":
        summary.peak_cuda_mb = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    summary.outputs = [name for sink in sinks for name in sink.outputs]
    summary.threads = threads_used()
