"""Region steps (vos/regions/): a crop of the frame gives the frame's own features and masks
inside it, away from its halo; a frame where nothing changed runs nothing; the change test
sees a moving object and not a camera's noise and drift."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidseg_cli.memory.slot import Slot
from vidseg_cli.options import MemoryOptions, ReuseOptions, SparseOptions
from vidseg_cli.vos.models import create_vos_model
from vidseg_cli.vos.regions.boxes import Box, cells_of
from vidseg_cli.vos.regions.change import change_map, frame_gain, thumbnail
from vidseg_cli.vos.segment import make_session


@pytest.fixture(scope="module")
def model():
    return create_vos_model("vos-effl0-v2")


def _image(size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A smooth random image (3, H, W) in [0, 255]: structure at several scales, like a photo."""
    generator = torch.Generator().manual_seed(seed)
    layers = [
        torch.nn.functional.interpolate(torch.rand(1, 3, max(1, size[0] // s), max(1, size[1] // s), generator=generator), size=size, mode="bilinear")
        for s in (4, 16, 64)
    ]
    return (sum(layers)[0] / 3 * 255).clamp(0, 255)


@pytest.mark.parametrize("size", [(360, 640), (368, 640)])
def test_a_crop_of_the_backbone_gives_the_frames_features_inside_it(model, size):
    image = _image(size)
    full = model.backbone(image[None])
    box = Box(3, 1, 20, 23).aligned(size)  # at 360 rows: every row
    rows, cols = box.pixels(1, size)
    crop = model.crop_features(image[:, rows, cols], size)
    for stride, margin, tolerance in ((4, 32, 0.01), (8, 32, 0.01), (16, 128, 0.1)):
        full_map, crop_map = getattr(full, f"s{stride}")[0], getattr(crop, f"s{stride}")[0]
        m, mh = margin // stride, margin // stride if box.top else 0  # no halo at the frame's edge
        y0, x0 = rows.start // stride, cols.start // stride
        inner = crop_map[:, mh : crop_map.shape[1] - mh, m:-m]
        expected = full_map[:, y0 + mh : y0 + mh + inner.shape[1], x0 + m : x0 + m + inner.shape[2]]
        assert inner.numel() > 0
        assert (inner - expected).abs().max() < tolerance * full_map.abs().mean(), stride


def test_a_box_spans_an_axis_whose_size_is_not_a_multiple_of_16():
    assert Box(2, 3, 10, 8).aligned((360, 640)) == Box(0, 3, 23, 8)
    assert Box(2, 3, 10, 8).aligned((368, 640)) == Box(2, 3, 10, 8)
    assert Box(2, 3, 10, 8).aligned((368, 632)).pixels(1, (368, 632)) == (slice(32, 160), slice(0, 632))


@pytest.mark.parametrize("size", [(256, 384), (200, 384)])
def test_the_decoder_on_a_crop_gives_the_frames_masks_inside_it(model, size):
    image = _image(size, seed=1)
    frame = model.encode(image)
    grid = cells_of(size)
    key = torch.nn.functional.normalize(torch.randn(64, *grid), dim=0)  # a memory of one slot
    values = model.values(frame.features, torch.rand(1, 2, *frame.grid))[0]
    slots = [Slot(key=key, value=values, frame=0, permanent=True)]
    full = model.segment(frame, slots, 2)
    context = Box(2, 3, 13, 20).aligned(size)
    features = type(frame.features)(*(getattr(frame.features, f"s{s}")[..., *context.pixels(s, size)] for s in (4, 8, 16)))
    crop = model.segment_crop(frame.key[:, *context.pixels(16, size)], features, slots, 2)
    inner = Box(5, 6, 10, 17).aligned(size)  # three cells inside the context
    got = crop[:, *inner.inside(context).pixels(4, context.size(size))]
    torch.testing.assert_close(got, full[:, *inner.pixels(4, size)], atol=3e-3, rtol=0)


def test_the_change_test_sees_a_moving_object_and_not_noise_or_drift():
    rng = np.random.default_rng(0)
    scene = _image((128, 192), seed=2)

    def noisy(image: torch.Tensor, gain: float) -> np.ndarray:
        pixels = (image * gain + torch.from_numpy(rng.normal(0, 2.0, image.shape)).float()).clamp(0, 255)
        return pixels.round().byte().permute(1, 2, 0).numpy()  # a decoded frame

    moved = scene.clone()
    moved[:, 40:72, 100:124] = 255 - moved[:, 40:72, 100:124]
    reference = thumbnail(noisy(scene, 1.0), (128, 192))
    for current, changed in ((noisy(scene, 1.05), False), (noisy(moved, 0.97), True)):
        thumb = thumbnail(current, (128, 192))
        cells = change_map(thumb, reference, frame_gain(thumb, reference), cells_of((128, 192)))
        assert bool((cells > 8).any()) == changed
        if changed:
            assert set(map(tuple, (cells > 8).nonzero().tolist())) <= {(r, c) for r in range(2, 5) for c in range(6, 8)}


def _still_clip(length: int, size=(144, 256)):
    """A fixed camera (vos/fixedcam.py) over a synthetic landscape: a synthetic object walks
    and pauses; sensor noise and a drift of brightness on every frame."""
    from vidseg_cli.synthetic import scene_frames
    from vidseg_cli.vos.fixedcam import Cutout, clip_frames

    walker = scene_frames(20, *size, objects=1, seed=5)
    actor = [Cutout.of(image, labels == 1) for image, labels in walker if (labels == 1).sum() > 64]
    scene, _ = next(scene_frames(1, *size, objects=1, seed=6))
    return [list(pair) for pair in zip(*clip_frames(scene, actor, length, seed=1), strict=True)]


@pytest.mark.parametrize("mode", ["triple", "residual", "static"])
def test_region_steps_give_the_dense_masks_and_run_nothing_while_the_object_stands(model, mode):
    frames, masks = _still_clip(30)
    runs = {}
    for name in ("none", mode):
        session = make_session(model, MemoryOptions(), 144, torch.device("cpu"), ReuseOptions(), SparseOptions(name))
        runs[name] = [session.step(frame, masks[0] if t == 0 else None) for t, frame in enumerate(frames)]
    for dense, region in zip(runs["none"], runs[mode], strict=True):
        both, either = ((dense.labels == 1) & (region.labels == 1)).sum(), ((dense.labels == 1) | (region.labels == 1)).sum()
        assert both / max(either, 1) > 0.9
    standing = [t for t in range(2, 30) if (masks[t] == masks[t - 1]).all() and (masks[t - 1] == masks[t - 2]).all()]
    moving = [t for t in range(1, 30) if (masks[t] != masks[t - 1]).any()]
    assert standing and moving
    computed = [r.computed for r in runs[mode]]
    assert all(0 < computed[t] < 1 for t in moving)  # a crop around the object
    if mode != "static":  # static computes near the objects on every frame
        assert sum(computed[t] == 0 for t in standing) >= 0.8 * len(standing)  # nothing runs


def test_a_region_step_writes_the_memory_only_when_it_computes(model):
    frames, masks = _still_clip(30)
    session = make_session(model, MemoryOptions(), 144, torch.device("cpu"), ReuseOptions(), SparseOptions("triple"))
    idle = 0
    for t, frame in enumerate(frames):
        result = session.step(frame, masks[0] if t == 0 else None)
        assert (session._last_write == t) == (result.computed > 0)
        idle += result.computed == 0
    assert idle > 0


@pytest.mark.slow
def test_region_steps_on_onnx_runtime_give_the_masks_torch_gives(model, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from vidseg_cli.models.registry import with_runtime

    monkeypatch.setenv("VIDSEG_CACHE", str(tmp_path))
    frames, masks = _still_clip(20)
    runs = {}
    for runtime in ("torch", "onnx"):
        net = with_runtime(model, runtime)
        session = make_session(net, MemoryOptions(), 144, torch.device("cpu"), ReuseOptions(), SparseOptions("triple"))
        runs[runtime] = [session.step(frame, masks[0] if t == 0 else None) for t, frame in enumerate(frames)]
    assert any(0 < r.computed < 1 for r in runs["onnx"])  # crops ran on ONNX Runtime
    for a, b in zip(runs["torch"], runs["onnx"], strict=True):
        assert a.computed == b.computed
        assert (a.labels != b.labels).mean() < 0.001


def _write_davis(root, name: str, frames: list[np.ndarray], masks: list[np.ndarray]) -> None:
    from PIL import Image

    from vidseg_cli.io.sinks import save_palette_png

    (root / "JPEGImages" / name).mkdir(parents=True)
    (root / "Annotations" / name).mkdir(parents=True)
    for t, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
        Image.fromarray(frame).save(root / "JPEGImages" / name / f"{t:05d}.jpg", quality=95)
        save_palette_png(mask, root / "Annotations" / name / f"{t:05d}.png")


@pytest.fixture(scope="module")
def trained_gates(model, tmp_path_factory):
    """Gates trained for a few steps on one recorded clip, saved as ``vidseg train gates`` saves them."""
    from vidseg_cli.vos.davis import load_davis
    from vidseg_cli.vos.regions.train import GateTrainConfig, GateTrainer, record
    from vidseg_cli.weights.registry import checkpoint

    root = tmp_path_factory.mktemp("gates")
    frames, masks = _still_clip(16)
    _write_davis(root / "data", "still", frames, masks)
    recording = record(model, load_davis(root / "data")[0], 144, torch.device("cpu"))
    assert recording.thumbs.shape[0] == 16 and recording.probs.shape[:2] == (16, 1)
    trainer = GateTrainer([recording], GateTrainConfig(steps=20, pairs=4), root)
    before = [p.detach().clone() for p in trainer.gates.parameters()]
    trainer.run(lambda line: None, checkpoint_every=10)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.gates.parameters(), strict=True))
    return trainer.save_gates("vos-effl0-v2", checkpoint("vos-effl0-v2", "vos").sha256)


def test_gates_serve_the_model_they_were_trained_for_and_no_other(trained_gates):
    from vidseg_cli.errors import VidsegError
    from vidseg_cli.vos.regions.load import read_gates

    loaded = read_gates("vos-effl0-v2", str(trained_gates))
    assert 0 < loaded.threshold < loaded.trigger < 1
    with pytest.raises(VidsegError, match="trained for vos-effl0-v2, not for vos-effl0$"):
        read_gates("vos-effl0", str(trained_gates))


def test_a_gate_file_for_another_model_is_one_line_and_exit_2(vidseg, clip, tmp_path, trained_gates):
    video, mask = clip
    run = vidseg("segment", video, "--mask", mask, "--out", tmp_path / "o", "--model", "vos-effl0", "--sparse", "triple", "--gates", trained_gates)
    assert run.code == 2 and "trained for vos-effl0-v2, not for vos-effl0" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    run = vidseg("segment", video, "--mask", mask, "--out", tmp_path / "o", "--gates", trained_gates)
    assert run.code == 2 and "--gates serves --reuse and --sparse" in run.stderr


def test_a_reused_frame_runs_no_network_and_writes_no_memory(model, monkeypatch):
    from vidseg_cli.vos.regions.load import read_gates

    calls = {"encode": 0, "crop_features": 0, "segment": 0, "segment_crop": 0}
    for name in calls:
        method = getattr(model, name)

        def counted(*args, _method=method, _name=name, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(model, name, counted)
    frames, masks = _still_clip(30)
    gates = read_gates("vos-effl0-v2", "vos-effl0-v2-gates")  # the shipped gates
    session = make_session(model, MemoryOptions(), 144, torch.device("cpu"), ReuseOptions(0.5), gates=gates)
    reused = 0
    for t, frame in enumerate(frames):
        before = dict(calls)
        result = session.step(frame, masks[0] if t == 0 else None)
        if result.reused:
            reused += 1
            assert calls == before and session._last_write < t  # nothing ran, nothing was written
        else:
            assert calls["encode"] == before["encode"] + 1 and session._last_write == t
    assert reused >= 5


def _leaving_clip(size=(144, 256)):
    """A fixed camera: an object stands on the left, leaves the frame, and comes back on the right."""
    from vidseg_cli.synthetic import scene_frames
    from vidseg_cli.vos.fixedcam import Cutout

    image, labels = next(scene_frames(1, *size, objects=1, seed=5))
    actor = Cutout.of(image, labels == 1)
    scene, _ = next(scene_frames(1, *size, objects=1, seed=6))
    rng = np.random.default_rng(0)
    frames, masks = [], []
    for t in range(30):
        frame, mask = scene.astype(np.float32), np.zeros(size, np.uint8)
        left = None if 8 <= t < 16 else (10 if t < 8 else size[1] - actor.alpha.shape[1] - 10)
        if left is not None:
            h, w = actor.alpha.shape
            top = size[0] - h - 4
            alpha = actor.alpha[..., None]
            frame[top : top + h, left : left + w] = frame[top : top + h, left : left + w] * (1 - alpha) + actor.image * alpha
            mask[top : top + h, left : left + w][actor.alpha >= 0.5] = 1
        frames.append(np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8))
        masks.append(mask)
    return frames, masks


@pytest.mark.parametrize(("mode", "tau"), [("triple", 1.0), ("static", 1.0), ("none", 0.5)])
def test_an_object_that_comes_back_elsewhere_is_found_again(model, mode, tau):
    """It comes back on frame 16; region steps look where the frame changed, far from the
    objects too, every 8th frame."""
    from vidseg_cli.vos.regions.load import read_gates

    frames, masks = _leaving_clip()
    gates = read_gates("vos-effl0-v2", "vos-effl0-v2-gates") if tau < 1 else None
    found = {}
    for name, reuse, sparse in (("dense", 1.0, "none"), ("regions", tau, mode)):
        session = make_session(model, MemoryOptions(), 144, torch.device("cpu"), ReuseOptions(reuse), SparseOptions(sparse), gates=gates)
        labels = [session.step(frame, masks[0] if t == 0 else None).labels for t, frame in enumerate(frames)]
        found[name] = [((labels[t] == 1) & (masks[t] == 1)).sum() / max(1, ((labels[t] == 1) | (masks[t] == 1)).sum()) for t in range(26, 30)]
    assert min(found["dense"]) > 0.5  # the model finds it again on every frame
    assert min(found["regions"]) > 0.5
