"""Sparse execution: gathered convolutions equal the dense ones where they compute, and
the counted work scales with the share of positions computed."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vidseg_cli.models.backbone import MBConv
from vidseg_cli.vos.sparse.blocks import block_geometry, mbconv_at
from vidseg_cli.vos.sparse.gather import conv_at, depthwise_at, needed_inputs, same_padding


def _random_selection(size: tuple[int, int], share: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(size, generator=generator) < share


@pytest.mark.parametrize(("kernel", "stride", "size"), [(1, 1, (9, 11)), (3, 1, (9, 11)), (3, 2, (9, 11)), (5, 2, (10, 7))])
def test_conv_at_equals_dense_conv(kernel, stride, size):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(6, *size), torch.randn(4, 6, kernel, kernel), torch.randn(4)
    top, bottom = same_padding(size[0], kernel, stride)
    left, right = same_padding(size[1], kernel, stride)
    dense = F.conv2d(F.pad(x[None], (left, right, top, bottom)), weight, bias, stride)[0]
    selected = _random_selection(dense.shape[-2:], 0.4)
    positions = selected.flatten().nonzero()[:, 0]
    rows = conv_at(x, weight, bias, positions, dense.shape[-1], stride, (top, bottom, left, right))
    torch.testing.assert_close(rows, dense.flatten(1)[:, positions].T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (5, 1), (3, 2), (5, 2)])
def test_depthwise_at_equals_dense_depthwise(kernel, stride):
    torch.manual_seed(1)
    x, weight = torch.randn(5, 13, 10), torch.randn(5, 1, kernel, kernel)
    top, bottom = same_padding(13, kernel, stride)
    left, right = same_padding(10, kernel, stride)
    dense = F.conv2d(F.pad(x[None], (left, right, top, bottom)), weight, None, stride, groups=5)[0]
    positions = _random_selection(dense.shape[-2:], 0.5, seed=2).flatten().nonzero()[:, 0]
    rows = depthwise_at(x, weight, positions, dense.shape[-1], stride, (top, bottom, left, right))
    torch.testing.assert_close(rows, dense.flatten(1)[:, positions].T, atol=1e-5, rtol=1e-5)


def test_needed_inputs_is_the_receptive_field():
    selected = torch.zeros(5, 6, dtype=torch.bool)
    selected[2, 3] = True
    need = needed_inputs(selected, (10, 12), kernel=3, stride=2, top_left=(0, 0))  # TF same: no padding before
    expected = torch.zeros(10, 12, dtype=torch.bool)
    expected[4:7, 6:9] = True
    assert torch.equal(need, expected)


def _trained_looking(block: MBConv) -> MBConv:
    """Random weights and BatchNorm statistics, so the check covers the BN folding."""
    generator = torch.Generator().manual_seed(3)
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return block.eval()


@pytest.mark.parametrize(
    "spec",  # kernel, stride, expand, c_in, c_out
    [(3, 1, 6, 8, 8), (5, 1, 6, 8, 8), (3, 2, 6, 8, 12), (5, 2, 6, 8, 12), (3, 1, 1, 8, 4)],
)
def test_mbconv_at_equals_the_dense_block(spec):
    torch.manual_seed(4)
    block = _trained_looking(MBConv(*spec))
    x = torch.randn(spec[3], 15, 14)
    with torch.no_grad():
        dense = block(x[None])[0]
        out_size, _ = block_geometry(block, (15, 14))
        assert out_size == tuple(dense.shape[-2:])
        selected = _random_selection(out_size, 0.3, seed=5)
        rows = mbconv_at(block, x, selected)
    positions = selected.flatten().nonzero()[:, 0]
    torch.testing.assert_close(rows, dense.flatten(1)[:, positions].T, atol=1e-4, rtol=1e-4)


def test_counted_flops_scale_with_the_computed_share():
    block = _trained_looking(MBConv(5, 1, 6, 16, 16))
    x = torch.randn(16, 40, 40)

    def flops(share: float) -> int:
        selected = torch.zeros(40, 40, dtype=torch.bool)
        selected.view(-1)[: int(share * 1600)] = True  # one block of rows: little halo
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            mbconv_at(block, x, selected)
        return counter.get_total_flops()

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(x[None])
    dense = counter.get_total_flops()
    assert flops(1.0) == pytest.approx(dense, rel=0.01)  # + the mask dilation (a tiny transposed conv)
    assert flops(0.5) == pytest.approx(0.5 * dense, rel=0.1)  # the expansion's halo adds a little
    assert flops(0.1) < 0.2 * dense


def test_gates_start_dense_and_decide_only_their_policies():
    from vidseg_cli.vos.sparse.gates import COMPUTE, REUSE, SKIP, TripleGate

    x, previous = torch.randn(1, 8, 9, 10), torch.randn(1, 8, 9, 10)
    for mode, allowed in [("static", {SKIP, COMPUTE}), ("residual", {REUSE, COMPUTE}), ("triple", {SKIP, REUSE, COMPUTE})]:
        gate = TripleGate(8, stride=2, mode=mode)
        scores = gate(x, previous)
        assert scores.shape == (1, len(allowed), 5, 5)  # ceil(9/2) x ceil(10/2), as the blocks
        assert (gate.decide(scores) == COMPUTE).all()  # initialised to compute everywhere
        with torch.no_grad():
            gate.conv.bias.zero_()
            gate.conv.weight.normal_()
        assert set(gate.decide(gate(x, previous)).unique().tolist()) <= allowed


def test_gumbel_straight_through_is_one_hot_forward_and_soft_backward():
    from vidseg_cli.vos.sparse.gates import TripleGate, compose

    torch.manual_seed(0)
    gate = TripleGate(4, stride=1, mode="triple")
    with torch.no_grad():
        gate.conv.bias.zero_()
    x, previous_in = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    policy = gate.one_hot(gate(x, previous_in))
    assert torch.equal(policy.sum(1), torch.ones(1, 6, 6)) and set(policy.unique().tolist()) == {0.0, 1.0}
    computed, reused = torch.full((1, 2, 6, 6), 5.0), torch.full((1, 2, 6, 6), -1.0)
    out = compose(policy, computed, reused, None)
    expected = torch.where(policy[:, 2:3] > 0, computed, torch.where(policy[:, 1:2] > 0, reused, torch.zeros(())))
    assert torch.equal(out, expected)
    out.sum().backward()
    assert gate.conv.weight.grad.abs().sum() > 0  # the soft sample carries the gradient


def test_sparsity_losses():
    from vidseg_cli.vos.sparse.gates import global_loss, layer_loss, relaxed_bounds

    assert relaxed_bounds(0.0, 0.4) == (0.4, 0.4) and relaxed_bounds(1.0, 0.4) == (0.0, 1.0)
    shares = [torch.tensor(0.2), torch.tensor(0.9)]
    assert layer_loss(shares, 0.3, 0.8).item() == pytest.approx(0.1**2 + 0.1**2)
    # cost-weighted: (0.2 * 1 + 0.9 * 3) / 4 = 0.725
    assert global_loss(shares, [1.0, 3.0], 0.5).item() == pytest.approx(0.225**2)


def _random_mbconv(kernel: int, stride: int, expand: int, cin: int, cout: int) -> MBConv:
    torch.manual_seed(kernel * 10 + stride)
    block = MBConv(kernel, stride, expand, cin, cout).eval()
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics, so padding mistakes show
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-1, 1)
    return block


@pytest.mark.parametrize(
    ("kernel", "stride", "expand", "cin", "cout"),
    [(3, 1, 1, 8, 8), (3, 2, 6, 4, 6), (5, 2, 6, 6, 10), (3, 1, 6, 6, 6), (5, 1, 6, 10, 10)],
)
def test_mbconv_tiles_equal_the_dense_block_on_computed_tiles(kernel, stride, expand, cin, cout):
    from vidseg_cli.vos.sparse.tiles import mbconv_tiles, scatter_tiles, tile_grid

    block = _random_mbconv(kernel, stride, expand, cin, cout)
    x = torch.randn(1, cin, 29, 37)
    with torch.no_grad():
        dense = block(x)
        selected = _random_selection(tile_grid(dense.shape[-2:], 4), 0.5, seed=3)
        previous = torch.randn_like(dense)
        out = scatter_tiles(previous, mbconv_tiles(block, x, selected, 4), selected, 4)
    computed = selected.repeat_interleave(4, 0).repeat_interleave(4, 1)[: dense.shape[-2], : dense.shape[-1]]
    torch.testing.assert_close(out[..., computed], dense[..., computed], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[..., ~computed], previous[..., ~computed])  # the rest is untouched
    assert 0 < computed.float().mean() < 1


def test_tile_work_scales_with_the_computed_share():
    from vidseg_cli.vos.sparse.tiles import mbconv_tiles, tile_grid

    block = _random_mbconv(3, 2, 6, 16, 24)
    x = torch.randn(1, 16, 64, 96)
    grid = tile_grid((32, 48), 8)
    flops = {}
    for share in (0.25, 1.0):
        selected = torch.zeros(grid, dtype=torch.bool).flatten()
        selected[: round(share * selected.numel())] = True
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            mbconv_tiles(block, x, selected.view(grid), 8)
        flops[share] = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(x)
    assert flops[0.25] == pytest.approx(0.25 * flops[1.0], rel=1e-6)
    assert flops[1.0] < 1.2 * counter.get_total_flops()  # the stride-2 halo costs < 20% extra


@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_tiles_equal_the_dense_conv_on_computed_tiles_of_a_batch(kernel):
    from vidseg_cli.vos.sparse.tiles import conv_tiles, scatter_tiles, tile_grid

    torch.manual_seed(4)
    conv = torch.nn.Conv2d(5, 7, kernel, padding=kernel // 2)
    x = torch.randn(3, 5, 13, 18)
    with torch.no_grad():
        dense = conv(x)
        selected = torch.rand(3, *tile_grid(dense.shape[-2:], 4), generator=torch.Generator().manual_seed(5)) < 0.5
        previous = torch.randn_like(dense)
        out = scatter_tiles(previous, conv_tiles(conv, x, selected, 4), selected, 4)
    computed = selected.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, : dense.shape[-2], : dense.shape[-1]]
    mask = computed[:, None].expand_as(dense)
    torch.testing.assert_close(out[mask], dense[mask], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[~mask], previous[~mask])
    exact = torch.randn(3, 7, 12, 16)  # tiles of 4 cover it: written in place, same result
    copy = exact.clone()
    rows = torch.randn(int(selected[:, :3, :4].sum()), 7, 4, 4)
    together = scatter_tiles(exact, rows, selected[:, :3, :4], 4, inplace=True)
    assert together.data_ptr() == exact.data_ptr()
    assert torch.equal(together, scatter_tiles(copy, rows, selected[:, :3, :4], 4))
