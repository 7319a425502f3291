"""Crash-safe long runs: a run killed with SIGKILL goes on with --resume, and its outputs
equal an uninterrupted run's."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import leftovers
from PIL import Image

from vidseg_cli.synthetic import write_clip

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> tuple[Path, Path]:
    return write_clip(tmp_path_factory.mktemp("long"), length=120, height=96, width=128, objects=2, seed=4)


def _command(clip: tuple[Path, Path], out: Path, events: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vidseg_cli", "segment", str(clip[0]), "--mask", str(clip[1]), "--out", str(out),
            "--size", "64", "--format", "all", "--checkpoint-every", "10", "--events", str(events), *extra]


def _decoded(video: Path) -> list[tuple[int, np.ndarray]]:
    with av.open(str(video)) as container:
        return [(frame.pts, frame.to_ndarray(format="gray")) for frame in container.decode(video=0)]


def _wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_outputs(long_clip, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run = subprocess.run(_command(long_clip, whole, tmp_path / "whole.jsonl"), capture_output=True, text=True,
                         cwd=PROJECT, timeout=300)
    assert run.returncode == 0, run.stderr

    process = subprocess.Popen(_command(long_clip, cut, tmp_path / "cut.jsonl"), cwd=PROJECT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / ".cut.partial"
    _wait_for(staging / ".checkpoint.pt")
    time.sleep(0.5)  # past the checkpoint: frames that the resumed run must write again
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not cut.exists() and (staging / ".checkpoint.pt").is_file()

    resumed = subprocess.run(_command(long_clip, cut, tmp_path / "cut.jsonl", "--resume", "--json"),
                             capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["frames"] == 120

    assert _files(cut) == _files(whole)
    for name in _files(whole):
        if name.endswith(".png"):  # label PNGs and mattes
            np.testing.assert_array_equal(np.asarray(Image.open(cut / name)), np.asarray(Image.open(whole / name)), name)
    for (pts_a, a), (pts_b, b) in zip(_decoded(cut / "labels.mkv"), _decoded(whole / "labels.mkv"), strict=True):
        assert pts_a == pts_b and np.array_equal(a, b)
    assert (cut / "rle.json").read_text() == (whole / "rle.json").read_text()
    assert (tmp_path / "cut.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
    with av.open(str(cut / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 120
    assert leftovers(tmp_path) == [] and not staging.exists()


@pytest.mark.slow
def test_sigterm_with_a_checkpoint_keeps_it_and_says_how_to_go_on(long_clip, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(_command(long_clip, out, tmp_path / "e.jsonl"), cwd=PROJECT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = tmp_path / ".out.partial"
    _wait_for(staging / ".checkpoint.pt")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    assert err.strip().startswith("terminated; the checkpoint at frame ") and err.strip().endswith("--resume to go on")
    assert not out.exists() and staging.is_dir()
    # a run without --resume starts over in the same staging folder
    again = subprocess.run(_command(long_clip, out, tmp_path / "e.jsonl"), capture_output=True, text=True,
                           cwd=PROJECT, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not staging.exists() and len(list(out.glob("*.png"))) == 120


def test_resume_with_other_options_is_refused(vidseg, long_clip, tmp_path):
    from vidseg_cli.options import SegmentOptions
    from vidseg_cli.vos import checkpoint

    staging = tmp_path / ".out.partial"
    staging.mkdir()
    options = SegmentOptions(input=long_clip[0], masks=[str(long_clip[1])], size=64)
    checkpoint.save(staging, {"fingerprint": checkpoint.fingerprint(options), "frames": 10})
    run = vidseg("segment", long_clip[0], "--mask", long_clip[1], "--out", tmp_path / "out", "--size", "96", "--resume")
    assert run.code == 2 and "other options" in run.stderr
    assert staging.is_dir()  # not the run's to remove


def test_resume_without_a_checkpoint_starts_from_the_first_frame(vidseg, long_clip, tmp_path):
    run = vidseg("segment", long_clip[0], "--mask", long_clip[1], "--out", tmp_path / "out", "--size", "64", "--resume")
    assert run.code == 0 and "no checkpoint to resume" in run.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 120


@pytest.mark.slow
def test_one_run_per_output(long_clip, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(_command(long_clip, out, tmp_path / "a.jsonl"), cwd=PROJECT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(tmp_path / ".out.partial" / ".lock")
    first.send_signal(signal.SIGSTOP)  # held while the second starts: on a fast machine it could finish first
    try:
        second = subprocess.run(_command(long_clip, out, tmp_path / "b.jsonl"), capture_output=True, text=True,
                                cwd=PROJECT, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    first.wait(timeout=300)
    assert second.returncode == 2 and "another vidseg run is writing" in second.stderr
    assert first.returncode == 0 and len(list(out.glob("*.png"))) == 120
