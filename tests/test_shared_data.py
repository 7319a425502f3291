"""Checks on the real example clips; skipped when ../shared/data is absent."""

import json

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

JUDO = SHARED_DATA / "examples"
pytestmark = pytest.mark.skipif(not JUDO.is_dir(), reason="../shared/data is not available")


def test_judo_tracks_four_objects_from_their_first_mask_frames(vidseg, tmp_path):
    out = tmp_path / "judo"
    run = vidseg(
        "segment", JUDO / "images" / "judo", "--mask", JUDO / "masks" / "judo",
        "--resize-mask", "--out", out, "--json",
    )
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["objects"] == [1, 2, 3, 4]
    first_frame = {1: 0, 2: 5, 3: 8, 4: 13}
    for index in range(16):
        present = set(np.unique(np.asarray(Image.open(out / f"{index:05d}.png"))).tolist()) - {0}
        assert present == {obj for obj, start in first_frame.items() if index >= start}, index


def test_judo_mask_of_wrong_width_is_refused_without_resize(vidseg, tmp_path):
    run = vidseg("segment", JUDO / "images" / "judo", "--mask", JUDO / "masks" / "judo", "--out", tmp_path / "o")
    assert run.code == 2 and "is 853x480 but the frames are 854x480" in run.stderr
