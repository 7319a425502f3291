"""`vidseg train predict`: the STReMN predictor on Moving MNIST generated on the fly, or
on windows of the user's own videos (``predict/clips.py``).

Each step is a batch of 20-frame clips: the model predicts frames 3 .. 19, seeing true
frames through the 10 observed ones and, after them, its own predictions (as at test
time) or, with a probability that falls from 1 to 0 over the first ``teacher_share`` of
training, the true frame (PredRNN's scheduled sampling: motion is learnt first from true
inputs, then the model learns to live with its own). Every clip has its own memory bank.
Loss (STReMN 4.2): the shrinkage loss (Lu et al. 2018) on the L1 and L2 errors, and the
scale-invariant gradient loss (Ummenhofer et al. 2017). Adam at 1e-3 with a cosine decay
to a tenth; the model that is saved is the Polyak (exponential moving) average of the
weights, which is also what validation scores. Moving MNIST validates on sequences of
*training* digits with their own seed: the held-out test digits are for the reported
table only."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from vidseg_cli.engine.job import make_bank
from vidseg_cli.errors import VidsegError
from vidseg_cli.io.outputs import write_file_atomically
from vidseg_cli.metrics.prediction import frame_mae, frame_mse, ssim
from vidseg_cli.options import MemoryOptions
from vidseg_cli.predict.clips import ClipSource
from vidseg_cli.predict.data import FRAMES, batches
from vidseg_cli.predict.model import (
    ARCH,
    ARCHITECTURES,
    STILL,
    Predictor,
    PredictorConfig,
    has_memory,
    predictor_file,
)
from vidseg_cli.train.loop import (
    cosine_to_a_tenth,
    load_run_state,
    polyak_decay,
    run_steps,
    save_run_state,
    set_learning_rate,
    take_step,
)

MODEL = "predictor.safetensors"
LOSSES = ("shrinkage", "mse")
OBSERVED = 10


@dataclass(frozen=True)
class PredictTrainConfig:
    steps: int = 20_000
    batch: int = 16  # sequences per optimiser step
    teacher_share: float = 0.5  # share of the steps over which true future frames phase out
    lr: float = 1e-3
    seed: int = 0
    memory: str = "stremn"
    slots: int = 5
    update: str = "C"
    loss: str = "shrinkage"  # shrinkage: STReMN's shrinkage L1 + L2; mse: the squared error the benchmark scores
    gradient_weight: float = 0.1  # the scale-invariant gradient loss beside the main loss
    ema: float = 0.999  # Polyak averaging of the weights
    val_sequences: int = 200
    arch: str = ARCH  # ours, or a peer baseline trained on the same data and budget (predict/peers)
    init: str = ""  # the sha256 of the predictor file training started from (--init); "" fresh
    still: float = STILL  # ours from scratch: the shift head's starting weight on the zero move
    model: PredictorConfig | Any = PredictorConfig()  # the config class of ``arch``


def shrinkage(error: torch.Tensor, a: float = 10.0, c: float = 0.2) -> torch.Tensor:
    """Lu et al. 2018: the loss of an error l is weighted by 1 / (1 + exp(a (c - l))), so
    the many easy pixels (background already right) count less than the hard ones. Applied
    to L2 (l^2) and to L1 (l) and summed, as STReMN says."""
    weight = torch.sigmoid(a * (error - c))
    return (weight * error**2).mean() + (weight * error).mean()


def scale_invariant_gradient(prediction: torch.Tensor, truth: torch.Tensor, spacings=(1, 2, 4, 8, 16)) -> torch.Tensor:
    """Ummenhofer et al. 2017 (DeMoN): discrete gradients normalised by the values they join,
    at several spacings, compared by L2; sharp edges matter whatever the intensity."""

    def gradients(x: torch.Tensor, h: int) -> tuple[torch.Tensor, torch.Tensor]:
        eps = 1e-2  # frames are mostly exact zeros: keep the ratio finite there
        gx = (x[..., :, h:] - x[..., :, :-h]) / (x[..., :, h:].abs() + x[..., :, :-h].abs() + eps)
        gy = (x[..., h:, :] - x[..., :-h, :]) / (x[..., h:, :].abs() + x[..., :-h, :].abs() + eps)
        return gx, gy

    total = prediction.new_zeros(())
    for h in spacings:
        (px, py), (tx, ty) = gradients(prediction, h), gradients(truth, h)
        total = total + (px - tx).pow(2).mean() + (py - ty).pow(2).mean()
    return total / len(spacings)


def load_trained(model: nn.Module, trained: nn.Module) -> None:
    """Every tensor of ``trained`` (the same architecture, maybe less of it) copied into
    ``model``; what it lacks, e.g. ``recurrent``'s state, keeps its own start."""
    if type(trained) is not type(model):
        raise VidsegError(f"--init is a {trained.arch} predictor; this run trains {model.arch}")
    try:
        _, unexpected = model.load_state_dict(_with_history(trained.state_dict(), model), strict=False)
    except RuntimeError as error:  # "Error(s) in loading state_dict for ...:", then one line a tensor
        detail = str(error).strip().splitlines()[-1].strip()
        raise VidsegError(f"--init's tensors do not fit this model's shape ({detail}): give the shape flags it was trained with") from None
    if unexpected:
        raise VidsegError(f"--init has tensors this model lacks ({', '.join(unexpected[:3])}): give the shape flags it was trained with")


