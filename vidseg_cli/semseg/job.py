"""`vidseg semseg`: a class for every pixel of every frame, each frame reading a memory of
the frames before it (the semseg head over the shared MemoryBank and policies)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vidseg_cli.engine.job import default_output, make_bank, peak_rss_bytes, pick_device
from vidseg_cli.engine.threads import adapt, threads_used, use_all_cores
from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import open_frames
from vidseg_cli.io.outputs import StagedOutput, check_complete, run_fingerprint
from vidseg_cli.io.sink import Colours, Prediction
from vidseg_cli.io.sinks import open_sinks, write_all, write_error
from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.memory.fusion import TrainingFreeFusion
from vidseg_cli.models.registry import with_runtime
from vidseg_cli.options import NO_MEMORY, SEMSEG_FORMATS, SemsegOptions
from vidseg_cli.semseg.model import SemsegNetwork, create_semseg, processing_size, with_read, work_size

CLASSES_FILE = "classes.json"


@dataclass
class SemsegSummary:
    input: str
    output: str
    model: str
    frames: int
    fps: float
    peak_rss_mb: float
    memory: str
    slots: int  # the most the bank held
    bank_bytes: int
    class_share: dict[str, float]  # each class's share of all pixels of the video
    threads: dict  # what the network ran with (engine/threads.py)


def class_table(metadata: dict[str, str]) -> list[dict]:
    """[{id, name, colour}] from a model file's metadata."""
    try:
        return json.loads(metadata["classes"])
    except (KeyError, ValueError):
        raise VidsegError("the semseg model file does not name its classes (metadata 'classes')") from None


def colours_of(classes: list[dict]) -> Colours:
    palette = np.zeros((256, 3), np.uint8)
    for entry in classes:
        palette[entry["id"]] = entry["colour"]
    legend = tuple((entry["name"], tuple(entry["colour"])) for entry in classes)
    return Colours(palette, background=None, legend=legend)


SEMSEG_SINKS = tuple(name for name in SEMSEG_FORMATS if name != "all")  # no mattes: a class is no object


def semseg(options: SemsegOptions, progress=None) -> SemsegSummary:
    """Label every frame of INPUT; raises VidsegError on bad input, publishes atomically."""
    device = pick_device(options.device)
    use_all_cores(adaptive=True)
    network, metadata = create_semseg(options.model, device)
    network = with_runtime(with_read(network, options.read, options.radius), options.runtime, device)
    classes = class_table(metadata)
    size = options.size or processing_size(options.model)
    bank = _bank(options)
    source = open_frames(options.input)
    target, run = options.out or default_output(options.input, "semseg"), run_fingerprint(options, [options.input])
    if options.resume:
        check_complete(target, run, [options.input])  # a re-run of finished work: nothing to do
    staged = StagedOutput(target, force=options.force, inputs=[options.input], run=run)
    counts = np.zeros(256, np.int64)
    frames, most_slots, most_bytes = 0, 0, 0
    started = time.perf_counter()
    try:
        class_ids = tuple(c["id"] for c in classes)
        with open_sinks(
            options.format, staged.staging, source.time_base, class_ids, colours_of(classes), every=SEMSEG_SINKS
        ) as sinks:
            for frame in source:
                adapt()
                labels = label_frame(network, bank, frame.image, frame.index, size, device)
                write_all(sinks, frame, Prediction(labels, None, ()))
                counts += np.bincount(labels.ravel(), minlength=256)
                frames += 1
                if bank is not None:
                    most_slots, most_bytes = max(most_slots, len(bank)), max(most_bytes, bank.nbytes)
                if progress:
                    progress(frames, source.count)
        try:
            (staged.staging / CLASSES_FILE).write_text(json.dumps(classes, indent=2) + "\n")
        except OSError as error:
            raise write_error(error) from None
        staged.commit()
    except BaseException:
        staged.abort()
        raise
    finally:
        source.close()
    seconds = time.perf_counter() - started
    total = max(1, int(counts.sum()))
    return SemsegSummary(
        input=str(options.input), output=str(staged.target), model=options.model, frames=frames,
        fps=round(frames / max(seconds, 1e-9), 2), peak_rss_mb=round(peak_rss_bytes() / 2**20, 1),
        memory=options.memory.memory, slots=most_slots, bank_bytes=most_bytes,
        class_share={c["name"]: round(int(counts[c["id"]]) / total, 4) for c in classes}, threads=threads_used(),
    )


def _bank(options: SemsegOptions) -> MemoryBank | None:
    if options.memory.memory == NO_MEMORY:
        return None
    # stremn distils a dropped frame into a kept one; the semseg head has no learned cell
    # of its own, so the training-free one does it (values are features: it handles them)
    fusion = TrainingFreeFusion() if options.memory.memory == "stremn" else None
    return make_bank(options.memory, fusion)


@torch.inference_mode()
def label_frame(
    network: SemsegNetwork, bank: MemoryBank | None, image: np.ndarray, index: int, size: int, device: torch.device
) -> np.ndarray:
    """(H, W) uint8 class ids of one frame, computed at ``size`` (short side)."""
    height, width = image.shape[:2]
    work = work_size(height, width, size)
    pixels = torch.as_tensor(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float()
    resized = F.interpolate(pixels[None], size=work, mode="bilinear", align_corners=False, antialias=work[0] < height)[0]
    probabilities, slot = network.step(resized, bank.slots if bank is not None else None, index, remember=bank is not None)
    if bank is not None:
        bank.write(slot)
    probabilities = F.interpolate(probabilities[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    # max(0).indices, not argmax(0): the same first maximum, but PyTorch's CPU argmax over the
    # outer dimension took 30 ms for 11 x 480 x 360, max 4 ms
    return probabilities.max(0).indices.to(torch.uint8).cpu().numpy()
