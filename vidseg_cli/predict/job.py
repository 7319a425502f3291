"""`vidseg predict`: the next frames of a video, from the STReMN predictor over the shared
memory engine (the same MemoryBank, policies and fusion cell as segment).

Two ways to run. A window: observe M frames (the last M of INPUT, or T .. T+M-1 with
``--start T``), write the N that follow, and with ``--compare`` score them against the
true frames. A stream: roll through the whole video predicting each next frame from the
three before it and the memory of all earlier ones, and report how wrong each prediction
was; a cut, an object that appears or anything the past did not announce stands out.

Every input is first brought to the model's own resolution and colour mode (a Moving
MNIST model sees 64x64 grey), and everything written is at that resolution.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from vidseg_cli.engine.job import default_output, make_bank, pick_device
from vidseg_cli.engine.threads import adapt, threads_used, use_all_cores
from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import Frame, open_frames
from vidseg_cli.io.outputs import StagedOutput, check_complete, run_fingerprint
from vidseg_cli.io.sinks import write_error
from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.metrics.prediction import frame_mae, frame_mse, frame_ssim, psnr
from vidseg_cli.options import MAX_SLOTS, NO_MEMORY, PredictOptions
from vidseg_cli.predict.model import STACK, Predictor, create_predictor, has_memory

PREDICTION_VIDEO = "prediction.mp4"
COMPARISON_VIDEO = "comparison.mp4"
DISPLAY_SHORT_SIDE = 256  # videos of 64x64 frames are scaled up (nearest) to be seen
OBSERVED_MARK = (40, 200, 90)  # border colour of observed frames in prediction.mp4
PREDICTED_MARK = (230, 40, 40)  # ... and of predicted ones: where prediction starts


@dataclass
class PredictSummary:
    input: str
    output: str | None
    model: str
    memory: str
    slots: int
    update: str
    size: tuple[int, int]  # the model's (height, width)
    context: tuple[int, int]  # first and last observed frame
    predicted: tuple[int, int]  # first and last predicted frame
    seconds: float  # end to end
    fps: float  # predicted frames per second of model time (the observed steps included)
    bank_bytes: int
    metrics: dict[str, list[float] | dict[str, float]] | None = None  # --compare: per horizon, and means
    files: list[str] = field(default_factory=list)
    threads: dict = field(default_factory=dict)  # what the model ran with (engine/threads.py)


@dataclass
class _Window:
    observed: list[torch.Tensor]  # (C, H, W) each, at the model's resolution
    truth: list[torch.Tensor]  # the true frames after the context (only with --compare)
    first: int  # index of the first observed frame
    fps: float  # the input's frame rate, for the videos written


def predict(options: PredictOptions, progress: Callable[[int, int], None] | None = None) -> PredictSummary:
    """Observe a window of INPUT and write the frames that follow; VidsegError on bad input."""
    began = time.perf_counter()
    target, run = options.out or default_output(options.input, "prediction"), run_fingerprint(options, [options.input])
    if options.resume:
        check_complete(target, run, [options.input])  # a re-run of finished work: nothing to do
    model, device = _prepare(options)
    needed = getattr(model.config, "frames_in", STACK)
    if options.context < needed:
        raise VidsegError(f"--context {options.context}: {options.model} reads the last {needed} frames, so at least {needed}")
    window = _read_window(options, model)
    staged = StagedOutput(target, force=options.force, inputs=[options.input], run=run)
    try:
        observed = torch.stack(window.observed).to(device)[None]
        banks = _banks(model, options)
        started = time.perf_counter()
        with torch.no_grad():
            returned = model.rollout(observed, options.frames, banks)[0]
        rolled = returned[-options.frames :].cpu()
        model_seconds = time.perf_counter() - started
        first_predicted = window.first + options.context
        files = _write_outputs(options, window, rolled, staged.staging, first_predicted)
        metrics = _horizon_scores(rolled, torch.stack(window.truth), window.observed[-1]) if options.compare else None
        staged.commit()
    except BaseException:
        staged.abort()
        raise
    return PredictSummary(
        input=str(options.input),
        output=str(staged.target),
        model=options.model,
        memory=options.memory.memory if has_memory(model) else NO_MEMORY,
        slots=options.memory.slots,
        update=options.memory.update,
        size=(model.config.frame_height, model.config.frame_width),
        context=(window.first, first_predicted - 1),
        predicted=(first_predicted, first_predicted + options.frames - 1),
        seconds=round(time.perf_counter() - began, 3),
        fps=round(len(returned) / max(model_seconds, 1e-9), 2),
        bank_bytes=sum(bank.nbytes for bank in banks or []),
        metrics=metrics,
        files=files,
        threads=threads_used(),
    )


def stream(options: PredictOptions, emit: Callable[[dict], None]) -> dict:
    """Predict every frame from the few before it (three, or the model's ``history``) and
    the memory of the rest; ``emit`` gets one record per predicted frame: its index, time,
    and errors (MSE, MAE summed over pixels in [0, 1], SSIM, and copying the previous
    frame's MSE for scale)."""
    began = time.perf_counter()
    model, device = _prepare(options)
    if not has_memory(model):
        raise VidsegError(f"--stream predicts each frame from the three before it and the memory: {options.model} is a {model.arch} baseline without one")
    banks = _banks(model, options)
    recent: deque[torch.Tensor] = deque(maxlen=model.config.history)
    frames, carried = 0, None
    for frame in _frames(options.input):
        adapt()
        image = to_model_input(frame.image, model).to(device)
        if len(recent) >= STACK:
            with torch.no_grad():
                predicted, _, carried = model.step(model.stack([seen[None] for seen in recent]), banks, frame.index, carried)
            emit(_stream_record(frame, predicted[0].cpu(), image.cpu(), recent[-1].cpu()))
        recent.append(image)
        frames += 1
    if frames <= STACK:
        raise VidsegError(f"{options.input} has {frames} frame(s); --stream predicts from the 3 before each, so it needs at least 4")
    return {
        "frames": frames, "predicted": frames - STACK, "seconds": round(time.perf_counter() - began, 3),
        "threads": threads_used(),
    }


def _stream_record(frame: Frame, predicted: torch.Tensor, truth: torch.Tensor, last: torch.Tensor) -> dict:
    p, t = predicted.flatten(0, 1)[None], truth.flatten(0, 1)[None]
    return {
        "frame": frame.index,
        "time": round(float(frame.pts * frame.time_base), 4),
        "mse": round(frame_mse(p, t).item(), 3),
        "mae": round(frame_mae(p, t).item(), 3),
        "ssim": round(frame_ssim(predicted[None], truth[None]).item(), 4),
        "copy_last_mse": round(frame_mse(last.flatten(0, 1)[None], t).item(), 3),
    }


def _prepare(options: PredictOptions) -> tuple[Predictor, torch.device]:
    if not 1 <= options.memory.slots <= MAX_SLOTS:
        raise VidsegError(f"--slots {options.memory.slots}: between 1 and {MAX_SLOTS}")
    if options.memory.update not in ("A", "B", "C", "D"):
        raise VidsegError(f"unknown --update {options.memory.update!r}; choose A, B, C or D")
    device = pick_device(options.device)
    use_all_cores(adaptive=True)
    return create_predictor(options.model, device), device


def _banks(model: Predictor, options: PredictOptions) -> list[MemoryBank] | None:
    if options.memory.memory == NO_MEMORY or not has_memory(model):
        return None
    return [make_bank(options.memory, model.fusion())]


def to_model_input(image: np.ndarray, model: Predictor) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (C, h, w) float in [0, 1] at the model's size and colour mode
    (grey by ITU-R 601 luma, Pillow's "L")."""
    config = model.config
    picture = Image.fromarray(image)
    if config.channels == 1:
        picture = picture.convert("L")
    size = (config.frame_width, config.frame_height)
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.BILINEAR)  # Pillow filters when shrinking
    array = np.asarray(picture, dtype=np.float32) / 255
    return torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1).contiguous()


def _frames(path: Path) -> Iterator[Frame]:
    source = open_frames(path)
    try:
        yield from source
    finally:
        source.close()


def _read_window(options: PredictOptions, model: Predictor) -> _Window:
    """The observed frames (and with --compare the true ones after them), checked against
    the length of INPUT before any output exists."""
    m, n = options.context, options.frames
    wanted = m + (n if options.compare else 0)
    kept: deque[tuple[Frame, torch.Tensor]] = deque(maxlen=wanted if options.start is None else None)
    count = 0
    for frame in _frames(options.input):
        if options.start is None or options.start <= frame.index < options.start + wanted:
            kept.append((frame, to_model_input(frame.image, model)))
        count += 1
    _check_window(options, count)
    frames = list(kept)
    return _Window(
        observed=[image for _, image in frames[:m]],
        truth=[image for _, image in frames[m:]],
        first=frames[0][0].index,
        fps=_frame_rate([frame for frame, _ in frames]),
    )


def _check_window(options: PredictOptions, count: int) -> None:
    m, n, start = options.context, options.frames, options.start
    if count < m:
        raise VidsegError(f"{options.input} has {count} frame(s); --context {m} needs at least {m}")
    if start is None:
        return
    if start >= count:
        raise VidsegError(f"--start {start} is past the end: {options.input} has {count} frames (0 .. {count - 1})")
    if start + m > count:
        raise VidsegError(
            f"--start {start} --context {m} observes frames {start} .. {start + m - 1}, "
            f"but {options.input} ends at frame {count - 1}"
        )
    if options.compare and start + m + n > count:
        raise VidsegError(
            f"--compare needs the true frames {start + m} .. {start + m + n - 1}, but {options.input} ends at "
            f"frame {count - 1}: use --frames {count - start - m} or less"
            if count - start - m > 0
            else f"--compare needs true frames after the context, and {options.input} ends at frame {count - 1}"
        )


def _frame_rate(frames: list[Frame]) -> float:
    """The input's rate, from its timestamps (median step); 25 when they say nothing."""
    steps = [float((b.pts - a.pts) * a.time_base) for a, b in zip(frames, frames[1:])]
    steps = [s for s in steps if s > 0]
    return 1 / float(np.median(steps)) if steps else 25.0


def _write_outputs(
    options: PredictOptions, window: _Window, predicted: torch.Tensor, folder: Path, first_predicted: int
) -> list[str]:
    files = []
    try:
        if options.format in ("png", "all"):
            for offset, image in enumerate(predicted):
                name = f"{first_predicted + offset:05d}.png"
                Image.fromarray(_to_uint8(image)).save(folder / name)
                files.append(name)
        if options.format in ("video", "all"):
            observed = [_marked(_to_uint8(image), OBSERVED_MARK) for image in window.observed]
            future = [_marked(_to_uint8(image), PREDICTED_MARK) for image in predicted]
            _write_mp4(folder / PREDICTION_VIDEO, observed + future, window.fps)
            files.append(PREDICTION_VIDEO)
        if options.compare:
            panels = [_comparison(t, p) for t, p in zip(window.truth, predicted, strict=True)]
            _write_mp4(folder / COMPARISON_VIDEO, panels, window.fps)
            files.append(COMPARISON_VIDEO)
    except OSError as error:
        raise write_error(error) from None
    return files


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) uint8."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[2] == 1 else array


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def _display(image: np.ndarray) -> np.ndarray:
    """Scaled up by a whole factor (nearest) to a short side of at least 256 pixels."""
    factor = max(1, math.ceil(DISPLAY_SHORT_SIDE / min(image.shape[:2])))
    return np.repeat(np.repeat(_rgb(image), factor, axis=0), factor, axis=1)


