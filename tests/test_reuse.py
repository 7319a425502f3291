"""Reuse-VOS heads: shapes, the gate's start, the losses of eqs 3-5."""

import pytest
import torch

from vidseg_cli.reuse.heads import (
    GATE_START,
    ReuseConfig,
    ReuseHeads,
    delta_loss,
    gate_probability_loss,
    gate_target,
    mask_iou,
)


def test_heads_shapes_and_gate_start():
    torch.manual_seed(0)
    heads = ReuseHeads(ReuseConfig())
    features8 = torch.randn(1, 40, 11, 13)
    first = (torch.rand(2, 1, 11, 13) > 0.5).float()
    template = heads.matching.template(features8, first)
    assert template.shape == (2, 2, 32)
    torch.testing.assert_close(template.norm(dim=-1), torch.ones(2, 2))
    probability, delta = heads.gate_and_delta(features8, first, template)
    assert probability.shape == (2,) and delta.shape == (2, 1, 11, 13)
    assert ((probability - GATE_START).abs() < 0.1).all()  # starts near the paper's 15%
    assert delta.abs().max() <= 1.0
    refined = heads.translator(torch.randn(2, 48, 11, 13), delta)
    assert refined.shape == (2, 48, 11, 13)


def test_gate_losses():
    iou = torch.tensor([0.2, 0.9])
    assert torch.equal(gate_target(iou, 0.5), torch.tensor([0.5, 0.9]))  # the margin lifts low IoU
    p = torch.tensor([0.5, 0.6])
    assert gate_probability_loss(p, gate_target(iou, 0.5)).item() == pytest.approx((0 + 0.3**2) / 2)
    assert gate_probability_loss(p, gate_target(iou, 0.5), tolerance=0.4).item() == pytest.approx(0.4**2)
    previous, target = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    assert delta_loss(torch.ones(1, 1, 2, 2), target, previous).item() == 0.0


def test_mask_iou():
    a = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    b = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    torch.testing.assert_close(mask_iou(a, b), torch.tensor([0.5, 1.0]))
