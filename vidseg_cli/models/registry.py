"""Public model registry: ``create_vos_model(name)`` over the private model modules."""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from vidseg_cli.errors import VidsegError
from vidseg_cli.models.backbone import LITE_REPEATS, EfficientNetLite
from vidseg_cli.options import DEFAULT_VOS_MODEL, RUNTIMES  # noqa: F401 - re-exported
from vidseg_cli.vos.base import VOSModel
from vidseg_cli.vos.memnet import ARCH, MemNetConfig, MemoryNetwork
from vidseg_cli.vos.propagate import PropagateConfig, PropagationModel
from vidseg_cli.vos.reuse.heads import REUSE_ARCH, ReuseConfig, ReuseHeads
from vidseg_cli.vos.reuse.model import ReuseModel
from vidseg_cli.vos.sparse.model import SparseModel
from vidseg_cli.vos.sparse.network import (
    SPARSE_ARCH,
    TUNED_PREFIX,
    SparseConfig,
    SparseGates,
)
from vidseg_cli.weights.registry import (
    entry,
    file_sha256,
    load_state,
    registry,
    resolve,
)

VOS_MODELS = ("vos-effl0-v2", "vos-effl0", "propagate")


@functools.cache
def backbone(name: str = "efficientnet-lite0") -> EfficientNetLite:
    """A frozen ImageNet backbone, loaded once per process and shared by all models."""
    if entry(name).arch not in LITE_REPEATS:
        raise VidsegError(f"unsupported backbone {name!r}; choose from {', '.join(LITE_REPEATS)}")
    net = EfficientNetLite(entry(name).arch)
    net.load_imagenet(load_state(name))
    return net.eval().requires_grad_(False)


def create_vos_model(name: str = DEFAULT_VOS_MODEL, device: torch.device | str = "cpu") -> VOSModel:
    """A VOS model by registry name or .safetensors path, in eval mode on ``device``."""
    if name.endswith(".safetensors"):
        return load_memnet(Path(name)).to(device).eval()
    spec = entry(name)
    if spec.task != "vos":
        raise VidsegError(f"checkpoint {name!r} is a {spec.task} model, not a VOS model")
    if spec.arch == "propagate":
        model = PropagationModel(backbone(spec.fields["backbone"]), PropagateConfig())
        return model.to(device).eval()
    if spec.arch == ARCH:
        model = load_memnet(resolve(name))
        _check_listed_config(name, spec.fields.get("config"), model.config)
        return model.to(device).eval()
    raise VidsegError(f"unknown VOS architecture {spec.arch!r}")


