"""Region gates by name: a weights.toml entry or a file from `vidseg train gates`, checked
against the model they must serve."""

from __future__ import annotations

import json

from vidseg_cli.errors import VidsegError
from vidseg_cli.models.registry import read_safetensors
from vidseg_cli.options import ReuseOptions, SparseOptions
from vidseg_cli.vos.regions.gate import GATE_ARCH, RegionGates
from vidseg_cli.vos.regions.tracker import LoadedGates
from vidseg_cli.weights.registry import checkpoint, registry


def default_gates(model: str) -> str | None:
    """The weights.toml entry MODEL-gates, where one ships."""
    name = f"{model}-gates"
    return name if name in registry() else None


FIXED = "fixed"  # --gates fixed: no learned gates, the change test against a fixed threshold


def load_gates(model: str, name: str | None, reuse: ReuseOptions, sparse: SparseOptions) -> LoadedGates | None:
    """The gates ``--reuse`` and ``--sparse`` run with (None: the change test's fixed
    threshold, which ``--sparse`` falls back to for a model without gates, and which
    ``--gates fixed`` asks for). ``name`` None means the model's own entry."""
    if not (reuse.enabled or sparse.enabled):
        if name is not None:
            raise VidsegError("--gates serves --reuse and --sparse; pass one of them, or leave --gates out")
        return None
    if name == FIXED and reuse.enabled:
        raise VidsegError("--reuse needs learned gates (its frame gate): --gates fixed has none")
    name = name or default_gates(model)
    if name is None and reuse.enabled:
        raise VidsegError(
            f"--reuse needs region gates and none ship for {model}: train them with `vidseg train gates` and pass --gates FILE"
        )
    return None if name in (None, FIXED) else read_gates(model, name)


def read_gates(model: str, name: str) -> LoadedGates:
    spec, gates_file = checkpoint(model, "vos"), checkpoint(name, "gates")
    path = gates_file.path
    state, metadata = read_safetensors(path)
    if metadata.get("arch") != GATE_ARCH or "config" not in metadata:
        raise VidsegError(f"{path} is not a vidseg region gates file (arch {metadata.get('arch')!r})")
    if metadata.get("base") != spec.sha256:
        trained_for = metadata.get("model", "another model")
        raise VidsegError(f"gates {name} were trained for {trained_for}, not for {model}")
    config = json.loads(metadata["config"])
    gates_file.check_listed(config, dict)
    gates = RegionGates(config["hidden"])
    gates.load_state_dict(state)
    return LoadedGates(gates.eval().requires_grad_(False), config["threshold"], config["trigger"], config["near"])
