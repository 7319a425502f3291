"""Training clips for VOS: real video clips and clips made from still images.

Both come from a dataset in DAVIS layout. A video clip takes ``length`` frames in order
with random gaps up to ``max_gap`` (the curriculum widens it as training goes). A still
clip takes one frame and its mask and moves them by random affine warps, with a second
object sliding over it as an occluder: the static-image pre-training of STM and STReMN.
Every clip gets a random scale and crop, a horizontal flip and colour jitter.

Several objects (``multi_object``): a dataset's own object ids are kept (palette masks, as
DAVIS 2017), and ``extra`` objects cut from other frames of the dataset are pasted into the
clip, each moving, scaling and turning on its own path, in front of or behind what is
there, so that objects meet and occlude one another; a pasted object that the first frame
does not show well is left unlabelled, a distractor. A scene clip pastes them over a still
image of another domain (``backgrounds``, e.g. CamVid's street frames) seen by a slowly
panning and zooming camera: DAVIS 2016 has one object per sequence and 30 scenes, and a
model trained on it alone drops the second object of a clip.

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
from vidseg_cli.textures import blob


@dataclass(frozen=True)
class Clip:
    images: torch.Tensor  # (T, 3, H, W) float RGB in [0, 255]
    masks: torch.Tensor  # (T, H, W) int64: 0 background, 1 the object

    def to(self, device: torch.device) -> Clip:
        return Clip(self.images.to(device), self.masks.to(device))


@dataclass(frozen=True)
class _Video:
    name: str
    frames: list[Path]
    masks: list[Path]


MAX_OBJECTS = 4  # objects in one clip, pasted ones included
_MIN_SHARE = 0.004  # a pasted object smaller than this on the first frame is left unlabelled


class ClipSampler:
    def __init__(
        self,
        root: Path,
        length: int,
        crop: tuple[int, int],
        rng: np.random.Generator,
        multi_object: bool = False,
        backgrounds: Path | None = None,
    ) -> None:
        self.videos = _scan(root)
        self.length = length
        self.crop = crop
        self.rng = rng
        self.multi_object = multi_object  # False: every mask is one object (the reuse and sparse heads' training)
        self.backgrounds = _scan_images(backgrounds) if backgrounds is not None else []
        # (video, frame) pairs whose object is visible: the still-image source
        self._stills = [(v, i) for v in range(len(self.videos)) for i in range(0, len(self.videos[v].frames), 5)]
        self._long_enough = [v for v in self.videos if len(v.frames) >= length]
        if not self._long_enough:
            raise VidsegError(f"no sequence under {root} has the {length} frames a training clip needs")

    def sample(
        self, max_gap: int, still: bool, extra: int = 0, scene: bool = False, static: bool = False, region: bool = False
    ) -> Clip:
        """A clip: from video (or one still frame, or a scene when there are backgrounds),
        with ``extra`` objects pasted in (multi-object sampling only). A ``static`` still
        clip repeats its frame unmoved (only the colour jitter changes): a camera on a
        tripod, where a model must hand its mask on unchanged instead of letting it drift.
        A ``region`` (still and scene clips) is one more object: a blob-shaped patch of the
        background itself, moving with it, that nothing but the given mask tells apart (a
        camouflaged object, a patch of ground to track): only memory can follow it."""
        for _ in range(20):  # crops that lose the object are drawn again
            if scene and self.backgrounds:
                clip = self._scene_clip(max(1, extra), region)
            else:
                clip = self._still_clip(extra, static, region) if still else self._video_clip(max_gap, extra)
            if clip is not None:
                return clip
        raise VidsegError("could not draw a training clip with a visible object in 20 tries")

    # -- clip sources --

    def _video_clip(self, max_gap: int, extra: int = 0) -> Clip | None:
        video = self._long_enough[self.rng.integers(len(self._long_enough))]
        count = len(video.frames)
        gaps = self.rng.integers(1, max(1, min(max_gap, (count - 1) // (self.length - 1))) + 1, size=self.length - 1)
        start = self.rng.integers(0, count - int(gaps.sum()))
        indices = start + np.concatenate([[0], np.cumsum(gaps)])
        if self.rng.random() < 0.5:
            indices = indices[::-1]
        images = torch.stack([_image(video.frames[i]) for i in indices])
        masks = torch.stack([self._mask(video.masks[i]) for i in indices])
        return self._finish(*self._paste(images, masks, extra))

    def _still_clip(self, extra: int = 0, static: bool = False, region: bool = False) -> Clip | None:
        video, index = self._stills[self.rng.integers(len(self._stills))]
        image, mask = _image(self.videos[video].frames[index]), self._mask(self.videos[video].masks[index])
        if (mask > 0).sum() < 100:
            return None
        if region and self.multi_object:
            mask = self._with_region(mask)
        if static:
            return self._finish(image.expand(self.length, -1, -1, -1).clone(), mask.expand(self.length, -1, -1).clone())
        frames = [self._warp(image, mask, identity=t == 0) for t in range(self.length)]
        images = torch.stack([f[0] for f in frames])
        masks = torch.stack([f[1] for f in frames])
        images, masks = self._occlude(images, masks)
        return self._finish(*self._paste(images, masks, extra))

    def _scene_clip(self, objects: int, region: bool = False) -> Clip | None:
        """Objects cut from the dataset moving over a still of another domain, filmed by a
        camera that pans and zooms a little."""
        scene = _image(self.backgrounds[self.rng.integers(len(self.backgrounds))])
        height, width = self.crop
        scale = max(height / scene.shape[-2], width / scene.shape[-1]) * self.rng.uniform(1.1, 1.5)
        scene = F.interpolate(scene[None], scale_factor=scale, mode="bilinear", align_corners=False, antialias=scale < 1)[0]
        start, end = self.rng.uniform(-0.08, 0.08, size=(2, 2))
        zoom = self.rng.uniform(0.9, 1.1)
        ground = torch.zeros(scene.shape[-2:], dtype=torch.int64)
        if region:
            ground = self._with_region(ground)
        images, masks = [], []
        for t in range(self.length):
            share = t / max(1, self.length - 1)
            offset, z = start + (end - start) * share, 1 + (zoom - 1) * share
            theta = torch.tensor([[1 / z, 0, offset[0]], [0, 1 / z, offset[1]]], dtype=torch.float32)
            images.append(_affine(scene, theta, "bilinear", padding="border"))
            masks.append(_affine(ground[None].float(), theta, "nearest", padding="border")[0].long())
        return self._finish(*self._paste(torch.stack(images), torch.stack(masks), objects if not region else objects - 1))

    def _with_region(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` with a blob-shaped patch of its background as the next object id."""
        height, width = mask.shape
        h = int(height * self.rng.uniform(0.15, 0.4))
        w = int(h * self.rng.uniform(0.6, 1.8))
        if h < 8 or w < 8 or w >= width:
            return mask
        alpha, _ = blob(self.rng, h, w)
        top, left = int(self.rng.integers(0, height - h + 1)), int(self.rng.integers(0, width - w + 1))
        patch = torch.zeros_like(mask, dtype=torch.bool)
        patch[top : top + h, left : left + w] = torch.from_numpy(alpha > 0.5)
        return torch.where(patch & (mask == 0), int(mask.max()) + 1, mask)

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

    def _paste(self, images: torch.Tensor, masks: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste ``count`` objects cut from the dataset into the clip, each with the next id."""
        if not self.multi_object:
            return images, masks
        for _ in range(min(count, MAX_OBJECTS - int(masks.max()))):
            cut = self._cutout()
            if cut is not None:
                images, masks = self._paste_one(images, masks, *cut, label=int(masks.max()) + 1)
        return images, masks

    def _cutout(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One object of a random dataset frame, cropped to its box: (3, h, w), (h, w) 0/1."""
        video, index = self._stills[self.rng.integers(len(self._stills))]
        mask = self._mask(self.videos[video].masks[index]) > 0
        if mask.sum() < 400:
            return None
        rows, cols = torch.nonzero(mask.any(1))[:, 0], torch.nonzero(mask.any(0))[:, 0]
        box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        image = _image(self.videos[video].frames[index])
        return image[:, box[0], box[1]], mask[box].float()

    def _paste_one(
        self, images: torch.Tensor, masks: torch.Tensor, cut: torch.Tensor, cut_mask: torch.Tensor, label: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Move ``cut`` across the clip (own path, scale and turn), in front or behind."""
        length, _, height, width = images.shape
        size = self.rng.uniform(0.25, 0.6) * height / cut.shape[-2]
        size = min(size, 0.6 * width / cut.shape[-1])
        h, w = max(8, round(cut.shape[-2] * size)), max(8, round(cut.shape[-1] * size))
        if h > height or w > width:
            return images, masks
        layers = torch.zeros(4, height, width)  # RGB and coverage, centred; the path moves them
        top, left = (height - h) // 2, (width - w) // 2
        cut_layers = torch.cat([cut, cut_mask[None]])
        layers[:, top : top + h, left : left + w] = F.interpolate(cut_layers[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        start, end = self.rng.uniform(-0.7, 0.7, size=(2, 2))
        growth, turn = self.rng.uniform(0.8, 1.25), math.radians(self.rng.uniform(-15, 15))
        front = self.rng.random() < 0.7
        images, masks = images.clone(), masks.clone()
        for t in range(length):
            share = t / max(1, length - 1)
            offset, scale, angle = start + (end - start) * share, 1 + (growth - 1) * share, turn * share
            cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
            # output -> canvas coordinates: undo the move, then the turn and scale
            theta = torch.tensor([[cos, -sin, -(cos * offset[0] - sin * offset[1])],
                                  [sin, cos, -(sin * offset[0] + cos * offset[1])]], dtype=torch.float32)
            moved = _affine(layers, theta, "bilinear")  # pixels and coverage in one warp
            cover = moved[3] if front else moved[3] * (masks[t] == 0)
            images[t] = images[t] * (1 - cover) + moved[:3] * cover
            masks[t] = torch.where(cover > 0.5, label, masks[t])
        return images, masks

    def _occlude(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slide another frame's object across the clip, on top of ours."""
        video, index = self._stills[self.rng.integers(len(self._stills))]
        other, other_mask = _image(self.videos[video].frames[index]), self._mask(self.videos[video].masks[index]) > 0
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
        if self.multi_object:
            masks = _first_frame_objects(masks)
        if (masks[0] > 0).sum() < 0.01 * masks[0].numel():
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


    def _mask(self, path: Path) -> torch.Tensor:
        return _mask(path, keep_ids=self.multi_object)


def _first_frame_objects(masks: torch.Tensor) -> torch.Tensor:
    """Objects the first frame shows too little of become background (the prompt cannot name
    them); the rest are numbered 1..O in order."""
    first = masks[0]
    keep = [i for i in range(1, int(masks.max()) + 1) if (first == i).sum() >= _MIN_SHARE * first.numel()]
    table = torch.zeros(int(masks.max()) + 1, dtype=torch.int64)
    table[keep] = torch.arange(1, len(keep) + 1)
    return table[masks]


def _column(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)


def _affine(x: torch.Tensor, theta: torch.Tensor, mode: str, padding: str = "zeros") -> torch.Tensor:
    """Warp (C, H, W) by a 2x3 matrix in normalised coordinates; outside is zero (or the border)."""
    grid = F.affine_grid(theta[None], [1, *x.shape], align_corners=False)
    return F.grid_sample(x[None], grid, mode=mode, padding_mode=padding, align_corners=False)[0]


def _image(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float()


def _mask(path: Path, keep_ids: bool = False) -> torch.Tensor:
    """Any non-zero pixel is the object (DAVIS 2016 has one per sequence; some masks are LA);
    with ``keep_ids`` a palette mask's indices are object ids (DAVIS 2017), up to MAX_OBJECTS."""
    with Image.open(path) as image:
        palette = image.mode == "P"
        array = np.asarray(image.convert("L") if image.mode in ("LA", "RGBA", "RGB") else image)
    if keep_ids and palette:
        return torch.from_numpy(np.where(array <= MAX_OBJECTS, array, 0).astype(np.int64))
    return torch.from_numpy((array > 0).astype(np.int64))


def _scan_images(folder: Path) -> list[Path]:
    """Still images for scene clips: every jpg/png in the folder (not its subfolders)."""
    if not folder.is_dir():
        raise VidsegError(f"--backgrounds: {folder} is not a folder")
    found = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")), key=natural_key)
    if not found:
        raise VidsegError(f"--backgrounds: no jpg or png images in {folder}")
    return found


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
