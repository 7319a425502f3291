"""What a run is asked to do: option dataclasses, names and bounds, free of heavy imports.

The CLI builds its help and checks its flags from this module alone, so that `vidseg
--help`, `vidseg segment --help` and shell completion start without importing torch; the
engine reads the same dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vidseg_cli.errors import VidsegError

DEFAULT_VOS_MODEL = "vos-effl0-v2"
DEFAULT_PREDICT_MODEL = "predict-mmnist-v2"
DEFAULT_SEMSEG_MODEL = "semseg-camvid"
DEFAULT_SIZE = 360
# Sane bounds, checked before anything is allocated: --size 100000 would ask for a
# 100000-pixel short side. 2160 is the short side of 4K video.
MIN_SIZE, MAX_SIZE = 32, 2160
MAX_SLOTS = 256

POLICIES = ("stremn", "stm", "first-last", "fifo")  # memory update policies
NO_MEMORY = "none"  # predict and semseg: the single-frame network, no memory read
FORMATS = ("png", "video", "overlay", "alpha", "rle", "all")  # segment's
PREDICT_FORMATS = ("png", "video", "all")
SEMSEG_FORMATS = ("png", "video", "overlay", "rle", "all")  # rle: every class's mask
SEMSEG_READS = ("local", "global")
UPDATE_RULES = ("A", "B", "C", "D")  # stremn: which slot a full bank drops
FUSIONS = ("model", "training-free", "none")  # stremn's fusion cell
TTAS = ("none", "flip")
SPARSE_GATE_MODES = ("static", "residual", "triple")
SPARSE_MODES = ("none", *SPARSE_GATE_MODES)
DIRECTIONS = ("forward", "backward", "both")
# What runs the backbone: eager PyTorch, ONNX Runtime on the CPU (float32, or INT8 weights
# and activations), or auto: onnx on a CPU where the onnx extra is installed, else torch
RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")

LONG_HEIGHT, LONG_WIDTH = 64, 96  # bench --long's synthetic clip


@dataclass(frozen=True)
class MemoryOptions:
    memory: str = "stremn"
    slots: int = 5
    update: str = "C"
    every: int = 5
    fusion: str = "model"  # stremn's fusion cell: the model's own, training-free, or none
    write_every: int = 1  # write a frame to memory every N frames (and every masked frame)


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    """One line naming the choices, for a value the CLI's own choice lists did not catch
    (a batch manifest, the Python API)."""
    if value not in choices:
        raise VidsegError(f"unknown {option} {value!r}; choose from {', '.join(choices)}")


@dataclass(frozen=True)
class ReuseOptions:
    tau: float = 1.0  # a frame whose P_gate reaches tau keeps the last result; 1 never reuses

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau <= 1.0:
            raise VidsegError(f"--reuse takes a threshold tau in [0, 1], not {self.tau}")

    @property
    def enabled(self) -> bool:
        return self.tau < 1.0


@dataclass(frozen=True)
class SparseOptions:
    mode: str = "none"

    def __post_init__(self) -> None:
        check_choice("--sparse", self.mode, SPARSE_MODES)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True)
class EventOptions:
    """When an object counts as lost: below ``min_share`` of the frame for ``after`` frames."""

    after: int = 3
    min_share: float = 0.0001


@dataclass(frozen=True, kw_only=True)
class OutputJob:
    """What every job that publishes one output folder takes (segment, semseg, predict)."""

    force: bool = False  # replace an existing output
    resume: bool = False  # an output this very run already published: nothing to do (segment: and its checkpoint)
    device: str = "auto"


@dataclass(frozen=True)
class SegmentOptions(OutputJob):
    input: Path
    masks: list[str]
    out: Path | None = None
    format: str = "png"
    resize_mask: bool = False
    model: str = DEFAULT_VOS_MODEL
    size: int = DEFAULT_SIZE
    memory: MemoryOptions = MemoryOptions()
    reuse: ReuseOptions = ReuseOptions()
    gates: str | None = None  # region gates; default: the weights.toml entry MODEL-gates
    sparse: SparseOptions = SparseOptions()
    tta: str = "none"  # test-time augmentation: none, or flip (the mirrored video too)
    runtime: str = "auto"  # what runs the backbone (RUNTIMES)
    direction: str = "both"  # forward, backward, or both (each object from the nearer mask naming it)
    ends: tuple[str, ...] = ()  # --end ID:FRAME: the object is gone from FRAME on (until a mask names it again)
    events: str | None = None  # JSON lines per frame to FILE, or "-" for stdout
    event_options: EventOptions = EventOptions()
    checkpoint_every: int = 0  # frames between checkpoints (0: by time only)
    checkpoint_seconds: float = 60.0  # seconds between checkpoints (0: by frames only)


@dataclass(frozen=True)
class PredictOptions(OutputJob):
    input: Path
    out: Path | None = None
    context: int = 10  # observed frames, M
    frames: int = 10  # predicted frames, N
    start: int | None = None  # first observed frame; None: the last M frames of INPUT
    model: str = DEFAULT_PREDICT_MODEL
    memory: MemoryOptions = MemoryOptions()  # memory may be NO_MEMORY
    format: str = "all"
    compare: bool = False
    stream: bool = False

    def __post_init__(self) -> None:
        check_choice("--format", self.format, PREDICT_FORMATS)
        check_choice("--memory", self.memory.memory, (*POLICIES, NO_MEMORY))
        if self.context < 3:
            raise VidsegError(f"--context {self.context}: the model sees 3 frames a step, so at least 3")
        if self.frames < 1:
            raise VidsegError(f"--frames {self.frames}: predict at least 1 frame")
        if self.start is not None and self.start < 0:
            raise VidsegError(f"--start {self.start}: frame indices start at 0")
        if self.compare and self.start is None:
            raise VidsegError("--compare needs --start T, so that the true frames after the context are in INPUT")
        if self.stream and (self.compare or self.start is not None or self.out is not None or self.resume):
            raise VidsegError(
                "--stream rolls through the whole video and writes JSON lines: drop --start, --compare, --out and --resume"
            )


@dataclass(frozen=True)
class SemsegOptions(OutputJob):
    input: Path
    out: Path | None = None
    model: str = DEFAULT_SEMSEG_MODEL
    memory: MemoryOptions = MemoryOptions(memory=NO_MEMORY, slots=1)  # as `vidseg semseg`: see its --memory
    read: str | None = None  # local | global; None: the model's own
    radius: int | None = None  # None: the model's own
    size: int | None = None  # processing size (short side); None: the model's (semseg.model.processing_size)
    runtime: str = "auto"  # what runs the backbone (RUNTIMES)
    format: str = "png"

    def __post_init__(self) -> None:
        check_choice("--format", self.format, SEMSEG_FORMATS)
        check_choice("--memory", self.memory.memory, (*POLICIES, NO_MEMORY))
        if self.read is not None:
            check_choice("--read", self.read, SEMSEG_READS)
        if self.radius is not None and not 1 <= self.radius <= 32:
            raise VidsegError(f"--radius {self.radius}: between 1 and 32")
        if self.size is not None and not MIN_SIZE <= self.size <= MAX_SIZE:
            raise VidsegError(f"--size {self.size}: the processing size must be between {MIN_SIZE} and {MAX_SIZE} pixels")
        if not 1 <= self.memory.slots <= MAX_SLOTS:
            raise VidsegError(f"--slots {self.memory.slots}: between 1 and {MAX_SLOTS}")
