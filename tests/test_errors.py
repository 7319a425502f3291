"""Every bad input: one clear line on stderr, exit code 2, no partial output."""

from pathlib import Path

import numpy as np
import pytest
from conftest import encoded_clip, leftovers
from PIL import Image


def assert_refused(run, message: str, out: Path) -> None:
    assert run.code == 2, (run.stdout, run.stderr, run.exception)
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert leftovers(out.parent) == []


def test_missing_input(vidseg, tmp_path, clip):
    out = tmp_path / "out"
    assert_refused(vidseg("segment", tmp_path / "nope.mp4", "--mask", clip[1], "--out", out), "input not found", out)


def test_missing_mask(vidseg, tmp_path, clip):
    out = tmp_path / "out"
    assert_refused(vidseg("segment", clip[0], "--mask", tmp_path / "none.png", "--out", out), "mask not found", out)


def test_unreadable_video(vidseg, tmp_path, clip):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    out = tmp_path / "out"
    assert_refused(vidseg("segment", bad, "--mask", clip[1], "--out", out), "cannot read video", out)


def test_unreadable_mask(vidseg, tmp_path, clip):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out"
    assert_refused(vidseg("segment", clip[0], "--mask", bad, "--out", out), "cannot read mask", out)


def test_mask_of_wrong_size(vidseg, tmp_path, clip, write_mask):
    mask = write_mask(np.ones((50, 60), np.uint8))
    out = tmp_path / "out"
    assert_refused(vidseg("segment", clip[0], "--mask", mask, "--out", out), "is 60x50 but the frames are 128x96", out)


def test_wrong_size_is_accepted_with_resize_mask(vidseg, tmp_path, clip, write_mask):
    mask = write_mask(np.pad(np.ones((20, 20), np.uint8), ((0, 30), (0, 40))))
    out = tmp_path / "out"
    run = vidseg("segment", clip[0], "--mask", mask, "--out", out, "--resize-mask", "--size", "64")
    assert run.code == 0, run.stderr
    assert (np.asarray(Image.open(out / "00000.png")) == 1).any()


def test_empty_mask(vidseg, tmp_path, clip, write_mask):
    mask = write_mask(np.zeros((96, 128), np.uint8))
    out = tmp_path / "out"
    assert_refused(vidseg("segment", clip[0], "--mask", mask, "--out", out), "is empty", out)


def test_mask_frame_beyond_video(vidseg, tmp_path, clip):
    out = tmp_path / "out"
    run = vidseg("segment", clip[0], "--mask", clip[1], "--mask", f"50:{clip[1]}", "--out", out)
    assert_refused(run, "is for frame 50, but the video has 12 frames", out)


def test_mask_frame_beyond_folder_of_frames(vidseg, tmp_path, frame_folder, write_mask):
    folder, labels = frame_folder
    out = tmp_path / "out"
    run = vidseg("segment", folder, "--mask", f"8:{write_mask(labels[0])}", "--out", out)
    assert_refused(run, "is for frame 8, but the video has 8 frames", out)


@pytest.mark.parametrize("name", ["cut.mkv", "cut.mp4"])
def test_truncated_video(vidseg, tmp_path, clip, name):
    # mp4 with its index first (faststart), so the cut file still opens
    data = encoded_clip(tmp_path / f"good{Path(name).suffix}", movflags="faststart")
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    # torch: a first ONNX run would also say, on stderr, that it exports the graph
    run = vidseg("segment", cut, "--mask", clip[1], "--out", out, "--size", "64", "--resize-mask", "--runtime", "torch")
    assert_refused(run, "is truncated: decoded", out)


def test_corrupt_video_reports_frames_done(vidseg, tmp_path, clip):
    data = encoded_clip(tmp_path / "good.mp4", movflags="faststart")
    half = len(data) // 2
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[:half] + b"\x00" * (len(data) - half))  # media zeroed, index intact
    out = tmp_path / "out"
    run = vidseg("segment", broken, "--mask", clip[1], "--out", out, "--size", "64", "--resize-mask", "--runtime", "torch")
    assert_refused(run, "is corrupt after", out)
    assert "frames" in run.stderr


def test_existing_output_needs_force(vidseg, tmp_path, clip):
    out = tmp_path / "out"
    run = vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--size", "64")
    assert run.code == 0
    (out / "00011.png").write_bytes(b"stale")
    run = vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--size", "64")
    assert run.code == 2 and "already exists; pass --force" in run.stderr
    assert (out / "00011.png").read_bytes() == b"stale"
    run = vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--size", "64", "--force")
    assert run.code == 0 and (out / "00011.png").read_bytes() != b"stale"
    assert leftovers(tmp_path) == []


def test_force_never_replaces_what_vidseg_did_not_write(vidseg, tmp_path, clip):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    for extra in ((), ("--force",)):
        run = vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--size", "64", *extra)
        assert run.code == 2 and "is not a vidseg output" in run.stderr and "--force" not in run.stderr
        assert (out / "keep.txt").read_text() == "precious"
    assert leftovers(tmp_path) == []


def test_too_few_slots_for_mask_frames(vidseg, tmp_path, clip):
    out = tmp_path / "out"
    run = vidseg("segment", clip[0], "--mask", clip[1], "--mask", f"3:{clip[1]}", "--slots", "2", "--out", out)
    assert_refused(run, "stremn needs at least 3 slots", out)
