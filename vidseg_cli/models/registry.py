"""What every task's models share: the frozen ImageNet trunk, the runtime that runs it, and
reading a checkpoint's tensors. Each task builds its own models over this (vos/models.py,
semseg/model.py, predict/model.py) from a ``weights.registry.Checkpoint``."""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from vidseg_cli.errors import VidsegError
from vidseg_cli.models.backbone import LITE_REPEATS, EfficientNetLite
from vidseg_cli.options import DEFAULT_VOS_MODEL, RUNTIMES, check_choice
from vidseg_cli.weights.registry import entry, load_state


@functools.cache
def backbone(name: str = "efficientnet-lite0") -> EfficientNetLite:
    """A frozen ImageNet backbone, loaded once per process and shared by all models."""
    if entry(name).arch not in LITE_REPEATS:
        raise VidsegError(f"unsupported backbone {name!r}; choose from {', '.join(LITE_REPEATS)}")
    net = EfficientNetLite(entry(name).arch)
    net.load_imagenet(load_state(name))
    return net.eval().requires_grad_(False)


def with_runtime(model, runtime: str, device: torch.device | str = "cpu"):
    """The same model (shared weights) with its backbone run by ``runtime``: torch, onnx or
    onnx-int8 (ONNX Runtime on the CPU; models/onnx_trunk.py), or auto (``resolve_runtime``).
    Any network with a ``trunk`` slot takes it (the VOS memory network, the semseg network);
    one with a ``frame_decoder`` slot also gets its decoder run there."""
    check_choice("--runtime", runtime, RUNTIMES)
    runtime = resolve_runtime(runtime, model, device)
    if runtime == "torch":
        return model
    if torch.device(device).type != "cpu":
        raise VidsegError(f"--runtime {runtime} runs on the CPU; on {torch.device(device).type} use --runtime torch")
    if not hasattr(model, "trunk"):
        raise VidsegError(f"--runtime {runtime} runs learned memory networks (such as {DEFAULT_VOS_MODEL}), not this model")
    from vidseg_cli.models.onnx_trunk import OnnxDecoder, OnnxTrunk  # onnxruntime is an optional extra

    faster = copy.copy(model)  # shallow: the same backbone and heads
    faster.trunk = OnnxTrunk(model.backbone, int8=runtime == "onnx-int8")
    if hasattr(model, "frame_decoder"):
        faster.frame_decoder = OnnxDecoder(model.heads.decoder)
    return faster


def resolve_runtime(runtime: str, model, device: torch.device | str = "cpu") -> str:
    """``auto``: onnx for a learned network on a CPU where the onnx extra is installed (the
    same masks as torch, faster), torch otherwise. Not onnx-int8: faster still, but it cost
    0.001-0.003 J&F on val-dev (docs/results.md)."""
    if runtime != "auto":
        return runtime
    return learned_runtime(device) if hasattr(model, "trunk") else "torch"


def learned_runtime(device: torch.device | str) -> str:
    """What ``auto`` runs a learned network's backbone with on this device."""
    return "onnx" if torch.device(device).type == "cpu" and onnx_installed() else "torch"


def runtime_of(model) -> str:
    """What runs this model's backbone (the name --runtime gives it)."""
    trunk = getattr(model, "trunk", None)  # training-free propagation has none
    if trunk is None:
        return "torch"
    return "onnx-int8" if trunk.int8 else "onnx"


@functools.cache
def onnx_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript"))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise VidsegError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata() or {}  # noqa: SIM118
    except (OSError, SafetensorError) as error:
        raise VidsegError(f"cannot read {path} as safetensors: {error}") from None


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """``module`` holding exactly ``state``; a file that does not fit is a user error."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise VidsegError(f"{path} does not fit its own config: {str(error).splitlines()[0]}") from None
    return module
