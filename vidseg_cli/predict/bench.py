"""`vidseg bench --task predict`: video prediction on held-out Moving MNIST, or on videos.

Accuracy as OpenSTL and PredRNN report it: for each of the 10 predicted frames, MSE and
MAE summed over the frame's pixels (values in [0, 1]), SSIM and PSNR, averaged over
sequences; the mean over frames is the headline. The accuracy pass runs sequences in
batches (each with its own memory bank, so the numbers are those of one video at a time);
speed is timed separately at batch 1, one sequence at a time with the configurations
interleaved, as a user runs `vidseg predict`; every architecture is timed over a whole
10-from-10 rollout. Two baselines are always in the table: copying the last observed frame,
and each model without its memory (`--memory none`). A peer baseline (`vidseg train predict
--arch convlstm|simvp`, predict/peers) keeps no memory bank and has that one row. On videos
(models trained with `--data PATH`), the test set is every non-overlapping window of 20
frames, at the models' own size and colour mode; errors sum over channels too, and SSIM is
the mean over channels.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vidseg_cli.engine.job import make_bank
from vidseg_cli.errors import VidsegError
from vidseg_cli.metrics.prediction import frame_mae, frame_mse, frame_ssim, psnr
from vidseg_cli.options import NO_MEMORY, POLICIES, MemoryOptions, check_choice
from vidseg_cli.predict.clips import VideoClips
from vidseg_cli.predict.data import (
    CANVAS,
    FRAMES,
    TEST_SEED,
    TEST_SEQUENCES,
    batches,
    blob_digits,
    load_digits,
    sequences,
)
from vidseg_cli.predict.model import create_predictor, has_memory

OBSERVED = 10
FUTURE = FRAMES - OBSERVED
COPY_LAST = "copy-last"
BATCH = 50  # sequences per batch in the accuracy pass
SYNTHETIC_SEQUENCES = 20  # without --data: blob "digits", a smoke test of the bench itself


@dataclass(frozen=True)
class PredictConfig:
    model: str  # a predictor, or COPY_LAST
    memory: MemoryOptions

    @property
    def name(self) -> str:
        if self.model == COPY_LAST:
            return COPY_LAST
        m = self.memory
        policy = {"stremn": f"stremn K={m.slots} {m.update}", "fifo": f"fifo {m.slots}"}.get(m.memory, m.memory)
        return f"{self.model} / {policy}"


@dataclass
class PredictResult:
    config: PredictConfig
    horizon: dict[str, list[list[float]]] = field(default_factory=lambda: {k: [] for k in ("mse", "mae", "ssim", "psnr")})
    latency_ms: list[float] = field(default_factory=list)  # per output frame of a rollout, batch 1 (one entry a sequence)
    bank_bytes: int = 0
    flops: int | None = None  # per output frame of a rollout

    def add(self, predicted: torch.Tensor, truth: torch.Tensor) -> None:
        """predicted, truth: (B, N, C, H, W) in [0, 1]."""
        for mine, true in zip(predicted, truth, strict=True):
            flat_mine, flat_true = mine.flatten(1), true.flatten(1)  # errors: summed over channels too
            self.horizon["mse"].append(frame_mse(flat_mine, flat_true).tolist())
            self.horizon["mae"].append(frame_mae(flat_mine, flat_true).tolist())
            self.horizon["ssim"].append(frame_ssim(mine, true).tolist())
            self.horizon["psnr"].append(psnr(flat_mine, flat_true).clamp(max=100).tolist())  # identical frames: 100 dB

    def summary(self) -> dict:
        curves = {name: [round(float(v), 4) for v in np.mean(rows, axis=0)] for name, rows in self.horizon.items()}
        timed = self.latency_ms or [float("nan")]
        return {
            "config": self.config.name,
            "model": self.config.model,
            "memory": self.config.memory.memory if self.config.model != COPY_LAST else None,
            "slots": self.config.memory.slots,
            "update": self.config.memory.update,
            "sequences": len(self.horizon["mse"]),
            **{name: round(float(np.mean(curve)), 4) for name, curve in curves.items()},
            "per_horizon": curves,
            "fps": round(1000 / statistics.mean(timed), 2) if self.latency_ms else None,
            "latency_ms_median": round(statistics.median(timed), 2),
            "latency_ms_p90": round(float(np.percentile(timed, 90)), 2),
            "gflops": None if self.flops is None else round(self.flops / 1e9, 4),
            "bank_bytes": self.bank_bytes,
        }


def predict_configs(models: list[str], memories: list[str], slots: list[int], updates: list[str]) -> list[PredictConfig]:
    """Copy-last first, then the cross product without duplicates that an option does not
    affect, and for each model its ``--memory none`` baseline (added when not listed)."""
    for memory in memories:
        check_choice("memory", memory, (*POLICIES, NO_MEMORY))
    for rule in updates:
        if rule not in ("A", "B", "C", "D"):
            raise VidsegError(f"unknown update rule {rule!r}; choose A, B, C or D")
    if any(k < 1 for k in slots):
        raise VidsegError("--slots must be at least 1")
    out = [PredictConfig(COPY_LAST, MemoryOptions(NO_MEMORY))]
    for model, memory, k, rule in itertools.product(models, memories, slots, updates):
        options = MemoryOptions(
            memory=memory, slots=k if memory in ("stremn", "fifo") else 5, update=rule if memory == "stremn" else "C"
        )
        config = PredictConfig(model, options)
        if config not in out:
            out.append(config)
    for model in models:  # the baseline of each model: the same network, no memory
        baseline = PredictConfig(model, MemoryOptions(NO_MEMORY))
        if baseline not in out:
            out.append(baseline)
    return out


def load_models(configs: list[PredictConfig], device: torch.device) -> dict[str, nn.Module]:
    """Each predictor the configurations name, once (copy-last needs none)."""
    return {c.model: create_predictor(c.model, device) for c in configs if c.model != COPY_LAST}


def test_sequences(
    data: Path | None, limit: int | None, models: dict[str, nn.Module] | None = None,
) -> tuple[str, Iterator[np.ndarray], int]:
    """(name, sequences (T, C, H, W) uint8, count): the held-out test set of ``data``
    (mnist_5k.csv.gz), every window of a video or a folder of videos at ``models``' frame
    size, or without data a few sequences of blob digits."""
    if data is None or data.name.endswith((".csv", ".csv.gz")):
        _check_digit_shape(_frame_shape(models or {}, "Moving MNIST"))
    if data is None:
        count = min(limit or SYNTHETIC_SEQUENCES, SYNTHETIC_SEQUENCES)
        return "synthetic", _grey(sequences(blob_digits(), TEST_SEED, count)), count
    if not data.exists():
        raise VidsegError(f"--data {data}: not found")
    if not data.name.endswith((".csv", ".csv.gz")):
        return _video_windows(data, limit, models or {})
    _, test = load_digits(data)
    count = min(limit or TEST_SEQUENCES, TEST_SEQUENCES)
    return "moving-mnist-test", _grey(sequences(test, TEST_SEED, count)), count


def _grey(stream: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    return (frames[:, None] for frames in stream)  # (T, H, W) -> (T, 1, H, W)


def _video_windows(data: Path, limit: int | None, models: dict[str, nn.Module]) -> tuple[str, Iterator[np.ndarray], int]:
    shape = _frame_shape(models, f"--data {data}")
    if shape is None:  # copy-last has no frame size of its own to bring the video to
        raise VidsegError(f"--data {data}: copy-last alone has no frame size to score videos at; name a predictor beside it, e.g. --model predict-davis,{COPY_LAST}")
    channels, height, width = shape
    videos = VideoClips(data, min(height, width), channels)
    if (videos.height, videos.width) != (height, width):
        raise VidsegError(f"--data {data}: its frames come out {videos.width}x{videos.height}, the models predict {width}x{height}: give videos of their aspect")
    windows = list(itertools.islice(videos.windows(), limit))
    if not windows:
        raise VidsegError(f"--data {data}: no video has the {FRAMES} frames a test window needs")
    return f"videos: {data}", iter(windows), len(windows)


def _frame_shape(models: dict[str, nn.Module], data: str) -> tuple[int, int, int] | None:
    """(channels, height, width) that every model predicts; None without models."""
    shapes = {(m.config.channels, m.config.frame_height, m.config.frame_width) for m in models.values()}
    if len(shapes) > 1:
        raise VidsegError(f"{data}: the models must share one frame size and colour mode to be scored on the same sequences; they have {sorted(shapes)}")
    return next(iter(shapes), None)


def _check_digit_shape(shape: tuple[int, int, int] | None) -> None:
    if shape is not None and shape != (1, CANVAS, CANVAS):
        c, h, w = shape
        raise VidsegError(f"Moving MNIST is {CANVAS}x{CANVAS} grey; the models predict {w}x{h} with {c} channels: give --data videos they were trained for")


def run_predict_bench(
    configs: list[PredictConfig],
    models: dict[str, nn.Module],
    stream: Iterator[np.ndarray],
    device: torch.device,
    timed: int,
    progress: Callable[[str], None] = lambda text: None,
) -> list[PredictResult]:
    """Accuracy over every sequence (batched), then speed on the first ``timed`` (batch 1);
    ``models`` from ``load_models(configs)``."""
    configs = [c for c in configs if c.model == COPY_LAST or c.memory.memory == NO_MEMORY or has_memory(models[c.model])]
    results = [PredictResult(c) for c in configs]  # a peer keeps no memory: its one row is "none"
    first: list[np.ndarray] = []
    done = 0
    for chunk in batches(stream, BATCH):
        first.extend(chunk[: max(0, timed - len(first))])
        frames = torch.from_numpy(np.stack(chunk)).to(device).float().div(255)  # (B, T, C, H, W)
        truth = frames[:, OBSERVED:]
        for result in results:
            result.add(_rollout(result.config, models, frames).cpu(), truth.cpu())
        done += len(chunk)
        progress(f"accuracy: {done} sequences")
    for index, clip in enumerate(first):
        frames = torch.from_numpy(clip).to(device).float().div(255)[None]
        for result in results:  # interleaved: every configuration sees the machine alike
            _time_one(result, models, frames, count_flops=index == 0)
        progress(f"speed: {index + 1} of {len(first)} sequences")
    return results


@torch.no_grad()
def _rollout(config: PredictConfig, models: dict[str, nn.Module], frames: torch.Tensor) -> torch.Tensor:
    """The 10 predicted frames (B, N, C, H, W) of a configuration."""
    if config.model == COPY_LAST:
        return frames[:, OBSERVED - 1 : OBSERVED].expand(-1, FUTURE, -1, -1, -1)
    model = models[config.model]
    banks = _banks(model, config.memory, frames.shape[0])
    return model.rollout(frames[:, :OBSERVED], FUTURE, banks)[:, -FUTURE:]


def _banks(model: nn.Module, memory: MemoryOptions, count: int):
    if memory.memory == NO_MEMORY:
        return None
    fusion = model.fusion()
    return [make_bank(memory, fusion) for _ in range(count)]


@torch.no_grad()
def _time_one(result: PredictResult, models: dict[str, nn.Module], frames: torch.Tensor, count_flops: bool) -> None:
    """Latency per output frame of one sequence's rollout (10 observed, 10 predicted) at
    batch 1: the rollout's time over the frames it returns (17 steps for ours, which starts
    from three frames; 19 for ConvLSTM; 10 for SimVP's one pass), so every architecture is
    timed the same way."""
    config = result.config
    if config.model == COPY_LAST:
        return
    model = models[config.model]
    banks = _banks(model, config.memory, 1)
    if count_flops:
        with FlopCounterMode(display=False) as counter:
            model.rollout(frames[:, :OBSERVED], FUTURE, [b.copy() for b in banks] if banks else None)
        result.flops = counter.get_total_flops() // (FRAMES - model.first_predicted)
    started = time.perf_counter()
    model.rollout(frames[:, :OBSERVED], FUTURE, banks)
    result.latency_ms.append(1000 * (time.perf_counter() - started) / (FRAMES - model.first_predicted))
    result.bank_bytes = max(result.bank_bytes, sum(b.nbytes for b in banks or []))
