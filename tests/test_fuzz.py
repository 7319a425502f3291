"""Fuzzed readers: whatever bytes or image a user hands over, the outcome is a valid label
map or frame, or the project's own error; never another exception, never a hang.

Fast by default (a few dozen examples each); the long run is one command:

    python -m pytest tests/test_fuzz.py --hypothesis-profile=fuzz
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import encoded_clip, leftovers
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import FolderSource, open_frames
from vidseg_cli.io.images import load_image, to_rgb
from vidseg_cli.io.masks import MaskReader

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr", "HSV", "LAB"]
SAVED_AS = {"PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"], "JPEG": ["L", "RGB", "CMYK"]}


def _check_mask(path: Path, size: tuple[int, int]) -> None:
    try:
        ids = MaskReader(size, resize=True).read(path, allow_empty=True)
    except VidsegError:
        return
    assert ids.dtype == np.uint8 and ids.shape == size


def _check_frame(path: Path) -> None:
    try:
        image, _ = load_image(path, "frame")
        rgb = to_rgb(image, path)
    except VidsegError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


def _image(mode: str, width: int, height: int, seed: int, palette: bytes | None) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16",):
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-5, 70000, (height, width)).astype(np.int32), "I")
    if mode == "F":
        return Image.fromarray(rng.normal(size=(height, width)).astype(np.float32), "F")
    base = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        image = base.quantize(colors=int(rng.integers(1, 256)))
        if palette is not None:
            image.putpalette(palette)
        return image
    if mode == "PA":
        return base.quantize(colors=8).convert("PA")
    return base.convert(mode)


@given(data=st.binary(max_size=4096))
def test_random_bytes(tmp_path, data):
    for suffix in (".png", ".jpg"):
        path = tmp_path / f"random{suffix}"
        path.write_bytes(data)
        _check_mask(path, (16, 16))
        _check_frame(path)


@given(
    mode=st.sampled_from(MODES),
    width=st.integers(1, 64),
    height=st.integers(1, 64),
    seed=st.integers(0, 2**16),
    palette=st.none() | st.binary(min_size=3, max_size=768).filter(lambda b: len(b) % 3 == 0),
)
def test_every_mode_in_memory(mode, width, height, seed, palette):
    """The conversions themselves, on every mode Pillow has, including those no PNG holds."""
    image = _image(mode, width, height, seed, palette)
    path = Path(f"in-memory.{mode}")
    try:
        ids = MaskReader((height, width)).to_ids(image, path)
        assert ids.dtype == np.uint8 and ids.shape == (height, width)
    except VidsegError:
        pass
    try:
        rgb = to_rgb(image, path)
        assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)
    except VidsegError:
        pass


@given(
    file_format=st.sampled_from(sorted(SAVED_AS)),
    data=st.data(),
    width=st.integers(1, 48),
    height=st.integers(1, 48),
    seed=st.integers(0, 2**16),
    cut=st.floats(0.0, 1.0),
)
def test_saved_and_truncated_images(tmp_path, file_format, data, width, height, seed, cut):
    mode = data.draw(st.sampled_from(SAVED_AS[file_format]))
    buffer = io.BytesIO()
    _image(mode, width, height, seed, None).save(buffer, format=file_format)
    whole = buffer.getvalue()
    for name, payload in (("whole", whole), ("cut", whole[: int(len(whole) * cut)])):
        path = tmp_path / f"{name}.{file_format.lower()}"
        path.write_bytes(payload)
        _check_mask(path, (height, width))
        _check_frame(path)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotations_are_applied(tmp_path, orientation):
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:5, :5] = 255  # a bright corner, top left as stored
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    folder = tmp_path / "frames"
    folder.mkdir()
    image.save(folder / "00000.jpg", exif=exif, quality=95)
    frame = next(iter(FolderSource(folder)))
    rotated = orientation in (5, 6, 7, 8)
    assert frame.image.shape[:2] == ((30, 20) if rotated else (20, 30))


# --- damaged videos through `segment` ---------------------------------------------------


def _corpus(folder: Path) -> dict[str, bytes]:
    """Damaged videos: cut at several offsets, bytes flipped in the middle, a wrong
    extension, an empty file, a container whose stream holds no frame."""
    rng = np.random.default_rng(7)
    corpus: dict[str, bytes] = {}
    for suffix, options in ((".mp4", {"movflags": "faststart"}), (".mkv", {})):
        whole = encoded_clip(folder / f"good{suffix}", frames=12, **options)
        corpus[f"whole{suffix}"] = whole
        for offset in sorted(rng.integers(1, len(whole), 4)):
            corpus[f"cut-{offset}{suffix}"] = whole[:offset]
        flipped = bytearray(whole)
        middle = len(whole) // 2
        for position in rng.integers(middle - 500, middle + 500, 40):
            flipped[position] ^= 0xFF
        corpus[f"flipped{suffix}"] = bytes(flipped)
    corpus["mkv-named.mp4"] = corpus["whole.mkv"]
    corpus["empty.mp4"] = b""
    corpus["no-frames.mkv"] = encoded_clip(folder / "none.mkv", frames=0)
    return corpus


@pytest.mark.slow
def test_damaged_videos_through_segment(vidseg, tmp_path, clip):
    sources = tmp_path / "sources"
    sources.mkdir()
    outcomes = {}
    for name, payload in _corpus(sources).items():
        video = tmp_path / name
        video.write_bytes(payload)
        out = tmp_path / f"out-{name}"
        run = vidseg("segment", video, "--mask", clip[1], "--resize-mask", "--out", out, "--size", "64", "--model", "propagate")
        assert "Traceback" not in run.stderr and run.exception is None or isinstance(run.exception, SystemExit), name
        if run.code == 0:
            source = open_frames(video)
            count = sum(1 for _ in source)
            source.close()
            written = sorted(p.name for p in out.glob("*.png"))
            assert written == [f"{i:05d}.png" for i in range(count)], name
        else:
            assert run.code == 2, (name, run.stderr)
            line = run.stderr.strip()
            assert len(line.splitlines()) == 1 and "frames" in line, (name, line)
            assert not out.exists(), name
        outcomes[name] = run.code
    assert outcomes["whole.mp4"] == 0 and outcomes["whole.mkv"] == 0 and outcomes["empty.mp4"] == 2
    assert leftovers(tmp_path) == []
