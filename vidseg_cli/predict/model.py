"""The STReMN video predictor (section 4.2) on the shared memory engine.

Step t sees the stack (I_{t-3}, I_{t-2}, I_{t-1}) (``history`` frames, if more); an encoder of 6 blocks (two 3x3
convolutions, GroupNorm, LeakyReLU) turns it into features, a key (unit vectors) and a
value; the key reads the session's MemoryBank (the same bank, policies and learned fusion
cell as segment, with one "object": the scene), and a decoder of 6 blocks of two
(stride-1 transposed, i.e. plain) convolutions turns features and readout into I_t. Predicted frames are fed
back as inputs for the frames after the observed ones.

Sizing for a 2-core CPU: the frames are folded into 4x4 patches first (space to depth,
64x64x1 -> 16x16x16, as PredRNN and OpenSTL run Moving MNIST), so every layer runs at
16x16. The decoder predicts a change of I_{t-1}'s logit, so an untrained model already
copies the last frame, the baseline to beat, instead of drawing a grey blur.

With ``shift_radius`` R > 0 the decoder also predicts, for each 4x4 patch, a distribution
over the (2R+1)^2 integer shifts of I_{t-1} (a dynamic filter, De Brabandere et al. 2016),
and the change applies to the logit of the shifted frame. Why: a digit moving 3-4 pixels a
step is one weight on the right shift, reachable by a softmax whose every candidate gets a
gradient, where drawing the moved digit through the logit change has to be learnt pixel by
pixel (the plateau in docs/training.md). The kernel's centre starts heavy, so an untrained
model still copies the last frame. ``shift_kernel="pixel"`` gives every pixel its own
distribution; ``shift_kernel="splat"`` gives every patch of I_{t-1} a distribution over
where it goes and moves it there (predict/motion.py), adding what arrives as on Moving
MNIST's blank canvas, and ``"splat-average"`` averages it for opaque real scenes;
``commit`` moves by the most likely shift instead of the blend (measured to cost MSE where
the move is uncertain: docs/training.md). ``recurrent`` adds a convolutional GRU state carried from step to step,
for what three frames cannot show; ``moves`` gives the shift head each pixel's moves over
the last ``history`` frames, found by block matching, through a small per-patch reader.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.errors import VidsegError
from vidseg_cli.memory.bank import MemoryBank, write_all
from vidseg_cli.memory.fusion_cell import FusionCell, LearnedFusion
from vidseg_cli.memory.readout import read_values_many
from vidseg_cli.memory.slot import Slot
from vidseg_cli.models.config import JsonConfig
from vidseg_cli.predict.motion import SHIFT_KERNELS, move_history, moves_into
from vidseg_cli.predict.peers import PEERS
from vidseg_cli.weights.registry import checkpoint

ARCH = "predict-stremn"
STACK = 3  # frames a step needs at least: the first frame predicted is I_3
STILL = 0.9  # the untrained shift head's weight on the zero move (``Predictor.start_still``)
# never: every frame is the mixture of shifts (a blur where the move is uncertain);
# fed: the frame fed back to the next step is moved by the most likely shift, the one
#   scored is the mixture, so one step's uncertainty blurs that step only, not the next;
# always: every frame is moved by the most likely shift (straight-through in training)
COMMITS = ("never", "fed", "always")


class Carried(NamedTuple):
    """What a video's step passes to its next: each is None where the model keeps none."""

    gru: torch.Tensor | None  # the recurrent state (``recurrent``)
    fields: torch.Tensor | None  # (B, history - 1, 2, h, w): each patch's moves between the stack's frames (``moves``)


class Step(NamedTuple):
    predicted: torch.Tensor  # (B, C, H, W): frame t, as scored
    fed: torch.Tensor  # what the next step sees when this frame is fed back
    carried: Carried  # for the next step


@dataclass(frozen=True)
class PredictorConfig(JsonConfig):
    channels: int = 1  # 1 grey, 3 colour
    frame_height: int = 64  # the resolution it was trained at; inputs are resized to it
    frame_width: int = 64
    patch: int = 4  # space-to-depth factor
    width: int = 64  # feature channels of every block
    key_dim: int = 32
    value_dim: int = 64
    blocks: int = 6
    topk: int = 0  # memory pixels each query reads; 0 = all
    fusion_hidden: int = 32
    shift_radius: int = 0  # 0: the logit change alone; R: also a distribution over shifts of I_{t-1} by up to R pixels
    shift_kernel: str = "patch"  # one shift distribution per p x p patch, or per "pixel"
    commit: str = "never"  # where a frame is moved by each kernel's most likely shift instead of the mixture (COMMITS)
    recurrent: bool = False  # a convolutional GRU state carried from step to step (how a motion's phase is read from a long history)
    history: int = STACK  # frames each step reads, I_{t-history} .. I_{t-1}; before the first frame they are blank
    moves: bool = False  # the shift head also reads each pixel's moves over those frames (predict/motion.py)


