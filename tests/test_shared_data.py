"""Checks on the real example clips; skipped when ../shared/data is absent."""

import json

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

JUDO = SHARED_DATA / "examples"
pytestmark = pytest.mark.skipif(not JUDO.is_dir(), reason="../shared/data is not available")


def test_judo_forward_tracks_four_objects_from_their_first_mask_frames(vidseg, tmp_path):
    out = tmp_path / "judo"
    run = vidseg(
        "segment", JUDO / "images" / "judo", "--mask", JUDO / "masks" / "judo",
        "--resize-mask", "--out", out, "--json", "--direction", "forward",
    )
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["objects"] == [1, 2, 3, 4]
    first_frame = {1: 0, 2: 5, 3: 8, 4: 13}
    for index in range(16):
        present = set(np.unique(np.asarray(Image.open(out / f"{index:05d}.png"))).tolist()) - {0}
        assert present == {obj for obj, start in first_frame.items() if index >= start}, index


def test_judo_seated_person_is_found_backwards_from_frame_13(vidseg, tmp_path):
    """Object 4, the seated person, is visible from frame 0 but first masked on frame 13."""
    out = tmp_path / "judo"
    run = vidseg("segment", JUDO / "images" / "judo", "--mask", f"13:{JUDO / 'masks' / 'judo' / '00013.png'}",
                 "--out", out, "--json")
    assert run.code == 0, run.stderr
    mask_13 = np.asarray(Image.open(out / "00013.png")) == 4
    for index in range(13):
        person = np.asarray(Image.open(out / f"{index:05d}.png")) == 4
        assert person.sum() > 0.5 * mask_13.sum(), index
        overlap = (person & mask_13).sum() / (person | mask_13).sum()
        assert overlap > 0.5, (index, overlap)  # seated: the mask barely moves


def test_judo_mask_of_wrong_width_is_refused_without_resize(vidseg, tmp_path):
    run = vidseg("segment", JUDO / "images" / "judo", "--mask", JUDO / "masks" / "judo", "--out", tmp_path / "o")
    assert run.code == 2 and "is 853x480 but the frames are 854x480" in run.stderr


@pytest.mark.slow
def test_semseg_labels_the_example_clip_with_the_shipped_model(vidseg, tmp_path):
    """The README's semseg job: the default model on example.mp4, every format."""
    out = tmp_path / "example_semseg"
    run = vidseg("semseg", JUDO / "example.mp4", "--format", "all", "--out", out, "--json")
    assert run.code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["frames"] == 117 and summary["model"] == "semseg-camvid"
    assert summary["memory"] == "none" and summary["slots"] == 0  # the default: see the README's semseg table
    assert len(list(out.glob("*.png"))) == 117 and (out / "overlay.mp4").exists() and (out / "labels.mkv").exists()
    assert sum(summary["class_share"].values()) == pytest.approx(1, abs=1e-3)


def test_the_readme_real_video_prediction_beats_copying_the_last_frame(vidseg, tmp_path):
    """The README's `predict-davis` example, on a DAVIS val-dev clip it never trained on."""
    clip = SHARED_DATA / "davis16" / "val-dev" / "JPEGImages" / "car-roundabout"
    if not clip.is_dir():
        pytest.skip("DAVIS val-dev is not in ../shared/data")
    run = vidseg("predict", clip, "--model", "predict-davis", "--start", "0", "--compare", "--out", tmp_path / "p", "--json")
    assert run.code == 0, run.stderr
    scores = json.loads(run.stdout)["metrics"]["mean"]
    assert scores["mse"] < 0.6 * scores["copy_last_mse"]  # the README: 331.9 against 648.3