def _with_history(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with its first encoder convolution widened to ``model``'s longer history: the
    frames it read are the most recent ones (the last input channels), and the older frames
    start at zero weight, so the model starts out computing exactly what ``state`` did."""
    name = "encoder.0.0.weight"
    ours, theirs = model.state_dict().get(name), state.get(name)
    if ours is None or theirs is None or ours.shape[0] != theirs.shape[0] or ours.shape[2:] != theirs.shape[2:]:
        return state  # not ours, or another width: load_state_dict names the mismatch
    per_frame = ours.shape[1] // model.config.history
    if theirs.shape[1] >= ours.shape[1] or theirs.shape[1] % per_frame:
        return state
    widened = torch.zeros_like(ours)
    widened[:, -theirs.shape[1] :] = theirs
    return {**state, name: widened}


class PredictTrainer:
    def __init__(
        self, source: ClipSource, config: PredictTrainConfig, run_dir: Path, device: torch.device,
        val_source: ClipSource | None = None,
    ) -> None:
        """``source`` gives training clips (``MovingMnist`` or ``VideoClips``); validation
        clips come from ``val_source``, by default from ``source``'s own validation set."""
        self.config, self.run_dir, self.device = config, run_dir, device
        self.source, self.val_source = source, val_source or source
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.model = ARCHITECTURES[config.arch][0](config.model).to(device)
        if isinstance(self.model, Predictor):
            self.model.start_still(config.still)
        self.average = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.memory = MemoryOptions(config.memory, config.slots, config.update)
        self.step = 0
        self.history: list[dict] = []

    def start_from(self, trained: nn.Module) -> None:
        """Training starts from ``trained`` (``load_trained``), the average with it."""
        load_trained(self.model, trained)
        self.average.load_state_dict(self.model.state_dict())

    def _frames(self, clips: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        """uint8 clips (B, T, C, H, W) -> floats in [0, 1] on the device."""
        return torch.from_numpy(np.ascontiguousarray(np.stack(clips))).to(self.device).float().div(255)

    def _banks(self, model: Predictor, count: int) -> list | None:
        if not has_memory(model):
            return None
        fusion = model.fusion()  # one cell object for the batch: write_all fuses in one call
        return [make_bank(self.memory, fusion) for _ in range(count)]

    def teacher_probability(self) -> float:
        """Chance that a future input is the true frame: 1 at the start, 0 from
        ``teacher_share`` of the steps on."""
        horizon = self.config.teacher_share * self.config.steps
        return max(0.0, 1.0 - self.step / horizon) if horizon > 0 else 0.0

    def train_step(self) -> dict[str, float]:
        set_learning_rate(self.optimizer, cosine_to_a_tenth(self.config.lr, self.step, self.config.steps))
        frames = self._frames(self.source.sample(self.rng, self.config.batch))
        future = FRAMES - OBSERVED
        teacher = torch.from_numpy(self.rng.random((self.config.batch, future)) < self.teacher_probability())
        self.model.train()
        predicted = self.model.rollout(
            frames[:, :OBSERVED], future, self._banks(self.model, self.config.batch),
            truth=frames[:, OBSERVED:], teacher=teacher.to(self.device),
        )
        first = self.model.first_predicted
        truth = frames[:, first:]
        error = (predicted - truth).abs()
        loss_shrink = shrinkage(error) if self.config.loss == "shrinkage" else error.pow(2).mean()
        loss_gradient = scale_invariant_gradient(predicted, truth)
        loss = loss_shrink + self.config.gradient_weight * loss_gradient
        take_step(self.optimizer, loss)
        self._average()
        self.step += 1
        ahead = slice(OBSERVED - first, None)
        mse = frame_mse(predicted[:, ahead].detach().flatten(0, 1), truth[:, ahead].flatten(0, 1)).mean().item()
        return {"loss": loss.item(), "shrink": loss_shrink.item(), "gradient": loss_gradient.item(), "mse": mse}

    @torch.no_grad()
    def _average(self) -> None:
        decay = polyak_decay(self.config.ema, self.step)
        for mine, averaged in zip(self.model.parameters(), self.average.parameters(), strict=True):
            averaged.lerp_(mine, 1 - decay)
        for mine, averaged in zip(self.model.buffers(), self.average.buffers(), strict=True):
            averaged.copy_(mine)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Per-frame MSE, MAE (summed over pixels) and SSIM of the averaged model over the
        10 predicted frames of the validation sequences, against copying the last frame."""
        self.average.eval()
        scores = {"mse": [], "mae": [], "ssim": [], "copy_last_mse": []}
        stream = self.val_source.validation(self.config.val_sequences)
        for chunk in batches(stream, self.config.batch):
            clips = self._frames(chunk)
            banks = self._banks(self.average, len(chunk))
            future = self.average.rollout(clips[:, :OBSERVED], FRAMES - OBSERVED, banks)[:, OBSERVED - self.average.first_predicted :]
            future, frames = future.flatten(2, 3), clips.flatten(2, 3)  # channels stacked: scores over every pixel
            truth = frames[:, OBSERVED:]
            for mine, true, last in zip(future, truth, frames[:, OBSERVED - 1], strict=True):
                scores["mse"].append(frame_mse(mine, true).mean().item())
                scores["mae"].append(frame_mae(mine, true).mean().item())
                scores["ssim"].append(ssim(mine, true).mean().item())
                scores["copy_last_mse"].append(frame_mse(last.expand_as(true), true).mean().item())
        return {name: round(float(np.mean(values)), 4) for name, values in scores.items()}

    def save_checkpoint(self) -> None:
        own = {
            "model": self.model.state_dict(),
            "average": self.average.state_dict(),
            "config": json.dumps(asdict(self.config)),
        }
        save_run_state(self.run_dir, self.optimizer, self.step, self.rng, self.history, own)

    def load_checkpoint(self) -> None:
        state = load_run_state(self.run_dir, self.device, self.optimizer, self.rng)
        self.model.load_state_dict(state["model"])
        self.average.load_state_dict(state["average"])
        self.step, self.history = state["step"], state["history"]

    def save_model(self) -> Path:
        """The averaged weights as safetensors; the metadata rebuilds the architecture."""
        path = self.run_dir / MODEL
        tensors, metadata = predictor_file(self.average, steps=str(self.step), seed=str(self.config.seed))
        write_file_atomically(path, lambda staging: save_file(tensors, str(staging), metadata=metadata), force=True)
        return path

    def run(self, log, val_every: int, checkpoint_every: int) -> Path:
        """Train to ``config.steps``, validating every ``val_every`` steps; the averaged model."""
        while self.step < self.config.steps:
            target = min(self.config.steps, (self.step // val_every + 1) * val_every)
            run_steps(self, target, log, every=min(50, val_every), checkpoint_every=checkpoint_every)
            scores = self.validate()
            self.history.append({"step": self.step, "val": scores})
            log(f"validation at step {self.step}: " + ", ".join(f"{k} {v}" for k, v in scores.items()))
        self.save_checkpoint()
        return self.save_model()


