"""segment in editing and annotation work: both directions, object events, mattes, RLE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import leftovers
from PIL import Image

from vidseg_cli.engine.directions import DirectionPlan
from vidseg_cli.engine.events import EventTracker
from vidseg_cli.io.sinks import Prediction, save_palette_png
from vidseg_cli.options import EventOptions
from vidseg_cli.synthetic import frames


def _frame_folder(root: Path, length: int, objects: int = 1, seed: int = 5, size=(96, 128)) -> tuple[Path, list[np.ndarray]]:
    folder = root / "frames"
    folder.mkdir()
    truths = []
    for index, (image, labels) in enumerate(frames(length, *size, objects=objects, seed=seed)):
        Image.fromarray(image).save(folder / f"{index:05d}.png")
        truths.append(labels)
    return folder, truths


def _labels(folder: Path, index: int) -> np.ndarray:
    return np.asarray(Image.open(folder / f"{index:05d}.png"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


# --- both directions --------------------------------------------------------------------


def test_a_mask_of_frame_20_only_segments_frames_0_to_19_backwards(vidseg, tmp_path):
    folder, truths = _frame_folder(tmp_path, 24)
    mask = tmp_path / "mask20.png"
    save_palette_png(truths[20], mask)
    out = tmp_path / "out"
    run = vidseg("segment", folder, "--mask", f"20:{mask}", "--out", out, "--json")
    assert run.code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["frames"] == 24 and summary["steps"] == 21 + 4  # 20 .. 0 backwards, then 20 .. 23
    ious = [_iou(_labels(out, t) == 1, truths[t] == 1) for t in range(20)]
    assert min(ious) > 0.5 and np.mean(ious) > 0.7, ious
    forward = tmp_path / "forward"
    run = vidseg("segment", folder, "--mask", f"20:{mask}", "--out", forward, "--direction", "forward")
    assert run.code == 0 and not any(_labels(forward, t).any() for t in range(20))
    assert leftovers(tmp_path) == [] and not (out / ".cache").exists()


def test_between_two_masks_each_frame_takes_the_nearer_pass():
    plan = DirectionPlan("both", [5, 15])
    assert [plan.serves(t) for t in (0, 4, 5, 9, 10, 11, 15, 20)] == [
        "backward", "backward", "forward", "forward", "forward", "backward", "forward", "forward",
    ]
    assert plan.needs_backward and plan.forward_runs(5) and not plan.forward_runs(4)
    only_back = DirectionPlan("backward", [5, 15])
    assert [only_back.serves(t) for t in (0, 10, 15, 16)] == ["backward", "backward", "backward", None]
    assert not DirectionPlan("both", [0]).needs_backward  # a first-frame mask: one forward pass, as before


# --- events -----------------------------------------------------------------------------


def _leaving_clip(root: Path) -> tuple[Path, Path, list[int]]:
    """A textured square moves right, leaves the frame (frames 15-22), and comes back."""
    rng = np.random.default_rng(0)
    height, width = 120, 160
    background = np.kron(rng.integers(60, 120, (height // 8, width // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    texture = rng.integers(0, 255, (30, 30, 3)).astype(np.uint8)
    texture[..., 0] = 230
    folder = root / "frames"
    folder.mkdir()
    areas = []
    for t in range(36):
        x = 40 + 8 * t if t <= 17 else 160 - 8 * (t - 22)
        image, labels = background.copy(), np.zeros((height, width), np.uint8)
        x0, x1 = max(x, 0), min(x + 30, width)
        if x1 > x0:
            image[45:75, x0:x1] = texture[:, x0 - x : x1 - x]
            labels[45:75, x0:x1] = 1
        Image.fromarray(image).save(folder / f"{t:05d}.png")
        areas.append(int(labels.sum()))
        if t == 0:
            save_palette_png(labels, root / "mask.png")
    return folder, root / "mask.png", areas


def test_events_report_lost_and_reappeared_at_the_right_frames(vidseg, tmp_path):
    folder, mask, areas = _leaving_clip(tmp_path)
    assert areas[14] > 0 and areas[15:23] == [0] * 8 and areas[23] > 0  # the truth
    run = vidseg("segment", folder, "--mask", mask, "--out", tmp_path / "out", "--events", "-")
    assert run.code == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["frame"] for r in records] == list(range(36))
    events = {(r["frame"], e["event"]) for r in records for e in r["events"]}
    assert events == {(0, "appeared"), (15, "lost"), (23, "reappeared")}
    first = records[0]["objects"]["1"]
    assert first["area"] == 900 and first["bbox"] == [40, 45, 30, 30] and first["confidence"] == 1.0
    assert first["centroid"] == [54.5, 59.5] and first["share"] == round(900 / (120 * 160), 6)
    assert records[18]["objects"]["1"] == {"area": 0, "share": 0.0, "bbox": None, "centroid": None, "confidence": None}
    assert 0.5 < records[5]["objects"]["1"]["confidence"] <= 1.0
    assert "output: " in run.stderr  # stdout carries the events, so the folder is named on stderr


def test_events_file_and_json_summary(vidseg, tmp_path):
    folder, mask, _ = _leaving_clip(tmp_path)
    log = tmp_path / "logs" / "events.jsonl"
    run = vidseg("segment", folder, "--mask", mask, "--out", tmp_path / "out", "--events", log, "--json")
    assert run.code == 0, run.stderr
    assert len(log.read_text().splitlines()) == 36
    assert json.loads(run.stdout)["events"]["1"] == {"first_frame": 0, "frames_present": 28, "frames_lost": 8, "lost": [[15, 22]]}


def test_event_tracker_ignores_flicker_shorter_than_lost_after():
    tracker = EventTracker((1,), EventOptions(after=3, min_share=0.0))
    present = [1, 1, 0, 0, 1, 0, 0, 0, 0, 1]
    records = []
    for frame, here in enumerate(present):
        labels = np.full((4, 4), here, np.uint8)
        records += tracker.observe(frame, frame / 25, Prediction(labels))
    records += tracker.finish()
    events = [(r["frame"], e["event"]) for r in records for e in r["events"]]
    assert events == [(0, "appeared"), (5, "lost"), (9, "reappeared")]
    assert tracker.summary()["1"]["lost"] == [[5, 8]]


# --- mattes and RLE ---------------------------------------------------------------------


def test_alpha_and_rle_round_trip_to_the_label_pngs(vidseg, tmp_path):
    from pycocotools import mask as coco_mask

    folder, truths = _frame_folder(tmp_path, 8, objects=2, seed=9)
    save_palette_png(truths[3], tmp_path / "m.png")
    out = tmp_path / "out"
    run = vidseg("segment", folder, "--mask", f"3:{tmp_path / 'm.png'}", "--out", out, "--format", "all", "--json")
    assert run.code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert {"1/00000.png", "2/00007.png", "rle.json", "00007.png"} <= set(summary["outputs"])
    rle = json.loads((out / "rle.json").read_text())
    assert rle["format"] == "coco-rle" and rle["objects"] == [1, 2] and (rle["height"], rle["width"]) == (96, 128)
    soft = 0
    for record in rle["frames"]:
        index = record["frame"]
        labels = _labels(out, index)
        for object_id in (1, 2):
            entry = record["objects"].get(str(object_id))
            decoded = np.zeros_like(labels) if entry is None else coco_mask.decode(
                {"size": entry["size"], "counts": entry["counts"].encode()}
            )
            np.testing.assert_array_equal(decoded.astype(bool), labels == object_id)
            matte = np.asarray(Image.open(out / str(object_id) / f"{index:05d}.png"))
            assert matte.dtype == np.uint8 and matte.shape == labels.shape
            np.testing.assert_array_equal(matte >= 128, labels == object_id)
            soft += int(((matte > 0) & (matte < 255)).sum())
    assert soft > 0  # mattes are soft at the edges, not a copy of the labels
    assert len(rle["frames"]) == 8


# --- bad input for the new options ------------------------------------------------------


def _refused(run, text: str) -> None:
    assert run.code == 2, (run.stdout, run.stderr)
    assert text in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (("--direction", "sideways"), "'sideways' is not one of"),
        (("--format", "gif"), "'gif' is not one of"),
        (("--lost-after", "0"), "--lost-after"),
        (("--lost-below", "2"), "--lost-below"),
        (("--events", "-", "--json"), "both write to stdout"),
    ],
)
def test_bad_new_options_are_one_line(capfd, tmp_path, clip, extra, text):
    from vidseg_cli.cli.main import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["segment", str(clip[0]), "--mask", str(clip[1]), "--out", str(out), *extra])
    stdout, stderr = capfd.readouterr()
    assert exit_.value.code == 2 and stdout == ""
    assert stderr.startswith("error: ") and text in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


def test_events_file_is_never_an_input_inside_the_output_or_replaced_without_force(vidseg, tmp_path, clip):
    out = tmp_path / "out"
    _refused(vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--events", clip[1]), "is the input")
    _refused(vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--events", out / "e.jsonl"), "inside the output")
    existing = tmp_path / "e.jsonl"
    existing.write_text("keep")
    _refused(vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--events", existing), "already exists")
    assert existing.read_text() == "keep" and not out.exists() and leftovers(tmp_path) == []
    run = vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--events", existing, "--force", "--size", "64")
    assert run.code == 0 and len(existing.read_text().splitlines()) == 12
