"""Public model registry: ``create_vos_model(name)`` over the private model modules."""

from __future__ import annotations

import functools

import torch

from vidseg_cli.errors import VidsegError
from vidseg_cli.models.backbone import EfficientNetLite0
from vidseg_cli.models.base import VOSModel
from vidseg_cli.models.propagate import PropagateConfig, PropagationModel
from vidseg_cli.weights.registry import entry, load_state

VOS_MODELS = ("propagate",)
DEFAULT_VOS_MODEL = "propagate"


@functools.cache
def backbone(name: str = "efficientnet-lite0") -> EfficientNetLite0:
    """A frozen ImageNet backbone, loaded once per process and shared by all models."""
    if entry(name).arch != "efficientnet-lite0":
        raise VidsegError(f"unsupported backbone {name!r}")
    net = EfficientNetLite0()
    net.load_imagenet(load_state(name))
    return net.eval().requires_grad_(False)


def create_vos_model(name: str = DEFAULT_VOS_MODEL, device: torch.device | str = "cpu") -> VOSModel:
    """A VOS model by registry name, in eval mode on ``device``."""
    spec = entry(name)
    if spec.task != "vos":
        raise VidsegError(f"checkpoint {name!r} is a {spec.task} model, not a VOS model")
    if spec.arch == "propagate":
        model = PropagationModel(backbone(spec.fields["backbone"]), PropagateConfig())
        return model.to(device).eval()
    raise VidsegError(f"unknown VOS architecture {spec.arch!r}")
