"""VOS models by name: the learned memory network and training-free propagation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from vidseg_cli.errors import VidsegError
from vidseg_cli.models.registry import backbone, read_safetensors
from vidseg_cli.options import DEFAULT_VOS_MODEL
from vidseg_cli.vos.base import VOSModel
from vidseg_cli.vos.memnet import ARCH, MemNetConfig, MemoryNetwork
from vidseg_cli.vos.propagate import PropagateConfig, PropagationModel
from vidseg_cli.weights.registry import Checkpoint, checkpoint

VOS_MODELS = ("vos-effl0-v2", "vos-effl0", "propagate")


def create_vos_model(name: str | Checkpoint = DEFAULT_VOS_MODEL, device: torch.device | str = "cpu") -> VOSModel:
    """A VOS model by registry name, .safetensors path or resolved checkpoint, in eval mode
    on ``device``."""
    spec = name if isinstance(name, Checkpoint) else checkpoint(name, "vos")
    if spec.entry is None:
        return load_memnet(spec.path).to(device).eval()
    if spec.entry.arch == "propagate":
        model = PropagationModel(backbone(spec.entry.fields["backbone"]), PropagateConfig())
        return model.to(device).eval()
    if spec.entry.arch == ARCH:
        model = load_memnet(spec.path)
        spec.check_listed(model.config, lambda listed: MemNetConfig.from_json(json.dumps(listed)))
        return model.to(device).eval()
    raise VidsegError(f"unknown VOS architecture {spec.entry.arch!r}")


def with_settings(model: MemoryNetwork, **settings) -> MemoryNetwork:
    """The same network (shared tensors) with other inference settings: the calibration
    bias, top-k, or how the fusion cell uses its tensors (MemNetConfig fields)."""
    config = dataclasses.replace(model.config, **settings)
    calibrated = MemoryNetwork(model.backbone, config)
    calibrated.heads.load_state_dict(model.heads.state_dict())
    calibrated.tuned_blocks = set(model.tuned_blocks)
    return calibrated


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
