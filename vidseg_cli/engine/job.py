"""What every task's job needs, whatever it segments or predicts: the device, the default
output folder, a memory bank from the memory options, and the peak memory it reports."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

from vidseg_cli.errors import VidsegError
from vidseg_cli.memory.bank import FusionCell, MemoryBank
from vidseg_cli.memory.policies import make_policy
from vidseg_cli.options import MemoryOptions


def default_output(input_path: Path, suffix: str = "masks") -> Path:
    """``clip.mp4`` -> ``clip_masks/`` beside it; ``frames/`` -> ``frames_masks/``, also
    when the folder is given as ``.`` (its resolved name). Other tasks name their own suffix."""
    resolved = input_path.resolve()
    name = resolved.name if resolved.is_dir() else resolved.stem
    return resolved.parent / f"{name}_{suffix}"


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


def make_bank(options: MemoryOptions, fusion: FusionCell | None = None) -> MemoryBank:
    """A bank for one video; ``fusion`` is the model's cell (``model.fusion()``)."""
    try:
        policy = make_policy(options.memory, options.slots, options.update, options.every)
    except ValueError as error:
        raise VidsegError(str(error)) from None
    return MemoryBank(policy=policy, fusion=fusion)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
