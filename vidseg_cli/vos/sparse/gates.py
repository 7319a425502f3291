"""SpVOS's gates (eqs 7-9) and sparsity losses (eqs 11-13).

A gate looks at a layer's input on the current and the previous frame and picks, per
output position, one policy: SKIP (the layer's output is zero there; for a residual block,
its branch is zero and the input passes through), REUSE (the previous frame's output) or
COMPUTE (convolve). ``static`` gates choose between SKIP and COMPUTE from the current
frame alone, ``residual`` gates between REUSE and COMPUTE: the paper's two baselines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.options import SPARSE_MODES

SKIP, REUSE, COMPUTE = 0, 1, 2
POLICIES = {"static": (SKIP, COMPUTE), "residual": (REUSE, COMPUTE), "triple": (SKIP, REUSE, COMPUTE)}
# vidseg_cli/options.py names the modes for the CLI, which must not import torch
assert SPARSE_MODES == ("none", *POLICIES)
# Policy logits at initialisation: a gated network starts dense, and when a gate learns to
# stop computing, reusing comes before skipping: skipped tiles are zeros, which the frozen
# network after them has never seen.
_START_BIAS = {COMPUTE: 3.0, REUSE: 1.5, SKIP: 0.0}


class TripleGate(nn.Module):
    """One policy per output position of a layer with the given input channels and stride."""

    def __init__(self, channels: int, stride: int, mode: str = "triple", skip: bool = True, cues: int = 0) -> None:
        super().__init__()
        if mode not in POLICIES:
            raise ValueError(f"unknown sparse mode {mode!r}")
        self.mode, self.policies = mode, layer_policies(mode, skip)
        inputs = (channels if mode == "static" else 2 * channels) + cues
        # k=3, padding 1, stride s gives ceil(H / s) outputs: TensorFlow 'SAME', as the blocks
        self.conv = nn.Conv2d(inputs, len(self.policies), 3, stride=stride, padding=1)
        nn.init.normal_(self.conv.weight, std=1e-3)
        with torch.no_grad():
            self.conv.bias.copy_(torch.tensor([_START_BIAS[p] for p in self.policies]))

    def forward(self, current: torch.Tensor, change: torch.Tensor | None, cue: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised policy scores P (B, policies, H_out, W_out) (eq 7's input) from the
        layer's input, its change since the last frame (None: no last frame) and, for gates
        built with ``cues``, the object cue on the same grid."""
        parts = [current] if self.mode == "static" else [change if change is not None else torch.zeros_like(current), current]
        if cue is not None:
            parts.append(cue)
        return self.conv(torch.cat(parts, dim=1))

    def decide(self, scores: torch.Tensor) -> torch.Tensor:
        """Inference: the most likely policy per position, as SKIP/REUSE/COMPUTE codes (B, H, W)."""
        codes = torch.tensor(self.policies, device=scores.device)
        return codes[scores.argmax(dim=1)]

    def one_hot(self, scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Training: Gumbel-softmax samples (eq 9) with a straight-through hard decision, as
        (B, 3, H, W) over SKIP/REUSE/COMPUTE (zeros for policies the mode lacks). The forward
        value is one-hot; gradients flow through the soft sample."""
        sample = gumbel_straight_through(scores, temperature)
        full = scores.new_zeros(scores.shape[0], 3, *scores.shape[2:])
        full[:, list(self.policies)] = sample
        return full


def layer_policies(mode: str, skip: bool) -> tuple[int, ...]:
    """A mode's policies for one layer. SKIP only where it means something: in a residual
    layer, whose branch may contribute nothing (SpVOS gates ResNet blocks, where skipping
    passes the input through). Elsewhere a skipped tile is zeros that the frozen layers
    after it never saw, and the straight-through gradient cannot tell: a zero output gets no
    gradient, so gates drift to SKIP as soon as the sparsity loss pushes COMPUTE down."""
    return tuple(p for p in POLICIES[mode] if skip or p != SKIP)


def gumbel_straight_through(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Eq 9 over dim 1: softmax((log softmax(P) + G) / tau), hard in the forward pass."""
    uniform = torch.rand_like(scores).clamp_(1e-9, 1.0 - 1e-9)
    gumbel = -torch.log(-torch.log(uniform))
    soft = F.softmax((F.log_softmax(scores, dim=1) + gumbel) / temperature, dim=1)
    hard = F.one_hot(soft.argmax(dim=1), scores.shape[1]).movedim(-1, 1).to(soft.dtype)
    return hard - soft.detach() + soft


def compose(policy: torch.Tensor, computed: torch.Tensor, previous: torch.Tensor | None, skipped: torch.Tensor | None) -> torch.Tensor:
    """Eq 8: policy (B, 3, H, W) one-hot over SKIP/REUSE/COMPUTE, mixing the dense output,
    the previous frame's output and the skip value (None: zeros)."""
    out = policy[:, COMPUTE : COMPUTE + 1] * computed
    if previous is not None:
        out = out + policy[:, REUSE : REUSE + 1] * previous
    if skipped is not None:
        out = out + policy[:, SKIP : SKIP + 1] * skipped
    return out


def relaxed_bounds(progress: float, target: float) -> tuple[float, float]:
    """Layer-wise bounds (t_lower, t_upper): both start at the target and relax linearly to
    (0, 1) over training (eq 11), so layers may spread their share while the global loss
    holds the total at the target."""
    progress = min(max(progress, 0.0), 1.0)
    return target * (1.0 - progress), target + (1.0 - target) * progress


def layer_loss(shares: list[torch.Tensor], lower: float, upper: float) -> torch.Tensor:
    """Eq 11 summed over layers: shares are each layer's computed share s_k."""
    return sum((F.relu(s - upper) ** 2 + F.relu(lower - s) ** 2) for s in shares)


def global_loss(shares: list[torch.Tensor], costs: list[float], target: float) -> torch.Tensor:
    """Eq 12: the computed share of all gated work, each layer weighted by its cost
    c_k * H_k * W_k (pass those products as ``costs``), against the target."""
    total = sum(costs)
    spent = sum(s * c for s, c in zip(shares, costs, strict=True))
    return (spent / total - target) ** 2