def _marked(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The frame on display with a border of ``colour`` (observed green, predicted red)."""
    shown = _display(image)
    width = max(2, shown.shape[0] // 64)
    framed = np.empty((shown.shape[0] + 2 * width, shown.shape[1] + 2 * width, 3), np.uint8)
    framed[:] = colour
    framed[width:-width, width:-width] = shown
    return framed


def _comparison(truth: torch.Tensor, predicted: torch.Tensor) -> np.ndarray:
    """truth | prediction | error (|difference|, black to red to yellow), side by side."""
    error = (predicted - truth).abs().amax(0).numpy()  # (H, W) in [0, 1]
    heat = np.stack([np.clip(2 * error, 0, 1), np.clip(2 * error - 1, 0, 1), np.zeros_like(error)], axis=2)
    panels = [_display(_to_uint8(truth)), _display(_to_uint8(predicted)), _display((heat * 255).astype(np.uint8))]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)


def _write_mp4(path: Path, images: list[np.ndarray], fps: float) -> None:
    """H.264 for viewing (yuv420p: sizes padded to even)."""
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        height, width = (side + side % 2 for side in images[0].shape[:2])
        stream.height, stream.width = height, width
        for image in images:
            padded = np.pad(image, ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _horizon_scores(predicted: torch.Tensor, truth: torch.Tensor, last: torch.Tensor) -> dict:
    """Per predicted frame (horizon 1 .. N): MSE and MAE summed over pixels in [0, 1] (as
    OpenSTL and PredRNN report Moving MNIST), SSIM and PSNR, and the MSE of copying the last
    observed frame (the baseline a predictor has to beat); and their means."""
    flat_p, flat_t = predicted.flatten(1), truth.flatten(1)
    scores = {
        "mse": frame_mse(flat_p[:, None], flat_t[:, None]).tolist(),
        "mae": frame_mae(flat_p[:, None], flat_t[:, None]).tolist(),
        "ssim": frame_ssim(predicted, truth).tolist(),
        "psnr": psnr(flat_p[:, None], flat_t[:, None]).tolist(),
        "copy_last_mse": frame_mse(last.flatten()[None, None], flat_t[:, None]).tolist(),
    }
    scores = {name: [round(v, 4) for v in values] for name, values in scores.items()}
    scores["mean"] = {name: round(float(np.mean(values)), 4) for name, values in scores.items()}
    return scores


def summary_dict(summary: PredictSummary) -> dict:
    return asdict(summary)
