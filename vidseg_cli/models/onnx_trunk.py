"""`--runtime onnx`: the EfficientNet-Lite0 trunk run by ONNX Runtime on the CPU.

The trunk is most of a frame's time, and eager PyTorch leaves speed there: ONNX Runtime
fuses its depthwise and pointwise convolutions with their activations. The heads, the
memory read and everything per video stay in PyTorch. A trunk is exported once per
weights and input size (the TensorFlow "same" padding depends on the size) and cached:
``$VIDSEG_CACHE`` or ``$XDG_CACHE_HOME/vidseg`` (default ``~/.cache/vidseg``), under
``onnx/``, named by a digest of the weights, so a model with fine-tuned blocks never
meets another's graph.

Optional: ``pip install "vidseg[onnx]"`` (onnxruntime, and onnx and onnxscript to export).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from vidseg_cli.errors import VidsegError
from vidseg_cli.models.backbone import EfficientNetLite0, Features

CACHE_VARIABLE = "VIDSEG_CACHE"
OPSET = 18


def cache_dir() -> Path:
    explicit = os.environ.get(CACHE_VARIABLE)
    if explicit:
        return Path(explicit) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vidseg" / "onnx"


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every tensor's name and bytes, in order: names a graph by its weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Pyramid(torch.nn.Module):
    """The trunk with a tuple output, as an exporter wants it."""

    def __init__(self, backbone: EfficientNetLite0) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.backbone(image)
        return features.s4, features.s8, features.s16


class OnnxTrunk:
    """Callable like the backbone (image (1, 3, H, W) in [0, 255] -> Features), on ONNX Runtime."""

    def __init__(self, backbone: EfficientNetLite0, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise VidsegError('--runtime onnx needs ONNX Runtime: pip install "vidseg[onnx]"') from None
        self._ort = onnxruntime
        self.backbone = backbone.eval()
        self.digest = weights_digest(backbone)[:16]
        self.threads = threads or torch.get_num_threads()
        self._sessions: dict[tuple[int, int], object] = {}

    def __call__(self, image: torch.Tensor) -> Features:
        if _get_current_dispatch_mode() is not None:
            # A dispatch mode (the bench's FLOP counter) is watching: run the same network in
            # PyTorch so that it sees the trunk's work, whichever runtime times it.
            return self.backbone(image)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        session = self._sessions.get(size) or self._open(size)
        s4, s8, s16 = session.run(None, {"image": image.detach().to("cpu", torch.float32).contiguous().numpy()})
        return Features(*(torch.from_numpy(t).to(image.device) for t in (s4, s8, s16)))

    def graph_path(self, size: tuple[int, int]) -> Path:
        return cache_dir() / f"effl0-{self.digest}-{size[0]}x{size[1]}-opset{OPSET}.onnx"

    def _open(self, size: tuple[int, int]):
        path = self.graph_path(size)
        if not path.exists():
            export(self.backbone, size, path)
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's workers spin-wait after each run by default; the heads then run in PyTorch on
        # the same cores, and both runtimes' threads would fight for them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = self._ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._sessions[size] = session
        return session


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def export(backbone: EfficientNetLite0, size: tuple[int, int], path: Path) -> None:
    """Write the trunk's graph for one input size, atomically (concurrent runs may race)."""
    try:
        import onnx  # noqa: F401 - the exporter needs both
        import onnxscript  # noqa: F401
    except ImportError:
        raise VidsegError('exporting the trunk for --runtime onnx needs onnx and onnxscript: pip install "vidseg[onnx]"') from None
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial.onnx", dir=path.parent)
    os.close(handle)
    try:
        example = torch.zeros(1, 3, *size)
        print(f"exporting the backbone for ONNX Runtime at {size[1]}x{size[0]} (once; cached in {path.parent})", file=sys.stderr)
        # the exporter reports its progress on stdout, which carries vidseg's data, and logs
        # warnings about operators of other models (torchvision's)
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")  # the exporter's advice is for other models
            program = torch.onnx.export(
                _Pyramid(backbone.eval()), (example,), input_names=["image"], output_names=["s4", "s8", "s16"],
                opset_version=OPSET, dynamo=True, verbose=False, external_data=False,
            )
            program.save(staging)
        os.replace(staging, path)
    except OSError as error:
        raise VidsegError(f"cannot write the ONNX trunk to {path.parent}: {error.strerror}") from None
    finally:
        Path(staging).unlink(missing_ok=True)
