"""Opening user images (frames and masks) safely.

Pillow's decoders raise a zoo of exceptions on damaged files (OSError, ValueError,
SyntaxError, struct.error, IndexError, ...); every one becomes the project's error with
the file named. Images over Pillow's pixel limit are refused before they are decoded
(the decompression-bomb check, made an error at its first threshold rather than a
warning), and EXIF orientation is applied so a phone's JPEG is upright, as a video's
rotation metadata is.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vidseg_cli.errors import VidsegError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
LOSSY_FORMATS = {"JPEG", "MPO", "WEBP"}
WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # 16-bit PNGs open as one of these


def warn(message: str) -> None:
    """A warning on stderr, one line: the result is written, but the user should know."""
    sys.stderr.write(f"warning: {' '.join(message.split())}\n")


def is_listed_image(path: Path) -> bool:
    """An image a folder scan takes: a known suffix and not hidden (macOS writes
    ``._00001.jpg`` resource forks beside copied files)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def load_image(path: Path, what: str) -> tuple[Image.Image, str | None]:
    """The decoded, upright image and its file format; any failure is one VidsegError
    naming ``what`` (frame, mask) and the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return _exif_upright(image), image.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise VidsegError(
            f"{what} {path} is too large to read safely: the limit is {Image.MAX_IMAGE_PIXELS:,} pixels "
            "(Pillow's decompression-bomb check)"
        ) from None
    except MemoryError:
        raise VidsegError(f"{what} {path} is too large to hold in memory") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure on a user's file
        raise VidsegError(f"cannot read {what} {path}: {_reason(error)}") from None


def _exif_upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # noqa: BLE001 - a damaged EXIF block: keep the pixels as stored
        return image


def _reason(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any mode Pillow opens. 16-bit greyscale is scaled to 8 bits
    (Pillow's own ``convert`` clips it, so every pixel above 255 turned white)."""
    if image.mode in WIDE_MODES:
        wide = np.asarray(image).astype(np.int64)
        grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if image.mode == "F":
        raise VidsegError(f"frame {path} holds floating-point pixels; save it as 8- or 16-bit PNG or JPEG")
    try:
        return np.array(image.convert("RGB"))  # writable, as torch.from_numpy wants
    except ValueError as error:
        raise VidsegError(f"cannot read frame {path}: {error}") from None
