"""Labelled video for semseg: CamVid's SegNet layout grouped into sequences in time order,
the generic layout, and label checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vidseg_cli.errors import VidsegError
from vidseg_cli.semseg.data import (
    CAMVID_CLASSES,
    CAMVID_VOID,
    load_camvid,
    load_generic,
    load_labelled,
    load_splits,
    read_label,
)


def _pair(images, labels, stem, label_value=3):
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(images / f"{stem}.jpg")
    Image.fromarray(np.full((8, 12), label_value, np.uint8)).save(labels / f"{stem}.png")


def test_camvid_frames_group_by_prefix_in_number_order(tmp_path):
    for stem in ("0016E5_08400", "0001TP_006720", "0016E5_00390", "0001TP_006690", "Seq05VD_f00030", "street"):
        _pair(tmp_path / "val", tmp_path / "valannot", stem)
    with pytest.raises(VidsegError, match="<sequence>_<frame number>"):
        load_camvid(tmp_path, "val")  # street.jpg names no sequence
    (tmp_path / "val" / "street.jpg").unlink()
    sequences = load_camvid(tmp_path, "val")
    assert [s.name for s in sequences] == ["0001TP", "0016E5", "Seq05VD"]
    assert sequences[2].frames[0].number == 30
    assert [f.number for f in sequences[1].frames] == [390, 8400]  # by number, not by name
    assert load_labelled(tmp_path, "val") == sequences


def test_generic_layout_pairs_by_stem_in_natural_order(tmp_path):
    for stem in ("frame10", "frame2", "frame1"):
        _pair(tmp_path / "images" / "street", tmp_path / "labels" / "street", stem)
    (sequence,) = load_generic(tmp_path)
    assert [f.image.stem for f in sequence.frames] == ["frame1", "frame2", "frame10"]
    (tmp_path / "labels" / "street" / "frame2.png").unlink()
    with pytest.raises(VidsegError, match="street/frame2.jpg has no label"):
        load_labelled(tmp_path)


def test_labels_hold_class_ids_or_void(tmp_path):
    _pair(tmp_path / "i", tmp_path / "l", "ok", label_value=CAMVID_VOID)
    assert (read_label(tmp_path / "l" / "ok.png", len(CAMVID_CLASSES), CAMVID_VOID) == CAMVID_VOID).all()
    _pair(tmp_path / "i", tmp_path / "l", "bad", label_value=12)
    with pytest.raises(VidsegError, match="class id 12 is neither 0..10 nor void"):
        read_label(tmp_path / "l" / "bad.png", len(CAMVID_CLASSES), CAMVID_VOID)


@pytest.mark.skipif(not (__import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/camvid").is_dir(),
                    reason="../shared/data/camvid is absent")
def test_the_shared_camvid_splits():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
    counts = {split: sum(len(s.frames) for s in load_camvid(root, split)) for split in ("train", "val", "test")}
    assert counts == {"train": 367, "val": 101, "test": 233}


def test_splits_merge_into_sequences_in_time_order(tmp_path):
    for split, stems in {"train": ("0016E5_00390", "0001TP_006690"), "val": ("0016E5_00360", "0016E5_00420")}.items():
        for stem in stems:
            _pair(tmp_path / split, tmp_path / f"{split}annot", stem)
    sequences = load_splits(tmp_path, ["train", "val"])
    assert [s.name for s in sequences] == ["0001TP", "0016E5"]
    assert [f.number for f in sequences[1].frames] == [360, 390, 420]  # val's frames around train's
    assert load_splits(tmp_path, ["val"]) == load_camvid(tmp_path, "val")
    with pytest.raises(VidsegError, match="test: not found"):
        load_splits(tmp_path, ["train", "test"])
