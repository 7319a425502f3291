"""Differentiable memory attention over T memory frames with a softmax over every candidate:
within a local window (LMANet eqs 3-5) or over the whole map (TMANet eq 1).

Unlike ``attention.py``'s top-k matching (segment's propagation read), every candidate
gets a weight and gradients reach every key and value, which training the semseg memory
layers needs. Affinity is the scaled dot product of learned keys, as both papers use.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# Up to this many (memory position, query position) pairs, the local read is the global one
# with the pairs outside the window masked: two matmuls beat gathering (2R+1)^2 shifted
# copies of every value (480x352, T=3, R=4: 10 ms against 60 ms). Above it (large frames)
# the dense affinity would not fit comfortably, and the windows are gathered.
DENSE_PAIRS = 2**24


def windowed_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, radius: int, scale: float | torch.Tensor,
    dense_pairs: int = DENSE_PAIRS,
) -> torch.Tensor:
    """LMANet's local memory attention.

    query (B, C, H, W); keys (B, T, C, H, W); values (B, T, D, H, W). For each position,
    the (2R+1)^2 memory positions around it in each of the T frames are candidates (eq 3);
    one softmax over window and time (eq 4) weights their values (eq 5). Positions beyond
    the border are not candidates. Returns (B, D, H, W).
    """
    b, t, c, h, w = keys.shape
    if t * (h * w) ** 2 <= dense_pairs:
        return global_attention(query, keys, values, scale, outside=_outside_window(t, h, w, radius, query.device))
    d = values.shape[2]
    window = 2 * radius + 1
    k = F.unfold(keys.flatten(0, 1), window, padding=radius).view(b, t, c, window * window, h * w)
    v = F.unfold(values.flatten(0, 1), window, padding=radius).view(b, t, d, window * window, h * w)
    inside = F.unfold(keys.new_ones(1, 1, h, w), window, padding=radius).view(1, 1, window * window, h * w) > 0
    affinity = torch.einsum("bcn,btcwn->btwn", query.flatten(2), k) * scale
    affinity = affinity.masked_fill(~inside, float("-inf"))
    weights = torch.softmax(affinity.flatten(1, 2), dim=1).view(b, t, 1, window * window, h * w)
    return (weights * v).sum(dim=(1, 3)).view(b, d, h, w)


@functools.lru_cache(maxsize=16)  # one per frame size and radius a video meets; built once
def _outside_window(t: int, h: int, w: int, radius: int, device: torch.device) -> torch.Tensor:
    """(T h w, h w) bool: memory position p (of any of T frames) lies outside ``radius`` of
    query position q on either axis. Built as a normal tensor even under inference mode: the
    cache outlives the call, and an inference tensor would break a later training step."""
    with torch.inference_mode(False):
        ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
        far_y = (ys[:, None] - ys[None, :]).abs() > radius  # (h, h)
        far_x = (xs[:, None] - xs[None, :]).abs() > radius  # (w, w)
        return (far_y[:, None, :, None] | far_x[None, :, None, :]).reshape(h * w, h * w).repeat(t, 1)


def global_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float | torch.Tensor,
    outside: torch.Tensor | None = None,
) -> torch.Tensor:
    """TMANet's temporal memory attention (eq 1): every position of every memory frame is a
    candidate, except the (memory, query) pairs ``outside`` marks ((T h w, h w) bool).
    Shapes as ``windowed_attention``."""
    b, t, c, h, w = keys.shape
    d = values.shape[2]
    # Contiguous operands: keys and values written by a network running channels-last come
    # with strides that send bmm to a slow strided path (38 ms instead of ~1 ms at 480x352).
    memory_keys = keys.permute(0, 1, 3, 4, 2).reshape(b, t * h * w, c).contiguous()  # (B, M, C)
    memory_values = values.permute(0, 2, 1, 3, 4).reshape(b, d, t * h * w).contiguous()  # (B, D, M)
    queries = (query.reshape(b, c, h * w) * scale).contiguous()  # scale on the small factor
    affinity = torch.bmm(memory_keys, queries)  # (B, M, N)
    if outside is not None:
        affinity.masked_fill_(outside, float("-inf"))
    weights = torch.softmax(affinity, dim=1)
    return torch.bmm(memory_values, weights).view(b, d, h, w)
