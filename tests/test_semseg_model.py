"""The semseg head: LMANet's local memory attention checked against its definition, TMANet's
global read, and the network's single-frame and memory paths over a MemoryBank."""

from __future__ import annotations

import itertools

import pytest
import torch

from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.memory.policies import FIFO
from vidseg_cli.memory.windowed import global_attention, windowed_attention
from vidseg_cli.models.backbone import EfficientNetLite
from vidseg_cli.semseg.model import SemsegConfig, SemsegNetwork


def _brute_force_local(query, keys, values, radius, scale):
    """Eqs 3-5 by their letter: for each (i, j), softmax over (t, k, l) inside the frame."""
    b, t, c, h, w = keys.shape
    out = torch.zeros(b, values.shape[2], h, w)
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
    return out


@pytest.mark.parametrize("rows", [1, 2, 5], ids=["bands-of-1-row", "bands-of-2-rows", "one-band"])
def test_local_memory_attention_is_lmanet_eqs_3_to_5(rows):
    torch.manual_seed(0)
    query, keys, values = torch.randn(2, 4, 5, 6), torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 7, 5, 6)
    local = windowed_attention(query, keys, values, 1, 0.5, rows=rows)
    torch.testing.assert_close(local, _brute_force_local(query, keys, values, 1, 0.5))
    # a window that covers the whole map is TMANet's global read
    whole = windowed_attention(query, keys, values, 6, 0.5, rows=rows)
    torch.testing.assert_close(whole, global_attention(query, keys, values, 0.5))


@pytest.fixture(scope="module")
def network() -> SemsegNetwork:
    torch.manual_seed(0)
    return _trained(SemsegNetwork(EfficientNetLite(), SemsegConfig(classes=5, key_dim=8, value_dim=32, decoder_dim=16))).eval()


def _trained(net: SemsegNetwork) -> SemsegNetwork:
    """As if step 2 had moved the fusion's output layers off their zero start."""
    with torch.no_grad():
        for layer in net.memory.fusion.modules():
            if isinstance(layer, torch.nn.Conv2d) and not layer.weight.any():
                layer.weight.normal_(0, 0.05)
    return net


@pytest.mark.parametrize("aggregation", ["gated", "concat"])
def test_a_new_memory_is_the_single_frame_network(aggregation):
    torch.manual_seed(0)
    net = SemsegNetwork(EfficientNetLite(), SemsegConfig(classes=4, key_dim=8, value_dim=16, decoder_dim=8, aggregation=aggregation)).eval()
    images = torch.rand(1, 3, 48, 64) * 255
    torch.testing.assert_close(net(images, torch.rand(1, 2, 3, 48, 64) * 255), net(images))


def test_single_frame_and_memory_paths(network):
    images = torch.rand(2, 3, 64, 96) * 255
    alone = network(images)
    assert alone.shape == (2, 5, 64, 96)
    with_memory = network(images, torch.rand(2, 3, 3, 64, 96) * 255)
    assert with_memory.shape == alone.shape and not torch.allclose(with_memory, alone)
    torch.testing.assert_close(network(images, torch.zeros(2, 0, 3, 64, 96)), alone)  # an empty memory reads nothing


def test_gradients_reach_the_memory_layers():
    torch.manual_seed(0)
    net = SemsegNetwork(EfficientNetLite(), SemsegConfig(classes=3, key_dim=8, value_dim=16, decoder_dim=8, read="global",
                                                          aggregation="concat"))
    _trained(net)
    logits = net(torch.rand(1, 3, 48, 64) * 255, torch.rand(1, 2, 3, 48, 64) * 255)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.memory.parameters())


def test_a_video_through_a_fifo_bank(network):
    bank = MemoryBank(policy=FIFO(slots=3))
    for frame in range(5):
        probabilities, slot = network.step(torch.rand(3, 64, 96) * 255, bank.slots, frame)
        bank.write(slot)
        assert probabilities.shape == (5, 64, 96)
        torch.testing.assert_close(probabilities.sum(0), torch.ones(64, 96))
    assert [s.frame for s in bank.slots] == [2, 3, 4]  # fifo T=3: the papers' memory


def test_the_single_frame_network_skips_the_memory_encodings(network):
    image = torch.rand(3, 64, 96) * 255
    with_slot, slot = network.step(image, None, 0)
    alone, nothing = network.step(image, None, 0, remember=False)
    torch.testing.assert_close(alone, with_slot)
    assert nothing is None and slot.key.shape == (8, 4, 6) and slot.value.shape == (1, 32, 4, 6)


def test_a_window_mask_made_at_inference_serves_training():
    """Training validates under inference mode, then trains on: the cached mask must serve both."""
    torch.manual_seed(0)
    query, keys, values = torch.randn(1, 4, 5, 7), torch.randn(1, 2, 4, 5, 7), torch.randn(1, 2, 3, 5, 7)
    with torch.inference_mode():
        windowed_attention(query, keys, values, 2, 0.5)
    keys.requires_grad_(True)
    windowed_attention(query, keys, values, 2, 0.5).sum().backward()
    assert keys.grad is not None and keys.grad.abs().sum() > 0


def test_bands_stay_within_their_budget():
    from vidseg_cli.memory.windowed import BAND_PAIRS, _band_rows

    assert _band_rows(3, 30, 4) == 4  # 480x352 at stride 16: bands of R rows
    rows = _band_rows(3, 240, 32)  # 4K at stride 16, the widest radius
    assert rows * 240 * (rows + 64) * 240 * 3 <= BAND_PAIRS or rows == 1


def test_gated_fusion_is_lmanet_eq_6():
    """The one matrix product equals eq 6 written with its four layers."""
    from vidseg_cli.semseg.model import GatedFusion

    torch.manual_seed(0)
    fusion = GatedFusion(8, 12)
    for layer in (fusion.embed_query, fusion.embed_memory):
        torch.nn.init.normal_(layer.weight)
        torch.nn.init.normal_(layer.bias)
    query, memory = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 3, 5)
    both = torch.cat([query, memory], dim=1)
    expected = torch.sigmoid(fusion.attend_query(both)) * fusion.embed_query(query) + torch.sigmoid(
        fusion.attend_memory(both)
    ) * fusion.embed_memory(memory)
    torch.testing.assert_close(fusion(query, memory), expected)


def test_key_and_value_are_tmanet_encodings():
    """One product for both 1x1 layers equals each Encoding (1x1, ReLU, 3x3) on its own."""
    torch.manual_seed(0)
    layers = SemsegNetwork(EfficientNetLite(), SemsegConfig(classes=3, key_dim=4, value_dim=16)).memory
    features = torch.randn(2, 112, 3, 5).contiguous(memory_format=torch.channels_last)
    key, value = layers.encode(features)
    torch.testing.assert_close(key, layers.key(features))
    torch.testing.assert_close(value, layers.value(features))
