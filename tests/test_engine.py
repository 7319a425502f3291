"""The session and the memory engine on synthetic clips."""

import json

import numpy as np
import pytest
import torch

from vidseg_cli.engine.job import make_bank
from vidseg_cli.io.frames import _upright
from vidseg_cli.options import MemoryOptions
from vidseg_cli.synthetic import frames
from vidseg_cli.vos.models import create_vos_model
from vidseg_cli.vos.session import VOSSession, aggregate


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@pytest.fixture(scope="module")
def model():
    return create_vos_model("propagate")


def session(model, size=64, **memory) -> VOSSession:
    return VOSSession(model, make_bank(MemoryOptions(**memory), model.fusion()), size, torch.device("cpu"))


def test_tracks_two_objects_on_a_synthetic_clip(model):
    clip = list(frames(20, 96, 128, objects=2, seed=5))
    s = session(model, size=192)
    scores, still = [], []
    for index, (image, truth) in enumerate(clip):
        labels = s.step(image, truth if index == 0 else None).labels
        if index:
            scores += [iou(labels == o, truth == o) for o in (1, 2)]
            still += [iou(clip[0][1] == o, truth == o) for o in (1, 2)]
    assert np.mean(scores) > 0.7, np.mean(scores)
    assert np.mean(scores) > np.mean(still) + 0.2  # far better than holding the first mask


def test_objects_join_from_their_first_mask_frame(model):
    clip = list(frames(12, 96, 128, objects=2, seed=2))
    s = session(model)
    seen = []
    for index, (image, truth) in enumerate(clip):
        mask = None
        if index == 0:
            mask = np.where(truth == 1, 1, 0).astype(np.uint8)
        elif index == 6:
            mask = np.where(truth == 2, 2, 0).astype(np.uint8)  # only the new object, as in DAVIS
        labels = s.step(image, mask).labels
        seen.append(set(np.unique(labels).tolist()))
        if index == 6:
            assert np.array_equal(labels == 2, truth == 2)  # the given mask is exact
            assert (labels == 1).any()  # object 1 is kept outside the new mask
    assert all(2 not in labels for labels in seen[:6])
    assert all({1, 2} <= labels for labels in seen[6:])
    assert s.object_ids == [1, 2]
    permanent = [slot.frame for slot in s.bank.slots if slot.permanent]
    assert permanent == [0, 6]


def test_frames_before_the_first_mask_are_background(model):
    clip = list(frames(5, 64, 64, objects=1, seed=0))
    s = session(model)
    assert not s.step(clip[0][0]).labels.any()
    assert s.step(clip[1][0], clip[1][1]).labels.any()


@pytest.mark.slow
def test_stremn_bank_is_flat_over_a_long_clip(model):
    """1000 frames: never more than 5 slots, and constant bytes once full."""
    s = session(model, size=32, memory="stremn", slots=5)
    sizes = []
    for index, (image, truth) in enumerate(frames(1000, 32, 48, objects=1, seed=4)):
        result = s.step(image, truth if index == 0 else None)
        sizes.append((result.slots, result.memory_bytes))
    assert max(n for n, _ in sizes) == 5
    assert len({b for _, b in sizes[4:]}) == 1  # flat after warm-up (5 writes)


def test_stm_bank_grows_with_the_clip(model):
    s = session(model, size=32, memory="stm", every=5)
    counts = []
    for index, (image, truth) in enumerate(frames(51, 32, 48, objects=1, seed=4)):
        image[0, :4] = 5 * index  # the sprite moves under a pixel on some frames: no frame repeats the last
        counts.append(s.step(image, truth if index == 0 else None).slots)
    # frame 0, every 5th frame, and the previous frame: 1 + t // 5 (+1 unless t % 5 == 0)
    assert counts == [1 + t // 5 + (t % 5 != 0) for t in range(51)]


def test_soft_aggregation_is_a_distribution():
    probs = torch.rand(3, 4, 5)
    out = aggregate(probs)
    assert out.shape == (4, 4, 5)
    assert torch.allclose(out.sum(0), torch.ones(4, 5), atol=1e-5)


def test_rotation_metadata_turns_frames_upright():
    image = np.zeros((2, 4, 3), np.uint8)
    image[:, 0] = 255  # a band on the left
    # FFmpeg reports a phone's portrait clip as -90: turn clockwise, the band goes on top
    assert _upright(image, -90).shape == (4, 2, 3) and (_upright(image, -90)[0] == 255).all()
    assert (_upright(image, 90)[-1] == 255).all()
    assert (_upright(image, 180)[:, -1] == 255).all()
    assert _upright(image, 0) is image


@pytest.mark.slow
def test_segment_json_summary_on_stdout(vidseg, tmp_path, clip):
    out = tmp_path / "out"
    run = vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--json", "--format", "all", "--size", "64")
    assert run.code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["frames"] == 12 and summary["objects"] == [1, 2]
    assert summary["memory_slots_max"] <= 5 and summary["fps"] > 0 and summary["peak_rss_mb"] > 0
    assert {"00011.png", "labels.mkv", "overlay.mp4"} <= set(summary["outputs"])
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != ".vidseg") == sorted(summary["outputs"])


