"""Never lose a user's data, never answer wrongly with exit 0 (issue: bad input, tried as
a careful new user would). Each test names the failure it guards against."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import leftovers
from PIL import Image

import vidseg_cli.io.sinks as sinks
import vidseg_cli.io.video_sinks as video_sinks
from vidseg_cli.cli.common import json_text
from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import FolderSource
from vidseg_cli.io.masks import MaskReader, parse_mask_args
from vidseg_cli.io.sinks import save_palette_png
from vidseg_cli.synthetic import write_davis

PROJECT = Path(__file__).resolve().parents[1]


def one_line_error(run, code: int = 2) -> str:
    assert run.code == code, (run.code, run.stdout, run.stderr, run.exception)
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, run.stderr
    return lines[0]


@pytest.fixture
def workdir(tmp_path, clip):
    """A folder holding a copy of the clip and its mask, and a mask folder."""
    video, mask = tmp_path / "v.mp4", tmp_path / "mask.png"
    video.write_bytes(clip[0].read_bytes())
    mask.write_bytes(clip[1].read_bytes())
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "00000.png").write_bytes(clip[1].read_bytes())
    (tmp_path / "sibling.txt").write_text("a sibling file")
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- data loss --------------------------------------------------------------------------


@pytest.mark.parametrize("out", ["v.mp4", ".", "masks", "mask.png", "masks/inside"])
def test_output_that_is_contains_or_lies_inside_an_input_is_refused(vidseg, workdir, out):
    before = snapshot(workdir)
    for force in ((), ("--force",)):
        run = vidseg("segment", workdir / "v.mp4", "--mask", workdir / "masks", "--mask", f"5:{workdir / 'mask.png'}",
                     "--out", workdir / out, "--size", "64", *force)
        assert "the input" in one_line_error(run) and "choose another --out" in run.stderr
    assert snapshot(workdir) == before
    assert leftovers(workdir) == []


def test_output_inside_a_frame_folder_is_refused(vidseg, tmp_path, frame_folder, write_mask):
    folder, labels = frame_folder
    mask = write_mask(labels[0])
    before = snapshot(folder)
    run = vidseg("segment", folder, "--mask", mask, "--out", folder / "out", "--force")
    assert "lies inside the input" in one_line_error(run)
    assert snapshot(folder) == before


def test_out_dot_force_is_one_line_not_a_traceback(vidseg, workdir, tmp_path, monkeypatch):
    monkeypatch.chdir(workdir)
    run = vidseg("segment", "v.mp4", "--mask", "mask.png", "--out", ".", "--force", "--size", "64")
    assert "contains the input" in one_line_error(run)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    monkeypatch.chdir(empty)
    run = vidseg("segment", workdir / "v.mp4", "--mask", workdir / "mask.png", "--out", ".", "--force", "--size", "64")
    assert "is not a vidseg output" in one_line_error(run)
    assert (empty / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_segment_dot_names_the_output_after_the_folder(vidseg, frame_folder, write_mask, monkeypatch):
    folder, labels = frame_folder
    mask = write_mask(labels[0])
    monkeypatch.chdir(folder)
    run = vidseg("segment", ".", "--mask", mask, "--size", "64")
    assert run.code == 0, run.stderr
    assert Path(run.stdout.strip()) == folder.parent / "frames_masks"
    assert (folder.parent / "frames_masks" / "00007.png").is_file()


def test_outputs_follow_the_umask(vidseg, tmp_path, clip):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--size", "64").code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o755
        report = tmp_path / "report.json"
        from vidseg_cli.io.outputs import write_file_atomically

        write_file_atomically(report, lambda path: path.write_text("{}"), force=False)
        assert stat.S_IMODE(report.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_a_failed_run_removes_the_parent_folders_it_made(vidseg, tmp_path, frame_folder, write_mask):
    folder, labels = frame_folder
    Image.new("RGB", (10, 10)).save(folder / "frame7.png")  # the last frame fails, mid-run
    out = tmp_path / "new" / "deeper" / "out"
    run = vidseg("segment", folder, "--mask", write_mask(labels[0]), "--out", out, "--size", "64", "--runtime", "torch")  # no export line
    assert "frame7.png is 10x10" in one_line_error(run)
    assert not (tmp_path / "new").exists()


def test_a_parent_folder_another_run_makes_meanwhile_is_shared_not_a_failure(tmp_path, monkeypatch):
    """batch --jobs 2: two rows into out/0 and out/1 both find out/ missing; the second
    mkdir must take the first's folder, and a failure must not remove it."""
    from vidseg_cli.io.outputs import StagedOutput

    shared, mkdir = tmp_path / "out", Path.mkdir

    def another_run_wins(self, *args, **kwargs):
        if self == shared and not self.exists():
            mkdir(self)
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", another_run_wins)
    staged = StagedOutput(shared / "1", force=False)
    assert staged.staging.is_dir()
    staged.abort()
    assert shared.is_dir() and not staged.staging.exists()


