"""Sparse execution: gathered convolutions equal the dense ones where they compute, and
the counted work scales with the share of positions computed."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vidseg_cli.models.backbone import MBConv
from vidseg_cli.sparse.blocks import block_geometry, mbconv_at
from vidseg_cli.sparse.gather import conv_at, depthwise_at, needed_inputs, same_padding


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
