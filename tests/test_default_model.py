"""The default VOS model where users look first: the README's demo clip and a still shot.

Both run the embedded model end to end through `vidseg segment` and score its label PNGs
against the generator's exact truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidseg_cli.io.sinks import save_palette_png
from vidseg_cli.synthetic import DEMO_SIZE, frames_of, write_clip


def _ious(masks: Path, truths: list[np.ndarray]) -> dict[int, list[float]]:
    """Per object, its IoU on every frame after the prompt."""
    objects = sorted(int(i) for i in np.unique(truths[0]) if i)
    scores: dict[int, list[float]] = {k: [] for k in objects}
    for index, truth in enumerate(truths[1:], start=1):
        predicted = np.asarray(Image.open(masks / f"{index:05d}.png"))
        for k in objects:
            union = np.logical_or(predicted == k, truth == k).sum()
            scores[k].append(np.logical_and(predicted == k, truth == k).sum() / union if union else 1.0)
    return scores


@pytest.mark.slow
def test_default_model_tracks_every_object_of_the_demo_clip(vidseg, tmp_path):
    """The README's main job: `python -m vidseg_cli.synthetic demo`, then segment it."""
    clip, mask = write_clip(tmp_path / "demo", 60, *DEMO_SIZE, objects=2, seed=0, style="scene")
    run = vidseg("segment", clip, "--mask", mask, "--out", tmp_path / "masks", "--format", "png")
    assert run.code == 0, run.stderr
    truths = [labels for _, labels in frames_of("scene", 60, *DEMO_SIZE, 2, 0)]
    scores = _ious(tmp_path / "masks", truths)
    assert len(scores) == 2
    assert all(np.mean(s) >= 0.8 for s in scores.values()), {k: round(float(np.mean(s)), 3) for k, s in scores.items()}


@pytest.mark.slow
@pytest.mark.parametrize("style", ["sprites", "scene"])
def test_default_model_keeps_the_mask_of_an_unchanging_frame(vidseg, tmp_path, style):
    """A tripod shot of nothing moving: the mask given on frame 0 holds on every frame."""
    height, width = DEMO_SIZE if style == "scene" else (240, 320)
    image, truth = next(iter(frames_of(style, 1, height, width, 2, 0)))
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(30):
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    save_palette_png(truth, tmp_path / "mask.png")
    run = vidseg("segment", folder, "--mask", tmp_path / "mask.png", "--out", tmp_path / "masks", "--format", "png")
    assert run.code == 0, run.stderr
    scores = _ious(tmp_path / "masks", [truth] * 30)
    assert all(min(s) >= 0.95 for s in scores.values()), {k: round(float(min(s)), 3) for k, s in scores.items()}
