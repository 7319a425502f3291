"""Reuse-VOS in a session: the per-video state the reuse gate compares against.

The gate compares each frame with the last *fully computed* frame (its score map S and
refined map R8), not with the previous frame: a run of reused frames all translate from
the same full frame, so errors cannot compound through translations of translations.
"""

from __future__ import annotations

import torch

from vidseg_cli.options import REUSE_MODES, ReuseOptions  # noqa: F401 - re-exported
from vidseg_cli.vos.aggregate import aggregate
from vidseg_cli.vos.reuse.model import ReuseModel, Stride8Frame


class ReuseTracker:
    def __init__(self, model: ReuseModel, options: ReuseOptions) -> None:
        self.model, self.options = model, options
        self.template: torch.Tensor | None = None  # (O, 2, c_f), a row per object from its first mask
        self.score8: torch.Tensor | None = None  # the last full frame's S (O, 1, h8, w8)
        self.refined8: torch.Tensor | None = None  # its R8 (O, C, h8, w8)
        self.distribution: torch.Tensor | None = None  # its (1 + O, h4, w4) distribution, for copying
        self.reused = 0

    def try_reuse(self, partial: Stride8Frame, objects: int) -> torch.Tensor | None:
        """This frame's distribution (1 + O, h4, w4), background first, by the reuse path; or
        None when the gate says compute (or no full frame has been computed for every object)."""
        if not self.options.enabled or not self._ready(objects):
            return None
        probability, delta = self.model.gate(partial, self.score8, self.template)
        if bool((probability < self.options.tau).any()):
            return None
        self.reused += 1
        copy = self.options.mode == "copy" or (
            self.options.mode == "fusion" and bool((probability >= self.options.copy_above).all())
        )
        return self.distribution if copy else aggregate(self.model.translate(partial, self.refined8, delta))

    def computed(self, partial: Stride8Frame, distribution: torch.Tensor, refined8: torch.Tensor | None) -> None:
        """Record a fully computed frame: its distribution (1 + O, h4, w4) after any given mask."""
        probs = distribution[1:]
        known = 0 if self.template is None else self.template.shape[0]
        if probs.shape[0] > known:  # objects first given on this frame: their template
            rows = self.model.template(partial, probs[known:])
            self.template = rows if self.template is None else torch.cat([self.template, rows])
        self.score8 = self.model.to_stride8_grid(probs, partial)
        self.refined8, self.distribution = refined8, distribution

    def _ready(self, objects: int) -> bool:
        return (
            self.refined8 is not None
            and self.template is not None
            and self.refined8.shape[0] == objects
            and self.template.shape[0] == objects
        )
