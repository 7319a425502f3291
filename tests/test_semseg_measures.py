"""The semseg bench's measures: the corruption generator and temporal consistency."""

from __future__ import annotations

import numpy as np
import pytest

from vidseg_cli.semseg.corrupt import KINDS, corrupt, corrupt_clip, corrupted_frames


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:72, :96]
    image = np.stack([(x * 2) % 256, (y * 3) % 256, ((x + y) * 5) % 256], axis=2).astype(np.float32)
    return np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)


def test_every_third_frame_is_degraded_and_the_rest_untouched():
    images = [_scene(i) for i in range(10)]
    degraded, kinds = corrupt_clip(images, seed=0)
    assert corrupted_frames(10) == [2, 5, 8] and list(kinds) == [2, 5, 8]
    assert [kinds[i] for i in (2, 5, 8)] == list(KINDS[:3])  # the kinds take turns
    for index, (before, after) in enumerate(zip(images, degraded, strict=True)):
        assert after.shape == before.shape and after.dtype == np.uint8
        assert np.array_equal(before, after) == (index not in kinds)


def test_the_same_seed_gives_the_same_frames():
    images = [_scene(i) for i in range(9)]
    first, _ = corrupt_clip(images, seed=3)
    again, _ = corrupt_clip(images, seed=3)
    other, _ = corrupt_clip(images, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_degrades_as_it_says(kind):
    image = _scene()
    out = corrupt(image, kind, np.random.default_rng(0)).astype(np.float32)
    pixels = image.astype(np.float32)
    change = np.abs(out - pixels)
    if kind == "blur":  # smoother: less difference between neighbours
        assert np.abs(np.diff(out, axis=1)).mean() < 0.8 * np.abs(np.diff(pixels, axis=1)).mean()
    elif kind == "noise":  # everywhere, by tens of grey levels
        assert (change > 0).mean() > 0.9 and 10 < change.mean() < 40
    elif kind == "occluder":  # a dark part of the frame replaced, the rest untouched
        hidden = change.max(axis=2) > 0
        assert 0.08 < hidden.mean() < 0.3 and out[hidden].mean() < 70
    else:  # glare: brighter, and washed out where it falls
        assert out.mean() > pixels.mean() + 20


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(_scene(), "rain", np.random.default_rng(0))


def test_a_static_clip_scores_100_and_flicker_scores_less():
    pytest.importorskip("cv2")
    from vidseg_cli.metrics.consistency import TemporalConsistency

    image = _scene()
    labels = (np.arange(96)[None, :] // 32).repeat(72, 0).astype(np.uint8)
    still = TemporalConsistency()
    for _ in range(4):
        still.add(image, labels)
    assert still.score() == pytest.approx(100.0)
    flicker = TemporalConsistency()
    for step in range(4):
        flicker.add(image, labels if step % 2 == 0 else 2 - labels)
    assert flicker.score() == pytest.approx(100 / 3, abs=0.5)  # only the middle band agrees


def test_labels_that_move_with_the_scene_agree():
    """A scene panning by 4 pixels a frame, labels panning with it: the flow carries them."""
    pytest.importorskip("cv2")
    from vidseg_cli.metrics.consistency import TemporalConsistency

    wide = np.concatenate([_scene(0), _scene(1)], axis=1)
    columns = np.arange(wide.shape[1])[None, :].repeat(72, 0)
    meter = TemporalConsistency()
    for step in range(4):
        left = 4 * step
        meter.add(np.ascontiguousarray(wide[:, left : left + 96]), ((columns[:, left : left + 96] // 24) % 3).astype(np.uint8))
    assert meter.score() > 90


def test_far_deals_camvid_val_into_clips_1_s_apart():
    """CamVid val is every second frame of a 30 fps video: --far 30 takes every 15th;
    test's frames are already 30 apart, so it is left as it is."""
    from types import SimpleNamespace

    from vidseg_cli.semseg.bench import _far_deal

    def numbered(numbers):
        return SimpleNamespace(frames=[SimpleNamespace(number=n) for n in numbers])

    assert _far_deal(numbered(range(7959, 8161, 2)), 30) == 15
    assert _far_deal(numbered(range(0, 300, 30)), 30) == 1
    assert _far_deal(numbered([5]), 30) == 1
