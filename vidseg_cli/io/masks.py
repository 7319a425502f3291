"""Reading user masks into object-id maps (0 = background).

Accepted: palette PNGs (index = object id, the DAVIS convention), greyscale (0 is
background; masks holding only 0 and the maximum, 255 or 65535, mean object 1; other
values are ids), and RGB (colours of the DAVIS palette map to their index; other colours
get ids in order of first sight, shared across all masks of a run so a colour keeps its id).
Transparent pixels (alpha 0-127) are background. 16-bit masks keep their ids when all are
at most 255; larger ids are renumbered 1, 2, ... in order of first sight (shared across
masks) and the mapping is reported, never clipped (1000 and 2000 would both become 255).
JPEG masks are lossy: a grey one is read as one object (pixels brighter than 127), with
a warning; a colour one is refused (its compression noise would be dozens of objects).
Pitfall: a label map must be resized with nearest-neighbour, never interpolated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.images import LOSSY_FORMATS, WIDE_MODES, is_listed_image, load_image, warn
from vidseg_cli.io.palette import davis_palette

_FRAME_NUMBER = re.compile(r"^\d+$")
# a grey JPEG's pixels differ from grey by a few levels at most; a colour one by far more
_COLOUR_JPEG_SPREAD = 40


@dataclass(frozen=True)
class MaskFile:
    frame: int
    path: Path
    source: Path  # what --mask named: the file, or the folder it was found in


def parse_mask_args(specs: list[str]) -> list[MaskFile]:
    """``--mask`` values -> mask files by frame: 'PNG' (frame 0), 'N:PNG', or 'DIR'."""
    files: dict[int, MaskFile] = {}
    for spec in specs:
        for mask in _expand(spec):
            if mask.frame in files:
                raise VidsegError(f"two masks given for frame {mask.frame}: {files[mask.frame].path} and {mask.path}")
            files[mask.frame] = mask
    if not files:
        raise VidsegError("no mask given: use --mask PNG, --mask N:PNG or --mask DIR")
    return [files[frame] for frame in sorted(files)]


def _expand(spec: str) -> list[MaskFile]:
    frame, path = _split_spec(spec)
    if not path.exists():
        raise VidsegError(f"mask not found: {path}")
    if path.is_dir():
        if frame is not None:
            raise VidsegError(f"--mask {spec}: a folder of masks takes no frame index (its files are named by frame)")
        return _folder_masks(path)
    return [MaskFile(frame or 0, path, path)]


def _split_spec(spec: str) -> tuple[int | None, Path]:
    """'N:PNG' -> (N, PNG); a path that exists as given is a path, even with a colon."""
    if ":" not in spec or Path(spec).exists():
        return None, Path(spec)
    index, rest = spec.split(":", 1)
    if "/" in index or "\\" in index or not rest:
        return None, Path(spec)
    if not _FRAME_NUMBER.match(index):
        raise VidsegError(f"--mask {spec}: frame index {index!r} is not a frame number (0, 1, 2, ...)")
    return int(index), Path(rest)


def _folder_masks(folder: Path) -> list[MaskFile]:
    """Masks named by frame number (00005.png is frame 5), as in DAVIS annotations; other
    image names are reported and left out (``bike_v2.png`` is not frame 2)."""
    try:
        images = sorted(path for path in folder.iterdir() if is_listed_image(path))
    except OSError as error:
        raise VidsegError(f"cannot list masks in folder {folder}: {error.strerror}") from None
    masks = [MaskFile(int(path.stem), path, folder) for path in images if _FRAME_NUMBER.match(path.stem)]
    others = [path.name for path in images if not _FRAME_NUMBER.match(path.stem)]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        warn(f"mask folder {folder}: {len(others)} file(s) not named by frame number left out: {shown}")
    if not masks:
        raise VidsegError(f"no mask images named by frame number (00005.png) in folder {folder}")
    return masks


@dataclass
class MaskReader:
    """Reads masks to (H, W) uint8 id maps checked against the frame size."""

    frame_size: tuple[int, int]  # (height, width)
    resize: bool = False
    _colours: dict[tuple[int, int, int], int] = field(default_factory=dict)
    renumbered: dict[int, int] = field(default_factory=dict)  # 16-bit id -> object id

    def read(self, path: Path, allow_empty: bool = False) -> np.ndarray:
        """Object ids of a mask file; an empty user mask is an error unless allowed
        (ground-truth masks are legitimately empty while an object is out of view)."""
        image, file_format = load_image(path, "mask")
        ids = self.to_ids(image, path, lossy=file_format in LOSSY_FORMATS)
        ids = self._fit(ids, path)
        if not allow_empty and not ids.any():
            raise VidsegError(f"mask {path} is empty: it marks no object")
        return ids

    def to_ids(self, image: Image.Image, path: Path, lossy: bool = False) -> np.ndarray:
        """(H, W) uint8 object ids of an image of any mode."""
        if lossy:
            ids = self._lossy_ids(image, path)
        elif image.mode in ("P", "PA"):
            ids = np.asarray(image.convert("P") if image.mode == "PA" else image, dtype=np.uint8).copy()
        elif image.mode == "1":
            ids = np.asarray(image, dtype=np.uint8)
        elif image.mode in ("L", "LA"):
            ids = _grey_ids(np.asarray(image.getchannel(0), dtype=np.uint8), 255)
        elif image.mode in WIDE_MODES:
            ids = self._wide_ids(np.asarray(image).astype(np.int64), path)
        elif image.mode == "F":
            raise VidsegError(f"mask {path} holds floating-point values; save object ids as a palette or greyscale PNG")
        else:
            ids = self._colours_to_ids(np.asarray(_as_rgb(image, path)))
        alpha = _alpha(image)
        if alpha is not None:
            ids = np.where(alpha >= 128, ids, 0).astype(np.uint8)
        return np.ascontiguousarray(ids, dtype=np.uint8)

    def _lossy_ids(self, image: Image.Image, path: Path) -> np.ndarray:
        rgb = np.asarray(_as_rgb(image, path)).astype(np.int16)
        spread = rgb.max(axis=2) - rgb.min(axis=2)
        if (spread > _COLOUR_JPEG_SPREAD).mean() > 0.001:
            raise VidsegError(
                f"mask {path} is a colour JPEG: compression blurs its colours into false objects; "
                "save it as PNG (palette or exact colours)"
            )
        ids = (rgb.mean(axis=2) > 127).astype(np.uint8)
        warn(f"mask {path} is a lossy JPEG: read as one object (pixels brighter than 127); save masks as PNG to keep several objects")
        return ids

    def _wide_ids(self, wide: np.ndarray, path: Path) -> np.ndarray:
        """16-bit ids: kept when all fit in 8 bits, a 0/max mask is object 1, larger ids are
        renumbered (shared across masks, reported)."""
        if wide.min() < 0:
            raise VidsegError(f"mask {path} holds negative values; object ids are 0 (background) and up")
        top = int(wide.max())
        if top <= 255:
            return _grey_ids(wide.astype(np.uint8), 255)
        values = [int(v) for v in np.unique(wide) if v]
        if len(values) == 1:
            return (wide > 0).astype(np.uint8)  # a 0/65535 (or 0/N) mask: one object
        lut = {0: 0}
        for value in values:
            lut[value] = self._renumber(value, path)
        keys = np.array(sorted(lut))
        mapped = np.array([lut[k] for k in keys], dtype=np.uint8)
        return mapped[np.searchsorted(keys, wide)]

    def _renumber(self, value: int, path: Path) -> int:
        if value not in self.renumbered:
            used = set(self.renumbered.values()) | set(self._colours.values())
            free = [i for i in range(1, 256) if i not in used]
            if not free:
                raise VidsegError(f"mask {path}: more than 255 distinct object ids")
            self.renumbered[value] = free[0]
        return self.renumbered[value]

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
            used = set(self._colours.values()) | set(self.renumbered.values())
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


def _grey_ids(grey: np.ndarray, top: int) -> np.ndarray:
    """Greyscale values are ids, but a mask of only 0 and ``top`` is object 1."""
    present = np.unique(grey)
    if len(present) <= 2 and set(int(v) for v in present) <= {0, top}:
        return (grey > 0).astype(np.uint8)
    return grey.astype(np.uint8)


def _alpha(image: Image.Image) -> np.ndarray | None:
    """The alpha channel of an image that has one (RGBA, LA, PA, or a palette or grey image
    with a transparency entry), else None."""
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return np.asarray(image.getchannel("A"), dtype=np.uint8)
    if "transparency" in image.info and image.mode in ("P", "L", "RGB"):
        try:
            return np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.uint8)
        except (ValueError, TypeError):
            return None
    return None


def _as_rgb(image: Image.Image, path: Path) -> Image.Image:
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise VidsegError(f"cannot read mask {path}: {error}") from None