def with_runtime(model, runtime: str, device: torch.device | str = "cpu"):
    """The same model (shared weights) with its backbone run by ``runtime``: torch, onnx or
    onnx-int8 (ONNX Runtime on the CPU; models/onnx_trunk.py), or auto (``resolve_runtime``).
    Any head whose network has a ``backbone`` and a ``trunk`` slot takes it: the VOS memory
    network and the semseg network."""
    if runtime not in RUNTIMES:
        raise VidsegError(f"unknown --runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
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
    if isinstance(model, MemoryNetwork):
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
    trunk = getattr(model, "trunk", None)  # reuse and sparse models run on torch: they have none
    if trunk is None:
        return "torch"
    return "onnx-int8" if trunk.int8 else "onnx"


@functools.cache
def onnx_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript"))


def with_settings(model: MemoryNetwork, **settings) -> MemoryNetwork:
    """The same network (shared tensors) with other inference settings: the calibration
    bias, top-k, or how the fusion cell uses its tensors (MemNetConfig fields)."""
    config = dataclasses.replace(model.config, **settings)
    calibrated = MemoryNetwork(model.backbone, config)
    calibrated.heads.load_state_dict(model.heads.state_dict())
    calibrated.tuned_blocks = set(model.tuned_blocks)
    return calibrated


def _check_listed_config(name: str, listed: dict | None, actual: MemNetConfig) -> None:
    """weights.toml lists each learned model's architecture; its file must carry the same."""
    if listed is None:
        raise VidsegError(f"weights.toml entry {name!r} lacks its architecture config")
    if MemNetConfig.from_json(json.dumps(listed)) != actual:
        raise VidsegError(f"{name}: the file's architecture {actual} differs from weights.toml's {listed}")


def load_memnet(path: Path, fusion_candidate: str | None = None) -> MemoryNetwork:
    """A learned model from a safetensors file written by ``vidseg train vos``; every fusion
    candidate has the same tensors, so ``fusion_candidate`` may change how the cell uses them."""
    state, metadata = read_safetensors(path)
    if metadata.get("arch") != ARCH or "config" not in metadata:
        raise VidsegError(f"{path} is not a vidseg {ARCH} checkpoint (arch {metadata.get('arch')!r})")
    config = MemNetConfig.from_json(metadata["config"])
    if fusion_candidate is not None:
        config = dataclasses.replace(config, fusion_candidate=fusion_candidate)
    model = MemoryNetwork(backbone(metadata.get("backbone", "efficientnet-lite0")), config)
    tuned = {name[len("backbone.") :]: t for name, t in state.items() if name.startswith("backbone.")}
    heads = {name[len("heads.") :]: t for name, t in state.items() if name.startswith("heads.")}
    try:
        model.heads.load_state_dict(heads, strict=True)
        recorded = metadata.get("tuned_blocks")
        blocks = {int(b) for b in recorded.split(",") if b} if recorded is not None else None
        if tuned or blocks:  # fine-tuned blocks: a private copy, the shared backbone stays as it is
            model.load_tuned_blocks(tuned, blocks)
        if len(tuned) + len(heads) != len(state):
            raise RuntimeError(f"unexpected tensors, e.g. {sorted(state)[0]}")
    except (RuntimeError, ValueError) as error:
        raise VidsegError(f"{path} does not fit its own config: {str(error).splitlines()[0]}") from None
    return model


def model_identity(name: str) -> str:
    """What reuse heads record of the model they were trained on: its file's sha256."""
    path = Path(name) if name.endswith(".safetensors") else resolve(name)
    return file_sha256(path)


def create_reuse_model(model: str, heads: str, device: torch.device | str = "cpu") -> ReuseModel:
    """A learned VOS model with Reuse-VOS heads (a weights.toml name or a file from
    ``vidseg train reuse``), which must have been trained on that very model."""
    base, state, metadata, path = _addon(model, heads, REUSE_ARCH, "reuse heads", "reuse", device)
    module = _loaded(ReuseHeads(ReuseConfig(**json.loads(metadata["config"]))), state, path)
    return ReuseModel(base, module).to(device).eval()


def create_sparse_model(model: str, gates: str, mode: str, device: torch.device | str = "cpu") -> SparseModel:
    """A learned VOS model with SpVOS gates (a weights.toml name or a file from
    ``vidseg train sparse``) trained on that very model for that mode."""
    base, state, metadata, path = _addon(model, gates, SPARSE_ARCH, "sparse gates", "sparse", device)
    config = SparseConfig.from_dict(json.loads(metadata["config"]))
    if config.mode != mode:
        raise VidsegError(f"sparse gates {gates} are for --sparse {config.mode}, not {mode}")
    tuned = {k[len(TUNED_PREFIX):]: v for k, v in state.items() if k.startswith(TUNED_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith(TUNED_PREFIX)}
    if config.tuned:
        base = _with_tuned_heads(base, tuned, config.tuned, path)
    module = _loaded(SparseGates(config, base.backbone, base.heads.decoder), state, path)
    return SparseModel(base, module).to(device).eval()


def _with_tuned_heads(model: MemoryNetwork, state: dict[str, torch.Tensor], names: tuple[str, ...], path: Path) -> MemoryNetwork:
    """A copy of ``model`` whose named heads hold the tensors trained with the gates (the
    registry's model is shared; its own heads stay as they are)."""
    tuned = model.with_own_heads()
    for name in names:
        own = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        _loaded(getattr(tuned.heads, name), own, path)
    return tuned


def _addon(
    model: str, name: str, arch: str, kind: str, command: str, device: torch.device | str
) -> tuple[MemoryNetwork, dict[str, torch.Tensor], dict[str, str], Path]:
    """The learned model and the tensors of an add-on trained for it (reuse heads, sparse
    gates): a weights.toml name or a file, whose metadata must name that very model."""
    base = create_vos_model(model, device)
    if not isinstance(base, MemoryNetwork):
        raise VidsegError(f"--{command} needs a learned memory network; {model!r} is not one")
    if not name.endswith(".safetensors") and name not in registry():
        raise VidsegError(
            f"no {kind} named {name!r}: train them with `vidseg train {command}` and pass --{kind.replace(' ', '-')} FILE"
        )
    path = Path(name) if name.endswith(".safetensors") else resolve(name)
    state, metadata = read_safetensors(path)
    if metadata.get("arch") != arch or "config" not in metadata:
        raise VidsegError(f"{path} is not a vidseg {arch} checkpoint (arch {metadata.get('arch')!r})")
    if metadata.get("base") != model_identity(model):
        raise VidsegError(f"{kind} {name} were trained for another model than {model}")
    return base, state, metadata, path


def _loaded(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise VidsegError(f"{path} does not fit its own config: {str(error).splitlines()[0]}") from None
    return module


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise VidsegError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata() or {}  # noqa: SIM118
    except (OSError, SafetensorError) as error:
        raise VidsegError(f"cannot read {path} as safetensors: {error}") from None
