"""The semseg head: LMANet's local memory attention checked against its definition, TMANet's
global read, and the label memory: what it moves, what it mixes, and a video over a bank."""

from __future__ import annotations

import itertools

import pytest
import torch

from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.memory.policies import FIFO
from vidseg_cli.memory.windowed import global_attention, windowed_attention
from vidseg_cli.models.backbone import EfficientNetLite
from vidseg_cli.semseg.model import SemsegConfig, SemsegNetwork, pack, unpack


def _brute_force_local(query, keys, values, radius, scale):
    """Eqs 3-5 by their letter: for each (i, j), softmax over (t, k, l) inside the frame."""
    b, t, _, h, w = keys.shape
    out, peak = torch.zeros(b, values.shape[2], h, w), torch.zeros(b, 1, h, w)
    for n, i, j in itertools.product(range(b), range(h), range(w)):
        candidates = [
            (s, i + k, j + l)
            for s in range(t)
            for k in range(-radius, radius + 1)
            for l in range(-radius, radius + 1)  # noqa: E741 - the paper's letter
            if 0 <= i + k < h and 0 <= j + l < w
        ]
        scores = torch.stack([(query[n, :, i, j] * keys[n, s, :, y, x]).sum() * scale for s, y, x in candidates])
        weights = torch.softmax(scores, 0)
        out[n, :, i, j] = sum(wgt * values[n, s, :, y, x] for wgt, (s, y, x) in zip(weights, candidates, strict=True))
        peak[n, 0, i, j] = scores.max()
    return out, peak


@pytest.mark.parametrize("tile", [(1, 1), (2, 4), (4, 8), (5, 6)], ids=["1x1", "2x4-padded", "4x8-clipped", "one-tile"])
def test_local_memory_attention_is_lmanet_eqs_3_to_5(tile):
    torch.manual_seed(0)
    query, keys, values = torch.randn(2, 4, 5, 6), torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 7, 5, 6)
    local = windowed_attention(query, keys, values, 1, 0.5, tile=tile)
    torch.testing.assert_close(local, _brute_force_local(query, keys, values, 1, 0.5))  # values and peak
    # a window that covers the whole map is TMANet's global read
    whole = windowed_attention(query, keys, values, 6, 0.5, tile=tile)
    torch.testing.assert_close(whole, global_attention(query, keys, values, 0.5))


@pytest.fixture(scope="module")
def network() -> SemsegNetwork:
    torch.manual_seed(0)
    return SemsegNetwork(EfficientNetLite(), SemsegConfig(classes=5, decoder_dim=16)).eval()


def test_a_slot_keeps_stride_4_labels_whole():
    """pack and unpack are inverse: moving a slot moves 2x2 blocks of labels, not their mean."""
    probabilities = torch.softmax(torch.randn(2, 5, 8, 12), dim=1)
    packed = pack(probabilities)
    assert packed.shape == (2, 20, 4, 6)
    torch.testing.assert_close(unpack(packed), probabilities)


def test_labels_follow_a_moving_scene(network):
    """A frame whose content moved by one stride-8 position reads its labels from where they
    were: a memory of labels moved with the key, not labels left in place."""
    torch.manual_seed(0)
    key = torch.nn.functional.normalize(torch.randn(1, 40, 6, 8), dim=1)
    labels = torch.softmax(10 * torch.randn(1, 5, 12, 16), dim=1)
    shifted_key = torch.roll(key, shifts=1, dims=-1)  # everything one position to the right
    readout, peak = network.read(shifted_key, key[:, None], pack(labels)[:, None])
    expected = torch.roll(labels, shifts=2, dims=-1)
    torch.testing.assert_close(unpack(readout)[..., 2:], expected[..., 2:], atol=0.02, rtol=0)
    # where the pixel came from is in the window, so the best match is the pixel itself
    torch.testing.assert_close(peak[..., 1:] / network.memory.log_scale.exp(), torch.ones(1, 1, 6, 7))


def test_the_gate_mixes_frame_and_memory(network):
    """A new gate mixes half and half; the mix stays a distribution."""
    torch.manual_seed(0)
    own = torch.softmax(torch.randn(1, 5, 8, 12), dim=1)
    memory = torch.softmax(torch.randn(1, 5, 8, 12), dim=1)
    key = torch.nn.functional.normalize(torch.randn(1, 40, 4, 6), dim=1)
    alike = network.memory.log_scale.exp() * torch.ones(1, 1, 4, 6)  # the read's peak: every best match identical
    mixed, gate = network.memory.mix(own, key, pack(memory), alike, key)
    torch.testing.assert_close(gate, torch.full_like(gate, 0.5))
    torch.testing.assert_close(mixed, (own + memory) / 2)
    torch.testing.assert_close(mixed.sum(1), torch.ones(1, 8, 12))