# --- broken output reported as success --------------------------------------------------


def _limited(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.slow
def test_file_too_large_fails_the_run_and_publishes_nothing(tmp_path, clip):
    out = tmp_path / "efbig"
    run = subprocess.run(
        [sys.executable, "-m", "vidseg_cli", "segment", str(clip[0]), "--mask", str(clip[1]), "--out", str(out),
         "--format", "all", "--size", "64", "--runtime", "torch"],  # no ONNX export in the limit
        capture_output=True, text=True, preexec_fn=_limited(6_000), cwd=PROJECT, timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "File too large" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["png", "video-close"])
def test_disk_full_fails_the_run_and_publishes_nothing(vidseg, tmp_path, clip, monkeypatch, where):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "png":
        monkeypatch.setattr(sinks, "save_palette_png", full)
    else:
        monkeypatch.setattr(video_sinks.OverlaySink, "close", full)
    out = tmp_path / "out"
    run = vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--format", "all", "--size", "64")
    assert "No space left on device" in one_line_error(run, code=1)
    assert not out.exists() and leftovers(tmp_path) == []


# --- interruption -----------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_exits_143_with_one_line_and_leaves_nothing(tmp_path):
    from vidseg_cli.synthetic import write_clip

    video, mask = write_clip(tmp_path / "clip", length=400, height=96, width=128, objects=1, seed=2)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "vidseg_cli", "segment", str(video), "--mask", str(mask), "--out", str(out), "--size", "64", "--runtime", "torch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT,
    )
    deadline = time.monotonic() + 60
    while not any(".partial" in p.name for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the staging folder exists once frames are being written
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip() == "terminated; nothing was written"
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_importing_is_one_line(signum, code, word):
    # the signal arrives exactly while the command's modules (torch...) are being imported
    script = (
        "import builtins, os, signal\n"
        "real = builtins.__import__\n"
        "def hooked(name, *args, **kwargs):\n"
        f"    if name == 'vidseg_cli.cli.app': os.kill(os.getpid(), {int(signum)})\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = hooked\n"
        "from vidseg_cli.cli.main import main\n"
        "main(['--help'])\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT, timeout=60)
    assert run.returncode == code
    assert run.stderr.strip() == f"{word}; nothing was written"


# --- usage errors and help --------------------------------------------------------------


def _main(capfd, *args: str) -> tuple[int, str, str]:
    from vidseg_cli.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    return exit_.value.code, out, err


def test_usage_errors_are_one_line(capfd, clip):
    for args, text in [
        (("segment", clip[0], "--mask", clip[1], "--update", "Z"), "'Z' is not one of"),
        (("segment", clip[0]), "Missing option '--mask'"),
        (("nonsense",), "No such command"),
    ]:
        code, out, err = _main(capfd, *args)
        assert code == 2 and out == ""
        assert err.startswith("error: ") and text in err and len(err.strip().splitlines()) == 1, err


def test_no_arguments_print_help_on_stderr_and_exit_2(capfd):
    code, out, err = _main(capfd)
    assert code == 2 and out == "" and "Usage: vidseg" in err


def test_help_shows_flags_as_flags(capfd):
    code, out, _ = _main(capfd, "segment", "--help")
    assert code == 0
    assert "<bool>" not in out and "{input}" not in out and "Usage: vidseg segment [OPTIONS] INPUT" in out


@pytest.mark.parametrize(("option", "value"), [("--size", "100000"), ("--size", "8"), ("--slots", "100000")])
def test_numeric_options_are_bounded_before_anything_is_allocated(vidseg, tmp_path, clip, option, value):
    run = vidseg("segment", clip[0], "--mask", clip[1], "--out", tmp_path / "out", option, value)
    assert option in one_line_error(run)


# --- silently wrong answers -------------------------------------------------------------


def test_16_bit_frames_are_scaled_not_white(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    ramp = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "00000.png")  # 16-bit greyscale PNG
    frame = next(iter(FolderSource(folder)))
    assert frame.image.dtype == np.uint8 and frame.image.shape == (48, 64, 3)
    np.testing.assert_array_equal(frame.image[..., 0], (ramp >> 8).astype(np.uint8))


def test_16_bit_mask_ids_are_renumbered_and_reported_not_merged(vidseg, tmp_path, clip):
    wide = np.zeros((96, 128), np.uint16)
    wide[10:40, 10:40], wide[50:80, 60:100] = 1000, 2000
    mask = tmp_path / "wide.png"
    Image.fromarray(wide).save(mask)
    ids = MaskReader((96, 128)).read(mask)
    assert set(np.unique(ids)) == {0, 1, 2}
    run = vidseg("segment", clip[0], "--mask", mask, "--out", tmp_path / "out", "--size", "64", "--json")
    assert run.code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["objects"] == [1, 2] and summary["renumbered_ids"] == {"1000": 1, "2000": 2}
    assert "1000 -> 1, 2000 -> 2" in run.stderr


def test_16_bit_mask_of_0_and_65535_is_one_object(tmp_path):
    wide = np.zeros((20, 30), np.uint16)
    wide[5:10, 5:10] = 65535
    Image.fromarray(wide).save(tmp_path / "m.png")
    assert set(np.unique(MaskReader((20, 30)).read(tmp_path / "m.png"))) == {0, 1}


def test_grey_jpeg_mask_is_one_object_with_a_warning(tmp_path, capfd):
    grey = np.zeros((96, 128), np.uint8)
    grey[20:60, 30:90] = 255
    Image.fromarray(grey).save(tmp_path / "m.jpg", quality=75)
    ids = MaskReader((96, 128)).read(tmp_path / "m.jpg")
    assert set(np.unique(ids)) == {0, 1}
    assert abs(int(ids.sum()) - 40 * 60) < 100
    assert "lossy JPEG" in capfd.readouterr().err


def test_colour_jpeg_mask_is_refused(tmp_path):
    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[20:60, 10:50] = (128, 0, 0)
    rgb[20:60, 70:120] = (0, 128, 0)
    Image.fromarray(rgb).save(tmp_path / "m.jpg", quality=75)
    with pytest.raises(VidsegError, match="colour JPEG"):
        MaskReader((96, 128)).read(tmp_path / "m.jpg")


def test_rgba_mask_transparent_pixels_are_background(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = (128, 0, 0)  # the whole image is DAVIS red...
    rgba[5:10, 5:10, 3] = 255  # ...but only this square is opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    ids = MaskReader((20, 30)).read(tmp_path / "m.png")
    assert int(ids.sum()) == 25 and set(np.unique(ids)) == {0, 1}


def test_an_image_over_the_pixel_limit_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(VidsegError, match="too large to read safely: the limit is 1,000 pixels"):
        MaskReader((100, 100)).read(tmp_path / "big.png")


def test_a_model_file_missing_tensors_of_a_tuned_block_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vidseg_cli.vos.models import load_memnet
    from vidseg_cli.weights.registry import resolve

    with safe_open(str(resolve("vos-effl0")), framework="pt") as handle:
        state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    block_8 = [name for name in state if name.startswith("backbone._blocks.8.")]
    cases = {
        "one tensor": ({k: v for k, v in state.items() if k != block_8[0]}, metadata),
        "a whole block, recorded": ({k: v for k, v in state.items() if k not in block_8}, {**metadata, "tuned_blocks": "8,9,10"}),
        "a whole block, unrecorded": (
            {k: v for k, v in state.items() if not k.startswith("backbone._blocks.9.")}, metadata,
        ),
    }
    for name, (tensors, meta) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        with pytest.raises(VidsegError, match="does not fit its own config"):
            load_memnet(path)


# --- bench ------------------------------------------------------------------------------


def _sparse_dataset(root: Path, keep: set[int]) -> Path:
    write_davis(root, sequences=1, length=20, height=96, width=128)
    for path in (root / "Annotations" / "synthetic-0").iterdir():
        if int(path.stem) not in keep:
            path.unlink()
    return root


def test_bench_pairs_annotations_by_frame_name(vidseg, tmp_path):
    from vidseg_cli.metrics.davis import boundary_f_measure, region_similarity
    from vidseg_cli.vos.davis import load_davis

    root = _sparse_dataset(tmp_path / "data", {0, 10, 19})
    [sequence] = load_davis(root)
    assert sequence.annotated == [0, 10, 19] and sequence.scored == [10] and sequence.frame_count == 20
    run = vidseg("bench", "--data", root, "--model", "propagate", "--size", "128", "--json")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["frames"] == 20 and report["scored_frames"] == 1
    assert "annotated frames only" in run.stderr
    # the same run by hand: frame 10's prediction against frame 10's truth, not frame 1's
    frames, truths = root / "JPEGImages" / "synthetic-0", root / "Annotations" / "synthetic-0"
    out = tmp_path / "out"
    run = vidseg("segment", frames, "--mask", truths / "00000.png", "--model", "propagate", "--size", "128", "--out", out)
    assert run.code == 0, run.stderr
    predicted = np.asarray(Image.open(out / "00010.png")) == 1
    truth = np.asarray(Image.open(truths / "00010.png")) == 1
    expected = (region_similarity(predicted, truth) + boundary_f_measure(predicted, truth)) / 2
    assert report["results"][0]["J&F"] == pytest.approx(expected, abs=1e-3)


def test_bench_leaves_out_sequences_it_cannot_score_and_writes_strict_json(vidseg, tmp_path):
    root = _sparse_dataset(tmp_path / "data", {0})
    run = vidseg("bench", "--data", root, "--model", "propagate", "--size", "64", "--json")
    assert "can be scored" in one_line_error(run)
    assert "NaN" not in run.stdout
    assert json.loads(json_text({"J&F": float("nan"), "x": [float("inf")]})) == {"J&F": None, "x": [None]}


# --- rough edges ------------------------------------------------------------------------


def test_hidden_files_in_a_frame_folder_are_skipped(frame_folder):
    folder, _ = frame_folder
    (folder / "._frame0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    assert len(FolderSource(folder).files) == 8


@pytest.mark.parametrize("spec", ["-1:{}", "abc:{}", "1.5:{}"])
def test_a_bad_frame_index_is_named(tmp_path, write_mask, spec):
    mask = write_mask(np.ones((4, 4), np.uint8))
    with pytest.raises(VidsegError, match="is not a frame number"):
        parse_mask_args([spec.format(mask)])


def test_mask_folder_takes_only_frame_numbers_and_reports_the_rest(tmp_path, capfd):
    folder = tmp_path / "masks"
    folder.mkdir()
    for name in ("00003.png", "bike_v2.png", ".00004.png"):
        save_palette_png(np.ones((4, 4), np.uint8), folder / name)
    masks = parse_mask_args([str(folder)])
    assert [(m.frame, m.path.name) for m in masks] == [(3, "00003.png")]
    assert "bike_v2.png" in capfd.readouterr().err


def test_train_never_writes_into_its_data_and_force_keeps_foreign_folders(vidseg, tmp_path):
    root = write_davis(tmp_path / "data", sequences=1, length=4, height=64, width=96)
    before = snapshot(root)
    run = vidseg("train", "vos", "--data", root, "--out", root, "--steps", "1", "--force")
    assert "the input" in one_line_error(run)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    run = vidseg("train", "vos", "--data", root, "--out", foreign, "--steps", "1", "--force")
    assert "not a vidseg run folder" in one_line_error(run)
    assert (foreign / "thesis.tex").read_text() == "years of work" and snapshot(root) == before