def _per_patch(config: PredictorConfig) -> int:
    """Shift kernels per patch: one, or one per pixel."""
    return config.patch**2 if config.shift_kernel == "pixel" else 1


def _set_still(layer: nn.Conv2d, config: PredictorConfig, share: float) -> None:
    """Zero scores, but the zero move's at log(odds x shifts): its softmax weight is about
    ``share`` (0.9 gives 0.901 of 81 shifts, exactly the first models' start)."""
    shifts = (2 * config.shift_radius + 1) ** 2
    with torch.no_grad():
        layer.bias.zero_()
        layer.bias.view(shifts, _per_patch(config))[shifts // 2] = math.log(share / (1 - share) * shifts)


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with GroupNorm and LeakyReLU. The decoder's "deconvolution"
    blocks are the same: at stride 1 a transposed convolution is a convolution with a
    flipped kernel, and PyTorch runs ConvTranspose2d on a slow path on the CPU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.LeakyReLU(0.2, inplace=True),
    )


class _ConvGru(nn.Module):
    """A convolutional GRU cell (Ballas et al. 2016): the state starts at zero and keeps
    what three frames cannot show, e.g. whether a digit moving 3.6 pixels a step moves 3 or
    4 next."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gates = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.candidate = nn.Conv2d(2 * width, width, 3, padding=1)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        state = torch.zeros_like(x) if state is None else state
        update, reset = torch.sigmoid(self.gates(torch.cat([x, state], 1))).chunk(2, 1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * state], 1)))
        return state + update * (candidate - state)


class Predictor(nn.Module):
    """Stateless: the memory lives in a ``MemoryBank`` the caller owns (one per video)."""

    arch = ARCH
    first_predicted = STACK  # the first frame index a rollout returns

    def __init__(self, config: PredictorConfig = PredictorConfig()) -> None:
        super().__init__()
        if config.shift_kernel not in SHIFT_KERNELS or config.commit not in COMMITS:
            raise ValueError(f"shift_kernel {config.shift_kernel!r}, commit {config.commit!r}: one of {tuple(SHIFT_KERNELS)}, {COMMITS}")
        if config.history < STACK:
            raise ValueError(f"history {config.history}: at least {STACK}")
        if config.moves and not config.shift_radius:
            raise ValueError("moves score shifts: give shift_radius too")
        self.config = config
        folded = config.channels * config.patch**2
        widths = [config.history * folded] + [config.width] * config.blocks
        self.encoder = nn.Sequential(*(_block(a, b) for a, b in zip(widths, widths[1:])))
        self.motion = _ConvGru(config.width) if config.recurrent else None
        if self.motion is not None:  # the state joins the features through a zero-initialised 1x1: a model trained
            self.motion_out = nn.Conv2d(config.width, config.width, 1)  # without it starts out unchanged
            nn.init.zeros_(self.motion_out.weight)
            nn.init.zeros_(self.motion_out.bias)
        self.key = nn.Conv2d(config.width, config.key_dim, 1)
        self.value = nn.Conv2d(config.width, config.value_dim, 3, padding=1)
        decoder_widths = [config.width + config.value_dim] + [config.width] * config.blocks
        self.decoder = nn.Sequential(*(_block(a, b) for a, b in zip(decoder_widths, decoder_widths[1:])))
        self.out = nn.Conv2d(config.width, folded, 1)
        nn.init.zeros_(self.out.weight)  # starts as copy-last (see the module docstring)
        nn.init.zeros_(self.out.bias)
        self.shifts = self._shift_scores(config) if config.shift_radius else None
        self.move_reader = self._move_reader(config) if config.moves else None
        self.log_read_scale = nn.Parameter(torch.tensor(float(config.key_dim) ** 0.5).log())
        self.fusion_cell = FusionCell(config.key_dim, config.value_dim, config.fusion_hidden)

    @staticmethod
    def _shift_scores(config: PredictorConfig) -> nn.Conv2d:
        """Each patch's (or each of its p^2 pixels') scores of the (2R+1)^2 shifts; the centre
        (no shift) starts with ~90% of the softmax's weight (``start_still``), so the
        untrained model nearly copies the last frame."""
        layer = nn.Conv2d(config.width, (2 * config.shift_radius + 1) ** 2 * _per_patch(config), 1)
        nn.init.zeros_(layer.weight)
        _set_still(layer, config, STILL)
        return layer

    def start_still(self, share: float) -> None:
        """Give the untrained shift head's zero move about ``share`` of every kernel's weight.
        Where frames change little (real video) the default 0.9 blurs each predicted frame,
        and the blur compounds over a rollout: 0.99 starts near copy-last (docs/training.md)."""
        if self.shifts is not None:
            _set_still(self.shifts, self.config, share)

    @staticmethod
    def _move_reader(config: PredictorConfig) -> nn.Sequential:
        """A per-patch MLP from a patch's last ``history - 1`` moves to scores of its next
        shift; the last layer starts at zero, so the reader starts out changing nothing."""
        shifts, hidden = (2 * config.shift_radius + 1) ** 2, 32
        reader = nn.Sequential(
            nn.Conv2d(2 * (config.history - 1), hidden, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(hidden, shifts, 1),
        )
        nn.init.zeros_(reader[-1].weight)
        nn.init.zeros_(reader[-1].bias)
        return reader

    def fusion(self) -> LearnedFusion:
        return LearnedFusion(self.fusion_cell)

    def stack(self, recent: Sequence[torch.Tensor]) -> torch.Tensor:
        """The input of a step, (B, history, C, H, W), from the frames seen so far (each
        (B, C, H, W), at least ``STACK`` of them, the last being I_{t-1}): the last
        ``history`` of them, with blank frames standing for those before the video's first.
        Blank, not the first frame repeated: that would show a moving thing standing still."""
        recent = list(recent[-self.config.history :])
        blank = [torch.zeros_like(recent[0])] * (self.config.history - len(recent))
        return torch.stack(blank + recent, dim=1)

    def step(
        self, frames: torch.Tensor, banks: Sequence[MemoryBank] | None, frame: int, carried: Carried | None = None,
    ) -> Step:
        """frames: (B, history, C, H, W) in [0, 1], I_{t-history} .. I_{t-1} of B videos
        (``stack`` makes it); returns I_t (B, C, H, W), the frame to feed back and what to
        carry to the next step (``carried`` None: a video's first step; otherwise it must
        come from the step just before, whose stack was this one less its last frame), and
        writes each video's key and value into its own bank.

        The network, the memory read and the fusion cell run batched, while each video's
        policy makes its own choices (which slot to fuse, which to drop), as at inference,
        where B is 1. ``banks`` None: no memory (the read gives zeros), the single-frame
        network of ``--memory none``.
        """
        carried = carried or Carried(None, None)
        folded = F.pixel_unshuffle(frames.flatten(1, 2), self.config.patch)  # (B, history C p^2, h, w)
        features, state = self.encoder(folded), carried.gru
        if self.motion is not None:
            state = self.motion(features, state)
            features = features + self.motion_out(state)
        keys = F.normalize(self.key(features), dim=1)  # (B, Ck, h, w)
        values = self.value(features)  # (B, Cv, h, w): one "object" per video, the scene
        if banks and banks[0].slots:  # a batch's banks hold the same number of slots: policies count alike
            memories = [bank.slots for bank in banks]
            readout = read_values_many(keys, memories, 1, self.config.topk, self.log_read_scale.exp())[:, 0]
        else:
            readout = torch.zeros_like(values)
        if banks:
            write_all(banks, [Slot(key=key, value=value[None], frame=frame) for key, value in zip(keys, values)])
        decoded = self.decoder(torch.cat([features, readout], dim=1))
        last, change = frames[:, -1], self.out(decoded)
        fields = self._fields(frames, carried.fields)
        carried = Carried(state, fields)
        if self.shifts is None:
            predicted = self._changed(last, change)
            return Step(predicted, predicted, carried)
        scores, commit = self._scores(decoded, fields), self.config.commit
        predicted = self._changed(self._moved(last, scores, hard=commit == "always"), change)
        fed = self._changed(self._moved(last, scores, hard=True), change) if commit == "fed" else predicted
        return Step(predicted, fed, carried)

    def _fields(self, frames: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor | None:
        """(B, history - 1, 2, h, w): each frame's move field from the one before it in the
        stack (``moves``). The stack slides by one frame a step, so only the newest field is
        matched; the others are the last step's."""
        if not self.config.moves:
            return None
        r, p = self.config.shift_radius, self.config.patch
        if before is None:
            return torch.stack([moves_into(frames[:, i], frames[:, i - 1], r, p) for i in range(1, frames.shape[1])], 1)
        return torch.cat([before[:, 1:], moves_into(frames[:, -1], frames[:, -2], r, p)[:, None]], 1)

    def _scores(self, decoded: torch.Tensor, fields: torch.Tensor | None) -> torch.Tensor:
        """The shift scores in the kernel's layout: the decoder's, plus the move reader's
        (per patch, (B, (2R+1)^2, h, w)), shared by a patch's pixels where the kernel is per pixel."""
        scores = self.shifts(decoded)
        if self.move_reader is None:
            return scores
        read = self.move_reader(move_history(fields, self.config.shift_radius, self.config.patch))
        if self.config.shift_kernel != "pixel":
            return scores + read
        b, _, h, w = scores.shape
        return (scores.view(b, read.shape[1], -1, h, w) + read[:, :, None]).view(b, -1, h, w)

    def _changed(self, frame: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """``frame`` with the decoder's change (B, C p^2, h, w) added to its logit."""
        logit = F.pixel_unshuffle(torch.logit(frame.clamp(1e-3, 1 - 1e-3)), self.config.patch) + change
        return torch.sigmoid(F.pixel_shuffle(logit, self.config.patch))

    def _moved(self, frame: torch.Tensor, scores: torch.Tensor, hard: bool = False) -> torch.Tensor:
        """frame (B, C, H, W) moved by the shift kernel's scores (predict/motion.py)."""
        kernel = SHIFT_KERNELS[self.config.shift_kernel]
        return kernel(frame, scores, self.config.shift_radius, self.config.patch, hard)

    def rollout(
        self,
        observed: torch.Tensor,
        future: int,
        banks: Sequence[MemoryBank] | None,
        truth: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """observed: (B, M, C, H, W), M >= 3. Returns the predictions of frames 3 .. M+N-1
        (B, M + N - 3, C, H, W): through the observed frames each step sees true frames (and
        fills the memory); after them the model's own predictions are fed back.

        Training only: where ``teacher`` (B, N) is true, the true future frame ``truth``
        (B, N, C, H, W) is fed back instead (scheduled sampling, as PredRNN trains).
        """
        frames = list(observed.unbind(1))
        predictions, carried = [], None
        for t in range(STACK, observed.shape[1] + future):
            predicted, fed, carried = self.step(self.stack(frames[:t]), banks, t, carried)
            if t >= observed.shape[1]:
                if teacher is not None:
                    use = teacher[:, t - observed.shape[1]].view(-1, 1, 1, 1)
                    fed = torch.where(use, truth[:, t - observed.shape[1]], fed)
                frames.append(fed)
            predictions.append(predicted)
        return torch.stack(predictions, dim=1)


def predictor_file(model: nn.Module, **facts: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a predictor's safetensors file (the metadata rebuilds
    the architecture; ``facts`` record how it was made). Any of ``ARCHITECTURES``."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    return tensors, {"arch": model.arch, "config": model.config.to_json(), **facts}


def build_predictor(arch: str, config_json: str) -> nn.Module:
    """An untrained predictor of a registered architecture from its config's JSON."""
    network, config = ARCHITECTURES[arch]
    return network(config.from_json(config_json))


def load_predictor(path: Path) -> nn.Module:
    """A predictor (ours or a peer) from a safetensors file written by ``vidseg train predict``."""
    from vidseg_cli.models.registry import read_safetensors

    state, metadata = read_safetensors(path)
    if metadata.get("arch") not in ARCHITECTURES or "config" not in metadata:
        raise VidsegError(
            f"{path} is not a video predictor (arch {metadata.get('arch')!r}; "
            f"vidseg predict needs a file from vidseg train predict: {', '.join(ARCHITECTURES)})"
        )
    try:
        model = build_predictor(metadata["arch"], metadata["config"])
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as error:
        raise VidsegError(f"{path}: the weights do not fit the architecture they name: {str(error).splitlines()[0]}") from None
    return model.eval()


def create_predictor(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """A predictor by weights.toml name or .safetensors path, in eval mode on ``device``."""
    spec = checkpoint(name, "predict")
    model = load_predictor(spec.path)
    spec.check_listed(model.config, lambda listed: type(model.config).from_json(json.dumps(listed)))
    return model.to(device)


def has_memory(model: nn.Module) -> bool:
    """Whether a predictor reads a memory bank (ours) or keeps no memory (the peers)."""
    return isinstance(model, Predictor)


# every predictor file names one of these in its metadata: ours, then the peers
ARCHITECTURES = {ARCH: (Predictor, PredictorConfig), **{net.arch: (net, config) for net, config in PEERS.values()}}