def test_gradients_reach_the_gate_and_the_read_temperature(network):
    net = SemsegNetwork(EfficientNetLite(), SemsegConfig(classes=3, decoder_dim=8, read="global"))
    with torch.no_grad():
        net.memory.gate[2].weight.normal_(0, 0.1)
    key = torch.nn.functional.normalize(torch.randn(1, 40, 4, 6), dim=1)
    own = torch.softmax(torch.randn(1, 3, 8, 12), dim=1)
    memory = pack(torch.softmax(torch.randn(1, 3, 8, 12), dim=1))[:, None]
    mixed, _ = net.remember(own, key, torch.roll(key, 1, -1)[:, None], memory)
    mixed[:, 0].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.memory.parameters())


def test_a_video_through_a_fifo_bank(network):
    bank = MemoryBank(policy=FIFO(slots=3))
    for frame in range(5):
        probabilities, slot = network.step(torch.rand(3, 64, 96) * 255, bank.slots, frame)
        bank.write(slot)
        assert probabilities.shape == (5, 16, 24)  # stride 4
        torch.testing.assert_close(probabilities.sum(0), torch.ones(16, 24))
    assert [s.frame for s in bank.slots] == [2, 3, 4]  # fifo T=3: the papers' memory


def test_the_first_frame_is_the_single_frame_network(network):
    image = torch.rand(3, 64, 96) * 255
    with_slot, slot = network.step(image, None, 0)
    alone, nothing = network.step(image, None, 0, remember=False)
    torch.testing.assert_close(alone, with_slot)
    assert nothing is None and slot.key.shape == (40, 8, 12) and slot.value.shape == (1, 20, 8, 12)


def test_a_window_mask_made_at_inference_serves_training():
    """Training validates under inference mode, then trains on: the cached mask must serve both."""
    torch.manual_seed(0)
    query, keys, values = torch.randn(1, 4, 5, 7), torch.randn(1, 2, 4, 5, 7), torch.randn(1, 2, 3, 5, 7)
    with torch.inference_mode():
        windowed_attention(query, keys, values, 2, 0.5)
    keys.requires_grad_(True)
    windowed_attention(query, keys, values, 2, 0.5)[0].sum().backward()
    assert keys.grad is not None and keys.grad.abs().sum() > 0


def test_gradients_through_a_padded_tile_are_the_brute_force_ones():
    """A tile that overhangs the border holds padding queries with no candidate inside the
    window; their softmax must stay finite, or NaN would reach every gradient."""
    torch.manual_seed(0)
    tensors = [torch.randn(1, 4, 5, 6), torch.randn(1, 2, 4, 5, 6), torch.randn(1, 2, 3, 5, 6)]
    grads = []
    for read in (lambda q, k, v: windowed_attention(q, k, v, 1, 0.5, tile=(4, 8)), lambda q, k, v: _brute_force_local(q, k, v, 1, 0.5)):
        leaves = [t.clone().requires_grad_() for t in tensors]
        values, peak = read(*leaves)
        (values * torch.arange(30.0).view(5, 6) + peak).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for tiled, brute in zip(*grads, strict=True):
        torch.testing.assert_close(tiled, brute)


def test_video_recordings_hold_near_clips_and_one_stale_clip(network):
    """record_video: clips of frames `gap` apart, and one of frames `stale_gap` apart (a
    memory of a scene that has moved on, which teaches the gate to refuse it)."""
    import numpy as np

    from vidseg_cli.semseg.memory_train import MemoryTrainConfig, record_video

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(40)]
    config = MemoryTrainConfig(size=48, classes=5, segment=3, clips_per_video=2, stale_gap=12)
    clips = record_video(network, frames, config, rng, "cpu")
    assert [(c.stale, c.probs.shape[0]) for c in clips] == [(False, 3), (False, 3), (True, 3)]
    assert all(c.target.shape == (2, 5, 12, 16) and not c.labelled for c in clips)
    short = record_video(network, frames[:20], config, rng, "cpu")  # too short for frames 12 apart and the teacher
    assert [c.stale for c in short] == [False, False]
