"""`vidseg train vos` and `vidseg train calibrate`: the learned VOS memory network."""

from __future__ import annotations

import itertools
import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import comma_list, stderr, user_errors
from vidseg_cli.cli.train.run_folder import crop_size, open_run, pair, pair_text, train_in
from vidseg_cli.engine.job import pick_device
from vidseg_cli.engine.threads import use_all_cores
from vidseg_cli.errors import VidsegError
from vidseg_cli.io.outputs import refuse_existing, resolve_output
from vidseg_cli.memory.fusion_cell import FUSION_CANDIDATES
from vidseg_cli.memory.policies import UPDATE_RULES
from vidseg_cli.models.registry import backbone
from vidseg_cli.options import MAX_SIZE, MAX_SLOTS, MIN_SIZE, MemoryOptions
from vidseg_cli.vos.bench import Config, evaluate
from vidseg_cli.vos.clips import ClipSampler
from vidseg_cli.vos.davis import load_davis
from vidseg_cli.vos.memnet import MemNetConfig, MemoryNetwork
from vidseg_cli.vos.models import load_memnet, with_settings
from vidseg_cli.vos.train import TRAINED_PARTS, TrainConfig, Trainer, make_generator, run_training, save_model
from vidseg_cli.weights.registry import file_sha256

TrainedParts = Enum("TrainedParts", {name: name for name in TRAINED_PARTS}, type=str)
FusionCandidate = Enum("FusionCandidate", {name: name for name in FUSION_CANDIDATES}, type=str)


@user_errors
@flags.taking(flags.RunFlags)
def train_vos_command(
    data: flags.DavisData,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, model.safetensors, config.json, train.log.")],
    val: Annotated[Path | None, typer.Option(help="Validation data in DAVIS layout (J&F at intervals).")] = None,
    steps: flags.ClipSteps = TrainConfig.steps,
    seed: flags.Seed = 0,
    clip_length: Annotated[int, typer.Option(min=2, max=1000, help="Frames per clip.")] = TrainConfig.clip_length,
    slots: Annotated[int, typer.Option(min=1, max=MAX_SLOTS, help="stremn slots during training (< clip length - 1 to fuse).")] = TrainConfig.slots,
    update: Annotated[str, typer.Option(help="stremn update rules drawn from per training clip, e.g. ABCD or C.")] = TrainConfig.rules,
    crop: flags.Crop = "256x384",
    lr: flags.AdamLR = TrainConfig.lr,
    finetune_blocks: Annotated[int, typer.Option(help="Also train the last N of the backbone's 11 blocks (0: frozen).")] = 0,
    max_gap: Annotated[str, typer.Option(help="Curriculum: widest frame gap at the start and the end, START,END.")] = pair_text(TrainConfig.max_gap),
    top_p: Annotated[str, typer.Option(help="Bootstrapped CE: share of hardest pixels kept at the start and the end, START,END.")] = pair_text(TrainConfig.top_p),
    still_share: Annotated[str, typer.Option(help="Curriculum: share of clips made from one still image at the start and the end, START,END.")] = pair_text(TrainConfig.still_share),
    extra_share: Annotated[str, typer.Option(help="Curriculum: share of clips with 1-2 objects cut from other frames pasted in (moving, occluding), START,END.")] = pair_text(TrainConfig.extra_share),
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
    run: flags.RunFlags = flags.RunFlags(),
) -> None:
    """Train the memory network (keys, values, decoder, fusion cell) on a frozen backbone."""
    if clip_length < 2:
        raise VidsegError("--clip-length must be at least 2")
    if not 0 <= finetune_blocks <= 11:
        raise VidsegError("--finetune-blocks must be between 0 and 11")
    gaps = pair("--max-gap", max_gap, int)
    shares = pair("--top-p", top_p, float)
    stills = pair("--still-share", still_share, float)
    extras = pair("--extra-share", extra_share, float)
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
        steps=steps, clip_length=clip_length, slots=slots, rules=update, crop=crop_size(crop), lr=lr, seed=seed,
        finetune_blocks=finetune_blocks, max_gap=gaps, top_p=shares, still_share=stills,
        extra_share=extras, scene_share=scene_share, static_share=static_share, region_share=region_share, ema=ema, init=file_sha256(init) if init is not None else "", train=train.value, fusion_distill=fusion_distill,
        model=model.config,
    )
    target = open_run(out, run, [data, val, init, backgrounds])
    model = model.to(target)
    sampler = ClipSampler(data, config.clip_length, config.crop, rng, multi_object=True, backgrounds=backgrounds)
    trainer = Trainer(model, sampler, config, out, target)
    validate = _validator(model, val, val_size, target) if val is not None else None
    train_in(
        out, trainer, config, run,
        lambda step: f"training {config.steps} steps from step {step} on {target} (seed {seed})",
        lambda log: run_training(trainer, log, validate, checkpoint_every=run.checkpoint_every, validate_every=val_every),
    )


def _starting_model(init: Path | None, candidate: FusionCandidate | None) -> MemoryNetwork:
    """Fresh heads, or a trained model to go on from (its architecture comes with it)."""
    if init is None:
        return MemoryNetwork(backbone(), MemNetConfig(fusion_candidate=(candidate or FusionCandidate.tanh).value))
    if not init.is_file():
        raise VidsegError(f"--init: no model file at {init}")
    return load_memnet(init, candidate.value if candidate is not None else None)  # same tensors, any candidate



def _validator(model: MemoryNetwork, root: Path, size: int, device: torch.device):
    sequences = load_davis(root)
    config = Config("memnet", size, MemoryOptions())

    def validate() -> dict:
        model.heads.eval()
        return evaluate(model, sequences, config, device)

    return validate



@user_errors
def train_calibrate_command(
    model: Annotated[Path, typer.Option(help="A model file from vidseg train vos.")],
    data: Annotated[Path, typer.Option(help="Validation data in DAVIS layout (the settings are chosen on it).")],
    out: Annotated[Path, typer.Option(help="Where to write the calibrated model (.safetensors).")],
    bias: Annotated[str, typer.Option(help="Comma list of logit biases to try.")] = "0,0.5,1,1.5,2",
    topk: Annotated[str | None, typer.Option(help="Comma list of top-k values to try (default: the model's).")] = None,
    fusion_candidate: Annotated[FusionCandidate | None, typer.Option(help="How the fusion cell uses its tensors (default: the model's).")] = None,
    size: Annotated[int, typer.Option(min=MIN_SIZE, max=MAX_SIZE, help="Internal size for validation.")] = 360,
    device: flags.DeviceOption = flags.Device.auto,
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

