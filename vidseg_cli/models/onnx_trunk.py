"""`--runtime onnx`: the EfficientNet-Lite0 trunk (and the VOS decoder) run by ONNX Runtime
on the CPU.

The trunk is most of a frame's time, and eager PyTorch leaves speed there: ONNX Runtime
fuses its depthwise and pointwise convolutions with their activations. The VOS decoder's
small convolutions at strides 16, 8 and 4 are the next largest part and gain the same way.
The memory read, the value encoder, the fusion cell and everything per video stay in
PyTorch. A graph is exported once per weights and input size (the TensorFlow "same"
padding depends on the size; the decoder also per object count) and cached:
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

import numpy as np
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from vidseg_cli.cores import available_cores, fixed_threads
from vidseg_cli.errors import VidsegError
from vidseg_cli.models.backbone import EfficientNetLite, Features

CACHE_VARIABLE = "VIDSEG_CACHE"
OPSET = 18
# Named into every INT8 graph's file: raise it when the calibration (its frames, its
# statistic, its weight range) changes, so that no cache hands out a graph quantized the old way
INT8_VERSION = 2
CALIBRATION_SCENES, CALIBRATION_FRAMES = 8, 4  # synthetic scenes, frames from each


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

    def __init__(self, backbone: EfficientNetLite) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.backbone(image)
        return features.s4, features.s8, features.s16


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise VidsegError('--runtime onnx needs ONNX Runtime: pip install "vidseg[onnx]"') from None
    return onnxruntime


def _watched() -> bool:
    """A dispatch mode (the bench's FLOP counter) is watching: run the same network in
    PyTorch so that it sees the work, whichever runtime times it."""
    return _get_current_dispatch_mode() is not None


class _Graphs:
    """ONNX Runtime sessions of one module, one per input shape, exported on first use."""

    def __init__(self, module: torch.nn.Module, name: str, label: str, threads: int | None, int8: bool = False) -> None:
        self._ort = _onnxruntime()
        self.module = module.eval()
        self.label = label
        self.name = f"{name}-{weights_digest(module)[:16]}"
        # every core (or the fixed count): ORT's workers sleep when they wait, so unlike
        # PyTorch's they lose little to a contended core (vidseg_cli/cores.py)
        self.threads = threads or fixed_threads() or available_cores()
        self.int8 = int8
        self._sessions: dict[tuple, object] = {}

    def run(self, shape: tuple, inputs: dict[str, torch.Tensor], outputs: list[str]) -> list[torch.Tensor]:
        return _feed(self._sessions.get(shape) or self._open(shape, inputs, outputs), inputs)

    def graph_path(self, shape: tuple, int8: bool | None = None) -> Path:
        int8 = self.int8 if int8 is None else int8
        suffix = f"-int8v{INT8_VERSION}" if int8 else ""
        return cache_dir() / f"{self.name}-{'x'.join(str(n) for n in shape)}-opset{OPSET}{suffix}.onnx"

    def run_relaxed(
        self, shape: tuple, shapes: dict[str, tuple[int, ...]], inputs: dict[str, torch.Tensor], outputs: list[str]
    ) -> list[torch.Tensor]:
        """Run the graph exported for ``shape`` (inputs of ``shapes``) on inputs of other
        heights and widths.

        Right only for a graph whose operators hold no size (the backbone's: convolutions
        with their padding as attributes, activations, sums) and for inputs whose sizes pad
        as ``shape`` does (vos/regions/boxes.py keeps crops so)."""
        key = ("relaxed", *shape)
        session = self._sessions.get(key)
        if session is None:
            if shape not in self._sessions:  # exported, once
                self._open(shape, {name: torch.zeros(dims) for name, dims in shapes.items()}, outputs)
            session = self._sessions[key] = self._session(_relaxed(self.graph_path(shape)))
        return _feed(session, inputs)

    def run_any_size(self, inputs: dict[str, torch.Tensor], outputs: list[str], axes: dict[str, dict[int, str]]) -> list[torch.Tensor]:
        """Run one graph, exported with every axis in ``axes`` left open, on inputs of any
        such sizes. Traced by TorchScript: its graph computes sizes (the decoder's
        upsampling targets) from its inputs, where torch.export's writes them in."""
        session = self._sessions.get("any")
        if session is None:
            path = cache_dir() / f"{self.name}-any-opset{OPSET}.onnx"
            if not path.exists():
                print(f"exporting {self.label} for ONNX Runtime at any size (once; cached in {path.parent})", file=sys.stderr)
                export(self.module, tuple(inputs.values()), list(inputs), outputs, path, axes)
            session = self._sessions["any"] = self._session(str(path))
        return _feed(session, inputs)

    def _open(self, shape: tuple, inputs: dict[str, torch.Tensor], outputs: list[str]):
        path = self.graph_path(shape)
        where = f"{'x'.join(str(n) for n in shape)} (once; cached in {path.parent})"
        full = self.graph_path(shape, int8=False)
        if not full.exists():
            print(f"exporting {self.label} for ONNX Runtime at {where}", file=sys.stderr)
            example = tuple(torch.zeros(t.shape) for t in inputs.values())
            export(self.module, example, list(inputs), outputs, full)
        if self.int8 and not path.exists():
            print(f"quantizing {self.label} to INT8 at {where}", file=sys.stderr)
            quantize(full, path, dict(zip(inputs, (t.shape for t in inputs.values()), strict=True)))
        session = self._sessions[shape] = self._session(str(path))
        return session

    def _session(self, graph: str | bytes):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's workers spin-wait after each run by default; the rest then runs in PyTorch on
        # the same cores, and both runtimes' threads would fight for them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return self._ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _feed(session, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Run an ONNX Runtime session on tensors, as float32 arrays on the CPU."""
    arrays = {name: t.detach().to("cpu", torch.float32).contiguous().numpy() for name, t in inputs.items()}
    return [torch.from_numpy(a) for a in session.run(None, arrays)]


def _relaxed(path: Path) -> bytes:
    """The graph at ``path`` with its inputs' and outputs' heights and widths left open and
    no recorded intermediate shapes, so that ONNX Runtime takes any size."""
    import onnx

    graph = onnx.load(str(path))
    for value in (*graph.graph.input, *graph.graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim[2:]):
            dim.dim_param = f"{value.name}_{axis}"
    del graph.graph.value_info[:]
    return graph.SerializeToString()


class OnnxTrunk:
    """Callable like the backbone (image (1, 3, H, W) in [0, 255] -> Features), on ONNX Runtime."""

    def __init__(self, backbone: EfficientNetLite, threads: int | None = None, int8: bool = False) -> None:
        self.backbone = backbone.eval()
        self._graphs = _Graphs(_Pyramid(self.backbone), "effl0", "the backbone", threads, int8)

    def __call__(self, image: torch.Tensor) -> Features:
        if _watched():
            return self.backbone(image)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        s4, s8, s16 = self._graphs.run(size, {"image": image}, ["s4", "s8", "s16"])
        return Features(*(t.to(image.device) for t in (s4, s8, s16)))

    def crop(self, image: torch.Tensor, frame_size: tuple[int, int]) -> Features:
        """Features of a crop (1, 3, h, w) of a frame of ``frame_size``, by the frame's own
        graph: the crop must pad as the frame does (vos/regions/boxes.py)."""
        if _watched():
            return self.backbone(image)
        shapes = {"image": (1, 3, *frame_size)}
        s4, s8, s16 = self._graphs.run_relaxed(frame_size, shapes, {"image": image}, ["s4", "s8", "s16"])
        return Features(*(t.to(image.device) for t in (s4, s8, s16)))

    @property
    def int8(self) -> bool:
        return self._graphs.int8

    def graph_path(self, size: tuple[int, int]) -> Path:
        return self._graphs.graph_path(size)


class _Decoding(torch.nn.Module):
    """The VOS decoder for O objects of one frame, with plain tensor inputs for an exporter."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, readout: torch.Tensor, s4: torch.Tensor, s8: torch.Tensor, s16: torch.Tensor) -> torch.Tensor:
        o = readout.shape[0]
        features = Features(*(t.expand(o, -1, -1, -1) for t in (s4, s8, s16)))
        return self.decoder(readout, features)


_DECODER_AXES = {
    "readout": {0: "objects", 2: "h16", 3: "w16"}, "s16": {2: "h16", 3: "w16"},
    "s8": {2: "h8", 3: "w8"}, "s4": {2: "h4", 3: "w4"}, "logits": {0: "objects", 1: "h4", 2: "w4"},
}


class OnnxDecoder:
    """Callable like the decoder on one frame's objects: readout (O, Cv, h, w) and the
    frame's Features (batch of one) -> logits (O, H4, W4), on ONNX Runtime. ``crop`` runs
    one graph for every size and object count (a region step decodes a new size each frame)."""

    def __init__(self, decoder: torch.nn.Module, threads: int | None = None) -> None:
        self.decoding = _Decoding(decoder.eval())
        # the logit bias is a setting, not a weight: it names the graph too
        self._graphs = _Graphs(self.decoding, f"vosdec{decoder.bias:+g}", "the decoder", threads)

    def __call__(self, readout: torch.Tensor, features: Features) -> torch.Tensor:
        if _watched():
            return self.decoding(readout, features.s4, features.s8, features.s16)
        inputs = {"readout": readout, "s4": features.s4, "s8": features.s8, "s16": features.s16}
        (logits,) = self._graphs.run((readout.shape[0], *features.s4.shape[-2:]), inputs, ["logits"])
        return logits.to(readout.device)

    def crop(self, readout: torch.Tensor, features: Features) -> torch.Tensor:
        if _watched():
            return self.decoding(readout, features.s4, features.s8, features.s16)
        inputs = {"readout": readout, "s4": features.s4, "s8": features.s8, "s16": features.s16}
        (logits,) = self._graphs.run_any_size(inputs, ["logits"], _DECODER_AXES)
        return logits.to(readout.device)


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def export(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    inputs: list[str],
    outputs: list[str],
    path: Path,
    axes: dict[str, dict[int, str]] | None = None,
) -> None:
    """Write a module's graph for one input shape (or, with ``axes``, for any size of
    those axes), atomically (concurrent runs may race)."""
    try:
        import onnx  # noqa: F401 - the exporter needs both
        import onnxscript  # noqa: F401
    except ImportError:
        raise VidsegError('exporting the trunk for --runtime onnx needs onnx and onnxscript: pip install "vidseg[onnx]"') from None
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial.onnx", dir=path.parent)
    os.close(handle)
    try:
        # the exporter reports its progress on stdout, which carries vidseg's data, and logs
        # warnings about operators of other models (torchvision's)
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")  # the exporter's advice is for other models
            if axes is None:
                program = torch.onnx.export(
                    module.eval(), example, input_names=inputs, output_names=outputs,
                    opset_version=OPSET, dynamo=True, verbose=False, external_data=False,
                )
                program.save(staging)
            else:
                torch.onnx.export(
                    module.eval(), example, staging, input_names=inputs, output_names=outputs,
                    opset_version=OPSET, dynamo=False, dynamic_axes=axes,
                )
        os.replace(staging, path)
    except OSError as error:
        raise VidsegError(f"cannot write the ONNX trunk to {path.parent}: {error.strerror}") from None
    finally:
        Path(staging).unlink(missing_ok=True)


def quantize(source: Path, target: Path, shapes: dict[str, torch.Size]) -> None:
    """``source``'s graph with INT8 weights (per channel) and activations, written atomically.

    Activation ranges are calibrated on synthetic scenes (``synthetic.scene_frames``:
    natural-texture objects over a landscape), generated here at the graph's size, the same
    on every machine: the package ships no real frames to calibrate on. Each range is the
    minimum and maximum seen: ORT's percentile calibrator lost as much val-dev J&F and
    keeps every activation of every frame (9 GB at 360x640).

    Weights use 7 of their 8 bits (``reduce_range``): a CPU without VNNI (AVX2 only, e.g. AMD
    Zen 3) multiplies uint8 activations by int8 weights in 16-bit pairs that saturate at full
    range. On such a CPU the full-range graph scored val-dev J&F 0.800 against float's 0.820.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    handle, staging = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".partial.onnx", dir=target.parent)
    os.close(handle)
    prepared = Path(staging).with_suffix(".prepared.onnx")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet("root"):
            warnings.simplefilter("ignore")
            quant_pre_process(str(source), str(prepared))
            quantize_static(
                str(prepared), staging, _CalibrationFrames(shapes), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, reduce_range=True,
            )
        os.replace(staging, target)
    except OSError as error:
        raise VidsegError(f"cannot write the INT8 graph to {target.parent}: {error.strerror}") from None
    finally:
        Path(staging).unlink(missing_ok=True)
        prepared.unlink(missing_ok=True)


class _CalibrationFrames:
    """ONNX Runtime's calibration reader: synthetic scene frames as the trunk's input."""

    def __init__(self, shapes: dict[str, torch.Size]) -> None:
        from vidseg_cli.synthetic import scene_frames

        (name, shape), = shapes.items()
        height, width = shape[-2:]
        self._inputs = iter(
            {name: np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)}
            for seed in range(CALIBRATION_SCENES)
            for t, (image, _) in enumerate(scene_frames(10 * CALIBRATION_FRAMES, height, width, objects=3, seed=seed))
            if t % 10 == 0
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._inputs, None)
