"""Reading user masks into object-id maps (0 = background).

Accepted: palette PNGs (index = object id, the DAVIS convention), greyscale (0 is
background; masks holding only 0 and 255 mean object 1; other values are ids), and RGB
(colours of the DAVIS palette map to their index; other colours get ids in order of
first sight, shared across all masks of a run so a colour keeps its id).
Pitfall: a label map must be resized with nearest-neighbour, never interpolated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import IMAGE_SUFFIXES
from vidseg_cli.io.palette import davis_palette

_INDEXED = re.compile(r"^(\d+):(.+)$")


@dataclass(frozen=True)
class MaskFile:
    frame: int
    path: Path


def parse_mask_args(specs: list[str]) -> list[MaskFile]:
    """``--mask`` values -> mask files by frame: 'PNG' (frame 0), 'N:PNG', or 'DIR'."""
    files: dict[int, Path] = {}
    for spec in specs:
        for mask in _expand(spec):
            if mask.frame in files:
                raise VidsegError(f"two masks given for frame {mask.frame}: {files[mask.frame]} and {mask.path}")
            files[mask.frame] = mask.path
    if not files:
        raise VidsegError("no mask given: use --mask PNG, --mask N:PNG or --mask DIR")
    return [MaskFile(frame, path) for frame, path in sorted(files.items())]


def _expand(spec: str) -> list[MaskFile]:
    match = _INDEXED.match(spec)
    if match and not Path(spec).exists():
        frame, path = int(match.group(1)), Path(match.group(2))
    else:
        frame, path = 0, Path(spec)
    if not path.exists():
        raise VidsegError(f"mask not found: {path}")
    if path.is_dir():
        return _folder_masks(path)
    return [MaskFile(frame, path)]


def _folder_masks(folder: Path) -> list[MaskFile]:
    """Masks named by frame index (00005.png is frame 5), as in DAVIS annotations."""
    masks = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        digits = re.findall(r"\d+", path.stem)
        if not digits:
            raise VidsegError(f"cannot tell the frame of mask {path}: name it by frame index, e.g. 00005.png")
        masks.append(MaskFile(int(digits[-1]), path))
    if not masks:
        raise VidsegError(f"no mask images in folder {folder}")
    return masks


@dataclass
class MaskReader:
    """Reads masks to (H, W) uint8 id maps checked against the frame size."""

    frame_size: tuple[int, int]  # (height, width)
    resize: bool = False
    _colours: dict[tuple[int, int, int], int] = field(default_factory=dict)

    def read(self, path: Path, allow_empty: bool = False) -> np.ndarray:
        """Object ids of a mask file; an empty user mask is an error unless allowed
        (ground-truth masks are legitimately empty while an object is out of view)."""
        try:
            with Image.open(path) as image:
                image.load()
                ids = self._to_ids(image)
        except (OSError, UnidentifiedImageError) as error:
            raise VidsegError(f"cannot read mask {path}: {error}") from None
        ids = self._fit(ids, path)
        if not allow_empty and not ids.any():
            raise VidsegError(f"mask {path} is empty: it marks no object")
        return ids

    def _to_ids(self, image: Image.Image) -> np.ndarray:
        if image.mode == "P":
            return np.asarray(image, dtype=np.uint8)
        if image.mode in ("L", "LA", "1", "I", "I;16"):
            grey = np.asarray(image.convert("L") if image.mode != "L" else image, dtype=np.uint8)
            return (grey > 0).astype(np.uint8) if set(np.unique(grey)) <= {0, 255} else grey
        return self._colours_to_ids(np.asarray(image.convert("RGB")))

    def _colours_to_ids(self, rgb: np.ndarray) -> np.ndarray:
        colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
        lut = np.array([self._colour_id(tuple(int(v) for v in c)) for c in colours], dtype=np.uint8)
        return lut[inverse.reshape(-1)].reshape(rgb.shape[:2])

    def _colour_id(self, colour: tuple[int, int, int]) -> int:
        if colour == (0, 0, 0):
            return 0
        if colour not in self._colours:
            palette = davis_palette()
            hits = np.flatnonzero((palette == colour).all(axis=1))
            used = set(self._colours.values())
            if len(hits) and int(hits[0]) not in used:
                self._colours[colour] = int(hits[0])
            else:
                free = [i for i in range(1, 256) if i not in used and not (palette[i] == 0).all()]
                if not free:
                    raise VidsegError("more than 255 distinct mask colours")
                self._colours[colour] = free[0]
        return self._colours[colour]

    def _fit(self, ids: np.ndarray, path: Path) -> np.ndarray:
        if ids.shape == self.frame_size:
            return ids
        if not self.resize:
            h, w = self.frame_size
            raise VidsegError(
                f"mask {path} is {ids.shape[1]}x{ids.shape[0]} but the frames are {w}x{h}; "
                "pass --resize-mask to resize it"
            )
        resized = Image.fromarray(ids).resize(self.frame_size[::-1], Image.NEAREST)
        return np.asarray(resized, dtype=np.uint8)
