"""Re-runs that scripts can rely on: ``--resume`` on an output the same command already
published prints one line and exits 0 without touching it; other options or another input
are refused as without ``--resume``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import leftovers

from vidseg_cli.predict.data import blob_digits, sequence, write_frames


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` (hidden ones too): its modification time and bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("digits") / "frames"
    write_frames(sequence(np.random.default_rng(1), blob_digits(20)), folder)
    return folder


def _commands(clip, digits_folder) -> dict[str, list]:
    video, mask = clip
    return {
        "segment": ["segment", video, "--mask", mask, "--size", "64", "--format", "all"],
        "semseg": ["semseg", video, "--size", "64", "--format", "all"],
        "predict": ["predict", digits_folder, "--start", "0", "--compare"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segment", "semseg", "predict"])
def test_resume_of_a_complete_output_is_a_no_op(vidseg, clip, digits_folder, tmp_path, task):
    command = _commands(clip, digits_folder)[task]
    out = tmp_path / "out"
    first = vidseg(*command, "--out", out)
    assert first.code == 0, first.stderr
    before = _snapshot(out)
    os.utime(out, ns=(1, 1))  # the folder's own time too: nothing may be renamed into place
    again = vidseg(*command, "--out", out, "--resume")
    assert again.code == 0, again.stderr
    assert again.stderr.strip().splitlines() == [f"already complete: {out} (same input and options); left as it is"]
    assert again.stdout.strip() == str(out)  # the output, as a finished run prints it
    assert _snapshot(out) == before and out.stat().st_mtime_ns == 1 and leftovers(tmp_path) == []
    as_json = vidseg(*command, "--out", out, "--resume", "--json")
    assert as_json.code == 0 and json.loads(as_json.stdout) == {"output": str(out), "already_complete": True}
    # other options: refused as without --resume, the output kept
    other = vidseg(*command, "--out", out, "--resume", *(["--frames", "5"] if task == "predict" else ["--size", "96"]))
    assert other.code == 2 and "already exists; pass --force" in other.stderr
    assert _snapshot(out) == before


def test_resume_after_the_input_or_a_mask_changed_is_refused(vidseg, clip, tmp_path):
    """The same paths and options, but a file under them changed since: not this run's output."""
    video, mask = tmp_path / "clip.mp4", tmp_path / "mask.png"
    video.write_bytes(clip[0].read_bytes())
    mask.write_bytes(clip[1].read_bytes())
    command = ["segment", video, "--mask", mask, "--size", "64", "--out", tmp_path / "out", "--resume"]
    assert vidseg(*command).code == 0
    assert "already complete" in vidseg(*command).stderr
    for changed in (video, mask):
        stat = changed.stat()
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten a second later
        again = vidseg(*command)
        assert again.code == 2 and "already exists; pass --force" in again.stderr
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert "already complete" in vidseg(*command).stderr  # as it was: complete again
