"""segment in editing and annotation work: both directions, object events, mattes, RLE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, leftovers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vidseg_cli.io.sink import Prediction
from vidseg_cli.io.sinks import save_palette_png
from vidseg_cli.options import EventOptions
from vidseg_cli.synthetic import frames
from vidseg_cli.vos.directions import DirectionPlan, combine, fuse
from vidseg_cli.vos.events import EventTracker


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


@pytest.mark.slow
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
    plan = DirectionPlan("both", {5: {1}, 15: {1}})
    assert [plan.serving(t) for t in (0, 4, 5, 9, 10, 11, 15, 20)] == [
        {1: "backward"}, {1: "backward"}, {1: "forward"}, {1: "forward"}, {1: "forward"}, {1: "backward"},
        {1: "forward"}, {1: "forward"},
    ]
    assert plan.needs_backward and not plan.fuses and plan.forward_runs(5) and not plan.forward_runs(4)
    only_back = DirectionPlan("backward", {5: {1}, 15: {1}})
    assert [only_back.serving(t) for t in (0, 10, 15, 16)] == [{1: "backward"}, {1: "backward"}, {1: "backward"}, {}]
    assert not DirectionPlan("both", {0: {1, 2}}).needs_backward  # a first-frame mask: one forward pass, as before


def test_each_object_is_served_by_the_nearer_pass_that_knows_it():
    """Objects annotated as they enter (the judo masks): a later mask that names only its
    newcomer serves only the newcomer backwards; the earlier objects stay forward."""
    plan = DirectionPlan("both", {0: {1}, 5: {2}, 8: {3}, 13: {4}})
    assert plan.serving(3) == {1: "forward", 2: "backward", 3: "backward", 4: "backward"}
    assert plan.serving(7) == {1: "forward", 2: "forward", 3: "backward", 4: "backward"}
    assert plan.serving(11) == {1: "forward", 2: "forward", 3: "forward", 4: "backward"}
    assert plan.serving(13) == dict.fromkeys((1, 2, 3, 4), "forward")
    assert plan.fuses and plan.needs_backward
    forward_only = DirectionPlan("forward", {0: {1}, 5: {2}})
    assert forward_only.serving(3) == {1: "forward"} and not forward_only.needs_backward
    # an object named on frames 0 and 20 is served backward from 20 on frame 12, even though
    # the mask of frame 10 (naming another object) is nearer
    assert DirectionPlan("both", {0: {1}, 10: {2}, 20: {1, 2}}).serving(12) == {1: "backward", 2: "forward"}


def test_fuse_takes_each_object_from_its_pass_and_keeps_a_given_mask_exact():
    forward = Prediction(np.array([[1, 1, 0]], np.uint8), np.array([[[230, 200, 10]]], np.uint8), (1,))
    backward = Prediction(
        np.array([[0, 2, 2]], np.uint8), np.array([[[250, 0, 0]], [[0, 240, 220]]], np.uint8), (1, 2)
    )
    fused = fuse({1: "forward", 2: "backward"}, forward, backward)
    assert fused.object_ids == (1, 2) and fused.labels.tolist() == [[1, 2, 2]]
    assert fused.probability(1)[0, 0] > 127 and fused.probability(2)[0, 2] > 127
    mask = np.array([[0, 0, 1]], np.uint8)  # the user says pixel 2 is object 1, and 1 is nowhere else
    exact = fuse({1: "forward", 2: "backward"}, forward, backward, mask)
    assert exact.labels.tolist() == [[0, 2, 1]] and exact.probabilities[:, 0, 2].tolist() == [255, 0]
    assert combine({1: "forward"}, forward, None, (1, 3)) is forward
    assert not combine({}, None, None, (1, 3)).labels.any()


def test_an_ended_object_stays_out_until_a_mask_names_it_again():
    plan = DirectionPlan("both", {0: {1, 2}, 12: {2}}, ends={2: 5})
    assert [sorted(plan.serving(t)) for t in (4, 5, 11, 12, 13)] == [[1, 2], [1], [1], [1, 2], [1, 2]]
    assert plan.fuses and not DirectionPlan("both", {0: {1, 2}}).fuses
    forward = Prediction(np.array([[1, 2, 0]], np.uint8), np.array([[[200, 30, 10]], [[40, 220, 20]]], np.uint8), (1, 2))
    without = combine({1: "forward"}, forward, None, (1, 3))  # object 2 ended: its pixel goes to the rest
    assert without.object_ids == (1,) and without.labels.tolist() == [[1, 0, 0]]


def test_end_removes_an_object_from_its_frame_on(vidseg, tmp_path):
    folder, truths = _frame_folder(tmp_path, 10, objects=2, seed=5)
    save_palette_png(truths[0], tmp_path / "m.png")
    out = tmp_path / "out"
    run = vidseg("segment", folder, "--mask", tmp_path / "m.png", "--end", "2:6", "--out", out, "--format", "all",
                 "--events", tmp_path / "e.jsonl")
    assert run.code == 0, run.stderr
    present = [set(np.unique(_labels(out, t))) - {0} for t in range(10)]
    assert present[:6] == [{1, 2}] * 6 and present[6:] == [{1}] * 4, present
    records = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert {(r["frame"], e["event"]) for r in records for e in r["events"] if e["object"] == 2} == {(0, "appeared"), (6, "lost")}
    assert not np.asarray(Image.open(out / "2" / "00007.png")).any()  # its matte is empty too


@pytest.mark.parametrize(("end", "text"), [
    ("2", "give an object id and a frame"),
    ("7:3", "no mask names object 7"),
    ("1:0", "it can only end after that"),
    ("1:99", "the video has 10 frames"),
])
def test_bad_end_is_one_line(vidseg, tmp_path, end, text):
    folder, truths = _frame_folder(tmp_path, 10, objects=2, seed=5)
    save_palette_png(truths[0], tmp_path / "m.png")
    run = vidseg("segment", folder, "--mask", tmp_path / "m.png", "--end", end, "--out", tmp_path / "out")
    assert run.code == 2 and text in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "out").exists()


VISIBLE = 60  # pixels of truth (of 96x128) for an object to count as visible on a frame


@st.composite
def _schedules(draw, truths: list[np.ndarray]) -> dict[int, set[int]]:
    """Masks on 1-4 random frames, each naming a random non-empty subset of the objects
    visible there; together they name every object at least once."""
    length, objects = len(truths), sorted(int(i) for i in set(np.unique(truths[0])) - {0})
    schedule: dict[int, set[int]] = {}
    for frame in draw(st.lists(st.integers(0, length - 1), min_size=1, max_size=4, unique=True)):
        visible = [i for i in objects if (truths[frame] == i).sum() >= VISIBLE]
        if visible:
            schedule[frame] = set(draw(st.lists(st.sampled_from(visible), min_size=1, unique=True)))
    for object_id in objects:  # an object no mask named yet: named where it is largest
        if not any(object_id in named for named in schedule.values()):
            frame = int(np.argmax([(truth == object_id).sum() for truth in truths]))
            schedule.setdefault(frame, set()).add(object_id)
    return schedule


def _reachable(direction: str, frames: list[int], t: int) -> bool:
    """Whether a pass of ``direction`` reaches frame t from the masks naming an object."""
    return {"forward": t >= frames[0], "backward": t <= frames[-1], "both": True}[direction]


@pytest.fixture(scope="module")
def three_objects(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    return _frame_folder(tmp_path_factory.mktemp("three"), 12, objects=3, seed=11)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), direction=st.sampled_from(["both", "forward", "backward"]))
def test_no_named_object_vanishes_from_a_frame_where_it_is_visible(vidseg, tmp_path_factory, three_objects, data, direction):
    """Objects entering at random frames, masks naming random subsets: on every frame a pass
    of the direction reaches, every object the masks named is there where it is visible, in
    the labels, the mattes, the RLE and the events alike."""
    from pycocotools import mask as coco_mask

    folder, truths = three_objects
    schedule = data.draw(_schedules(truths), label="schedule")
    root = tmp_path_factory.mktemp("run")
    arguments = []
    for frame, named in schedule.items():
        save_palette_png(np.where(np.isin(truths[frame], list(named)), truths[frame], 0).astype(np.uint8), root / f"{frame}.png")
        arguments += ["--mask", f"{frame}:{root / f'{frame}.png'}"]
    out = root / "out"
    slots = max(5, len(schedule) + 1)  # mask frames stay in memory for good: up to 7 here, beyond the default 5
    run = vidseg("segment", folder, *arguments, "--slots", str(slots), "--direction", direction, "--out", out, "--format", "all", "--events", root / "events.jsonl")
    assert run.code == 0, run.stderr
    rle = {record["frame"]: record["objects"] for record in json.loads((out / "rle.json").read_text())["frames"]}
    events = {record["frame"]: record["objects"] for record in map(json.loads, (root / "events.jsonl").read_text().splitlines())}
    for object_id in sorted(set().union(*schedule.values())):
        frames = sorted(f for f, named in schedule.items() if object_id in named)
        for t, truth in enumerate(truths):
            if (truth == object_id).sum() < VISIBLE or not _reachable(direction, frames, t):
                continue
            found = _labels(out, t) == object_id
            assert found.any(), f"object {object_id} vanished from frame {t} (masks {schedule}, {direction})"
            assert _iou(found, truth == object_id) > 0.3, (object_id, t, schedule, direction)
            entry = rle[t][str(object_id)]
            decoded = coco_mask.decode({"size": entry["size"], "counts": entry["counts"].encode()}).astype(bool)
            np.testing.assert_array_equal(decoded, found)
            np.testing.assert_array_equal(np.asarray(Image.open(out / str(object_id) / f"{t:05d}.png")) >= 128, found)
            assert events[t][str(object_id)]["area"] == int(found.sum())


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "examples" / "masks" / "judo").is_dir(), reason="needs ../shared/data")
def test_judo_objects_annotated_as_they_enter_are_on_every_frame(vidseg, tmp_path):
    """The shared judo clip names object 1 on frame 0, 2 on 5, 3 on 8 and 4 on 13, each mask
    naming only its newcomer; all four are in view throughout. With the default direction
    every object is on every frame: after its mask (forward) and before it (backward)."""
    examples = SHARED_DATA / "examples"
    out = tmp_path / "judo"
    run = vidseg("segment", examples / "images" / "judo", "--mask", examples / "masks" / "judo", "--resize-mask", "--out", out)
    assert run.code == 0, run.stderr
    present = [sorted(set(np.unique(_labels(out, t))) - {0}) for t in range(16)]
    assert present == [[1, 2, 3, 4]] * 16, present
    given = {t: _labels(out, t) for t in (5, 8, 13)}
    sizes = [(given[t] == object_id).sum() for t, object_id in ((5, 2), (8, 3), (13, 4))]
    for t, object_id, size in ((0, 2, sizes[0]), (3, 3, sizes[1]), (6, 4, sizes[2])):  # frames before each mask
        assert 0.5 * size < (_labels(out, t) == object_id).sum() < 2 * size, (t, object_id)


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