def test_plain_run_prints_the_output_folder(vidseg, tmp_path, clip):
    out = tmp_path / "out"
    run = vidseg("segment", clip[0], "--mask", clip[1], "--out", out, "--size", "64", "--memory", "fifo", "--slots", "3")
    assert run.code == 0 and run.stdout.strip() == str(out)
    assert "12 frames" in run.stderr


def test_flip_tta_treats_a_video_and_its_mirror_alike(model):
    """Both views run and remember, so the mirrored video gives exactly the mirrored masks
    (a network alone is not flip-equivariant), and each view keeps its own memory."""
    from vidseg_cli.options import ReuseOptions
    from vidseg_cli.vos.segment import make_session

    clip = list(frames(8, 64, 96, objects=2, seed=3))

    def run(mirror: bool, tta: str) -> tuple[list[np.ndarray], VOSSession]:
        s = make_session(model, MemoryOptions(slots=3), 64, torch.device("cpu"), ReuseOptions(), tta=tta)
        out = []
        for index, (image, truth) in enumerate(clip):
            if mirror:
                image, truth = image[:, ::-1].copy(), truth[:, ::-1].copy()
            out.append(s.step(image, truth if index == 0 else None).labels)
        return out, s

    plain, plain_session = run(False, "none")
    flipped, session = run(False, "flip")
    mirrored, _ = run(True, "flip")
    assert all(np.array_equal(a[:, ::-1], b) for a, b in zip(flipped, mirrored))
    assert any(not np.array_equal(a, b) for a, b in zip(plain, flipped))  # the second view counts
    agreement = [iou(a == o, b == o) for a, b in zip(plain[1:], flipped[1:]) for o in (1, 2)]
    assert min(agreement) > 0.7, agreement  # the mirrored view is flipped back before averaging
    assert len(session.mirror) == len(session.bank) == len(plain_session.bank)
    assert session.bank.nbytes + session.mirror.nbytes == 2 * plain_session.bank.nbytes


def test_a_repeated_frame_hands_on_the_last_result_without_running_the_network(model):
    """Duplicated or frozen frames: the last result, exactly, and nothing written to memory."""
    image, truth = next(iter(frames(1, 48, 64, objects=2, seed=2)))
    s = session(model, size=48)
    first = s.step(image, truth)
    calls = []
    encode = s.model.encode
    s.model.encode = lambda *args: calls.append(1) or encode(*args)
    try:
        results = [s.step(image.copy()) for _ in range(4)]
    finally:
        s.model.encode = encode
    assert not calls and all(r.repeated for r in results)
    assert all(np.array_equal(r.labels, truth) for r in results) and len(s.bank) == first.slots
    assert s.frame_index == 5


def test_small_changes_and_sensor_noise_are_not_repeats(model):
    """One small object moving over a static frame changes few pixels, by much; noise changes
    every pixel a little: both are computed."""
    clip = list(frames(3, 48, 64, objects=1, seed=2))
    s = session(model, size=48)
    s.step(clip[0][0], clip[0][1])
    moved = clip[0][0].copy()
    moved[10:14, 10:14] = 255 - moved[10:14, 10:14]
    assert not s.step(moved).repeated
    noisy = np.clip(moved + np.random.default_rng(0).normal(0, 2, moved.shape), 0, 255).astype(np.uint8)
    assert not s.step(noisy).repeated
