"""Probe (issue 37): the learned model's upsampling through a guided filter (He et al.
2010, `vidseg_cli/vos/refine.py`) instead of bilinear alone. The grid probabilities are
brought to the processing image, filtered with its grey levels as the guide, then brought
to the frame. Runs `vidseg` with that upsampling; GF=radius,eps switches it on, GF_AT=h
only at processing height h (so one bench run holds rows with and without it):

    GF=2,1e-3 python docs/bench/probe_guided_upsample.py bench --data ../shared/data/davis16/val-dev --runtime torch --json
    GF=2,1e-3 GF_AT=288 python docs/bench/probe_guided_upsample.py bench --data ../shared/data/davis16/val-dev \
        --model vos-effl0-v2,FILE --size 360,288 --runtime onnx,onnx-int8 --report docs/bench/guided-288.json
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

import vidseg_cli.vos.memnet as memnet
from vidseg_cli.vos.refine import guided_filter


def guided_upsample(radius: int, eps: float, only_at: int | None):
    @torch.inference_mode()
    def upsample(self, probs: torch.Tensor, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if only_at is not None and image.shape[-2] != only_at:
            return F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
        mid = F.interpolate(probs[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
        mid = guided_filter(image.mean(0, keepdim=True) / 255.0, mid, radius, eps).clamp(0, 1)
        return F.interpolate(mid[None], size=size, mode="bilinear", align_corners=False)[0]

    return upsample


if __name__ == "__main__":
    if os.environ.get("GF"):
        radius, eps = os.environ["GF"].split(",")
        only_at = int(os.environ["GF_AT"]) if os.environ.get("GF_AT") else None
        memnet.MemoryNetwork.upsample = guided_upsample(int(radius), float(eps), only_at)
    from vidseg_cli.cli.main import main

    sys.argv = ["vidseg", *sys.argv[1:]]
    main()
