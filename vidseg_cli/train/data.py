"""Training clips for VOS: real video clips and clips made from still images.

Both come from a dataset in DAVIS layout. A video clip takes ``length`` frames in order
with random gaps up to ``max_gap`` (the curriculum widens it as training goes). A still
clip takes one frame and its mask and moves them by random affine warps, with a second
object sliding over it as an occluder: the static-image pre-training of STM and STReMN.
Every clip gets a random scale and crop, a horizontal flip and colour jitter.

All randomness comes from one ``numpy.random.Generator``, so a seed fixes every clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import natural_key


@dataclass(frozen=True)
class Clip:
    images: torch.Tensor  # (T, 3, H, W) float RGB in [0, 255]
    masks: torch.Tensor  # (T, H, W) int64: 0 background, 1 the object


@dataclass(frozen=True)
class _Video:
    name: str
    frames: list[Path]
    masks: list[Path]


class ClipSampler:
    def __init__(self, root: Path, length: int, crop: tuple[int, int], rng: np.random.Generator) -> None:
        self.videos = _scan(root)
        self.length = length
        self.crop = crop
        self.rng = rng
        # (video, frame) pairs whose object is visible: the still-image source
        self._stills = [(v, i) for v in range(len(self.videos)) for i in range(0, len(self.videos[v].frames), 5)]
        self._long_enough = [v for v in self.videos if len(v.frames) >= length]
        if not self._long_enough:
            raise VidsegError(f"no sequence under {root} has the {length} frames a training clip needs")

    def sample(self, max_gap: int, still: bool) -> Clip:
        for _ in range(20):  # crops that lose the object are drawn again
            clip = self._still_clip() if still else self._video_clip(max_gap)
            if clip is not None:
                return clip
        raise VidsegError("could not draw a training clip with a visible object in 20 tries")

    # -- clip sources --

    def _video_clip(self, max_gap: int) -> Clip | None:
        video = self._long_enough[self.rng.integers(len(self._long_enough))]
        count = len(video.frames)
        gaps = self.rng.integers(1, max(1, min(max_gap, (count - 1) // (self.length - 1))) + 1, size=self.length - 1)
        start = self.rng.integers(0, count - int(gaps.sum()))
        indices = start + np.concatenate([[0], np.cumsum(gaps)])
        if self.rng.random() < 0.5:
            indices = indices[::-1]
        images = torch.stack([_image(video.frames[i]) for i in indices])
        masks = torch.stack([_mask(video.masks[i]) for i in indices])
        return self._finish(images, masks)

    def _still_clip(self) -> Clip | None:
        video, index = self._stills[self.rng.integers(len(self._stills))]
        image, mask = _image(self.videos[video].frames[index]), _mask(self.videos[video].masks[index])
        if mask.sum() < 100:
            return None
        frames = [self._warp(image, mask, identity=t == 0) for t in range(self.length)]
        images = torch.stack([f[0] for f in frames])
        masks = torch.stack([f[1] for f in frames])
        images, masks = self._occlude(images, masks)
        return self._finish(images, masks)

    # -- augmentation --

    def _warp(self, image: torch.Tensor, mask: torch.Tensor, identity: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if identity:
            return image, mask
        angle = math.radians(self.rng.uniform(-20, 20))
        scale = self.rng.uniform(0.85, 1.15)
        shear = self.rng.uniform(-0.1, 0.1)
        tx, ty = self.rng.uniform(-0.1, 0.1, size=2)
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[cos, -sin + shear, tx], [sin, cos, ty]], dtype=torch.float32)
        return _affine(image, theta, "bilinear"), _affine(mask[None].float(), theta, "nearest")[0].long()

    def _occlude(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slide another frame's object across the clip, on top of ours."""
        video, index = self._stills[self.rng.integers(len(self._stills))]
        other, other_mask = _image(self.videos[video].frames[index]), _mask(self.videos[video].masks[index])
        if other_mask.sum() < 100 or self.rng.random() < 0.3:
            return images, masks
        other = F.interpolate(other[None], size=images.shape[-2:], mode="bilinear", align_corners=False)[0]
        other_mask = F.interpolate(other_mask[None, None].float(), size=images.shape[-2:], mode="nearest")[0, 0]
        shrink = self.rng.uniform(0.3, 0.6)
        start, end = self.rng.uniform(-0.6, 0.6, size=(2, 2))
        for t in range(1, len(images)):  # the first frame stays unoccluded: its mask is the prompt
            offset = start + (end - start) * t / max(1, len(images) - 1)
            theta = torch.tensor([[1 / shrink, 0, offset[0]], [0, 1 / shrink, offset[1]]], dtype=torch.float32)
            cover = _affine(other_mask[None], theta, "nearest")[0]
            moved = _affine(other, theta, "bilinear")
            images[t] = images[t] * (1 - cover) + moved * cover
            masks[t] = masks[t] * (1 - cover.long())
        return images, masks

    def _finish(self, images: torch.Tensor, masks: torch.Tensor) -> Clip | None:
        images, masks = self._scale_and_crop(images, masks)
        if masks[0].sum() < 0.01 * masks[0].numel():
            return None
        if self.rng.random() < 0.5:
            images, masks = images.flip(-1), masks.flip(-1)
        return Clip(self._jitter(images), masks)

    def _scale_and_crop(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = self.crop
        scale = max(self.rng.uniform(0.8, 1.25), height / images.shape[-2], width / images.shape[-1])
        size = (max(height, round(images.shape[-2] * scale)), max(width, round(images.shape[-1] * scale)))
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
        top = self.rng.integers(0, size[0] - height + 1)
        left = self.rng.integers(0, size[1] - width + 1)
        return images[..., top : top + height, left : left + width], masks[..., top : top + height, left : left + width]

    def _jitter(self, images: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation: one draw per clip plus a little per frame."""
        t = len(images)
        brightness = self.rng.uniform(-20, 20) + self.rng.uniform(-5, 5, size=t)
        contrast = self.rng.uniform(0.8, 1.2) * self.rng.uniform(0.97, 1.03, size=t)
        saturation = self.rng.uniform(0.8, 1.2)
        grey = images.mean(1, keepdim=True)
        images = grey + (images - grey) * saturation
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * _column(contrast) + mean + _column(brightness)
        return images.clamp(0, 255)


def _column(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)


def _affine(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    """Warp (C, H, W) by a 2x3 matrix in normalised coordinates; outside is zero."""
    grid = F.affine_grid(theta[None], [1, *x.shape], align_corners=False)
    return F.grid_sample(x[None], grid, mode=mode, padding_mode="zeros", align_corners=False)[0]


def _image(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float()


def _mask(path: Path) -> torch.Tensor:
    """Any non-zero pixel is the object (DAVIS 2016 has one per sequence; some masks are LA)."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("L") if image.mode in ("LA", "RGBA", "RGB") else image)
    return torch.from_numpy((array > 0).astype(np.int64))


def _scan(root: Path) -> list[_Video]:
    images, annotations = root / "JPEGImages", root / "Annotations"
    if not images.is_dir() or not annotations.is_dir():
        raise VidsegError(f"{root} is not in DAVIS layout (JPEGImages/<seq>/, Annotations/<seq>/)")
    videos = []
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        frames = sorted(folder.glob("*.jpg"), key=natural_key)
        masks = [annotations / folder.name / f"{f.stem}.png" for f in frames]
        if len(frames) >= 2 and all(m.is_file() for m in masks):
            videos.append(_Video(folder.name, frames, masks))
    if not videos:
        raise VidsegError(f"no usable sequences (frames with a mask each) under {images}")
    return videos
