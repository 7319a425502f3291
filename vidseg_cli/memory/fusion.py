"""Training-free STReMN fusion cell: distill a dropped slot into its partner (eqs 3-8).

The learned cell computes gates with small CNNs (f, h, g). Without training we derive
them from matching quality instead:

* FAM (eq 3) is attention of each target pixel over the source, here top-k in a local
  window (slots are a few frames apart), giving the aligned source X_i^A (eq 7).
* filter r (eqs 4-6): a source pixel is kept in proportion to how well it still matches
  something in the target; pixels of things that left the view get r ~ 0.
* update gate z (eq 7): z = z_max * cos(X_j, X_i^A) * (aligned r), so the target only
  absorbs what aligns well and was not filtered out.
* candidate n (eq 8) is the aligned source itself (keys re-normalised, values stay
  probabilities because the blend is convex).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from vidseg_cli.memory.attention import local_match
from vidseg_cli.memory.slot import Slot


@dataclass(frozen=True)
class TrainingFreeFusion:
    radius: int = 8
    topk: int = 8
    temperature: float = 0.05
    z_max: float = 0.5

    def __call__(self, source: Slot, target: Slot) -> Slot:
        """Values may be probabilities (O, h, w) or learned features (O, D, h, w)."""
        c, h, w = target.key.shape
        objects = min(source.value.shape[0], target.value.shape[0])
        known = source.value[:objects].reshape(-1, h, w)  # objects (x features) as channels
        filter_r = self._filter(source, target)  # (1, H, W)
        payload = torch.cat([source.key, known, filter_r])
        sims, values = local_match(target.key, source.key, payload, self.topk, self.radius)
        weights = torch.softmax(sims / self.temperature, dim=1).unsqueeze(2)
        aligned = (weights * values).sum(1).t().reshape(-1, h, w)  # X_i^A
        key_a, value_a, r_a = aligned[:c], aligned[c : c + len(known)], aligned[c + len(known) :]
        agreement = (F.normalize(key_a, dim=0) * target.key).sum(0, keepdim=True).clamp_min(0)
        z = self.z_max * agreement * r_a
        key = F.normalize((1 - z) * target.key + z * key_a, dim=0)
        value = target.value.clone()
        value[:objects] = (1 - z) * target.value[:objects] + z * value_a.view_as(target.value[:objects])
        return replace(target, key=key, value=value)

    def _filter(self, source: Slot, target: Slot) -> torch.Tensor:
        """r in [0, 1] per source pixel: its best cosine match in the target's window."""
        dummy = source.key.new_zeros(1, *source.key.shape[1:])
        sims, _ = local_match(source.key, target.key, dummy, 1, self.radius)
        return sims[:, 0].clamp(0, 1).reshape(1, *source.key.shape[1:])
